"""Operator endpoints (only with ``BIOMED_API_TOKEN`` set): ``POST /admin/models/promote``.

A promote writes the model's rollout file in the store (what ``biomed models promote`` does), so
every worker of every pod watching the store takes it up within ``BIOMED_MODEL_POLL_S``; the
worker that answers applies it before answering. A version that cannot be loaded is refused
(422, naming that version) and the rollout file is put back as it was. Promotes are serialised:
one at a time per worker, and the model's rollout lock (``biomed.store.rollout_lock``) is held
from reading the file as it was to the answer, so no other promote or canary change (another
worker, pod or the CLI) comes in between: a 200 means the promote stuck.
"""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path

from starlette.requests import Request

from biomed import store
from biomed.errors import InputError
from biomed.settings import env
from service.doors.http_io import read_body, read_json
from service.engine import Engine, UnknownModel
from service.schemas import PromoteRequest


class AdminOff(InputError):
    status = 404
    code = "not_found"


class Conflict(InputError):
    status = 409
    code = "conflict"


async def promote(request: Request, engine: Engine) -> dict:
    config = engine.config
    if not engine.admission.token_required:
        raise AdminOff(f"the admin endpoints are off: they are served only when {env('api_token')} or "
                       f"{env('api_tokens_file')} is set")
    body = await read_body(request, 64 * 1024)
    req = await read_json(request, body, PromoteRequest, 16, "one model reference")
    name, version = store.split_ref(req.model)
    versions = engine.versions.get(name)
    if versions is None or name not in engine.lifecycle.dirs:
        raise UnknownModel(f"model {name[:200]!r} is not served here; promote one of: {', '.join(engine.versions)}")
    if config.model_poll_s <= 0 or not engine.lifecycle.watching:
        raise Conflict(f"the model store is not watched ({env('model_poll_s')}=0), so the other workers would not take "
                       f"a promote up; set {env('model_poll_s')}, or change {env('models')} and restart",
                       code="reload_off")
    folder: Path = engine.lifecycle.dirs[name]
    loop = asyncio.get_running_loop()
    try:
        _, rollout = await loop.run_in_executor(None, store.promotion, req.model, config.model_store or None)
    except store.ModelNotFound as err:
        raise UnknownModel(str(err)) from None
    async with _promoting(engine):
        try:
            lock = await loop.run_in_executor(None, store.lock_rollout, folder)
        except OSError as err:
            raise _read_only(err) from None
        try:
            previous = engine.versions[name].default
            serving = await _apply(engine, name, folder, rollout)
        finally:
            store.unlock_rollout(lock)
    return {"model": name, "default": rollout["default"], "canary": rollout["canary"], "serving": serving,
            "previous": previous}


_LOCKS: "weakref.WeakKeyDictionary[Engine, asyncio.Lock]" = weakref.WeakKeyDictionary()


def _promoting(engine: Engine) -> asyncio.Lock:
    """This worker's promotes, one at a time (the rollout lock orders them with other processes')."""
    return _LOCKS.setdefault(engine, asyncio.Lock())


def _read_only(err: OSError) -> Conflict:
    return Conflict(f"the model store cannot be written here ({err.strerror or type(err).__name__}); promote with "
                    "`biomed models promote` where the store is writable", code="store_read_only")


async def _apply(engine: Engine, name: str, folder: Path, rollout: dict) -> str:
    """Write ``rollout`` (the lock held), bring this worker to it, and put the file back when its version cannot be
    loaded; returns the version now serving."""
    loop = asyncio.get_running_loop()
    before = store.read_rollout(folder)  # as it is now, under the lock: what a failure puts back
    try:
        await loop.run_in_executor(None, store.write_rollout, folder, rollout)
    except OSError as err:
        raise _read_only(err) from None
    want = (await engine.lifecycle.reconcile()).get(name)
    serving = engine.versions[name].default
    if want is not None and serving != want.default:
        await loop.run_in_executor(None, store.write_rollout, folder, before)
        raise InputError(f"{name}:{want.default} cannot be loaded (see the server log); the rollout is back as it was "
                         f"and {name}:{serving} still serves", code="load_failed")
    return serving
