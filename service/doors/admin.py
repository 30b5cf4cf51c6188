"""Operator endpoints (only with ``BIOMED_API_TOKEN`` set): ``POST /admin/models/promote``.

A promote writes the model's rollout file in the store (``biomed.store.promote``, what
``biomed models promote`` does), so every worker of every pod watching the store takes it up
within ``BIOMED_MODEL_POLL_S``; the worker that answers applies it before answering. A version
that cannot be loaded is refused (422) and the rollout file is put back as it was.
"""

from __future__ import annotations

import asyncio
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
    before = store.read_rollout(folder)
    previous = versions.default
    try:
        rollout = await loop.run_in_executor(None, store.promote, req.model, config.model_store or None)
    except store.ModelNotFound as err:
        raise UnknownModel(str(err)) from None
    except OSError as err:
        raise Conflict(f"the model store cannot be written here ({err.strerror or type(err).__name__}); promote with "
                       "`biomed models promote` where the store is writable", code="store_read_only") from None
    want = (await engine.lifecycle.reconcile()).get(name)
    serving = engine.versions[name].default
    if want is not None and serving != want.default:
        await loop.run_in_executor(None, store.write_rollout, folder, before)
        raise InputError(f"{name}:{want.default} cannot be loaded (see the server log); the rollout is back as it was "
                         f"and {name}:{serving} still serves", code="load_failed")
    return {"model": name, "default": rollout["default"], "canary": rollout["canary"], "serving": serving,
            "previous": previous}
