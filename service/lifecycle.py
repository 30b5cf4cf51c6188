"""Model versions over the life of a worker: what to load, reloads without a restart, and unloading.

What a worker serves for each model name comes from three places:

- ``BIOMED_MODELS``: its entries for the name, ``name`` (the store's latest export, followed as new ones
  appear) or ``name:version`` (that version, kept loaded). The first entry is the default.
- the rollout file beside the name's versions in the store (``biomed models promote`` / ``canary``,
  ``POST /admin/models/promote``; ``biomed.store``): a default that overrides the first entry
  (``latest``: follow the newest export) and canary shares that override ``BIOMED_CANARY``.
- ``BIOMED_CANARY``: versions that get a share of the requests for the name.

Every version any of them asks for is loaded. A watcher task in each worker looks at the store every
``BIOMED_MODEL_POLL_S`` seconds (two small files per name), so a change reaches every worker of every
pod that sees the store. A version to add is loaded and warmed up at its largest batch in a thread
while the current ones keep serving, then swapped in (one step on the event loop). A version no longer
asked for leaves the routing at once, is drained (no request holds it, its queue is empty and no rows
are admitted), then closed and unloaded, its ``biomed_model_info`` and memory series removed.
``/readyz`` stays 200 throughout: the old version serves until the new one is warm, and a version that
fails to load changes nothing (it is logged, counted in ``biomed_model_reloads_total{outcome="failed"}``
and tried again a minute later).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from biomed.errors import with_article
from biomed.runtime import LoadedModel, StartupError, load_model, warm_up
from biomed.settings import env
from biomed.store import LATEST, ModelNotFound, latest_version, read_rollout, resolve, rollout_default
from service import memory
from service.config import ServiceConfig
from service.footprint import Footprint
from service.handlers import Handler, Shared, handler_class, served_kinds
from service.metrics import Metrics, remove_series
from service.versions import Versions

log = logging.getLogger("biomed.service")
RETRY_FAILED_S = 60.0  # a version that failed to load is tried again after this long
DRAIN_GRACE_S = 5.0  # beyond the request timeout, the longest wait for a retired version's requests
UNLOAD_HOOKS: list[Callable[[], None]] = []  # caches that may hold a handler (the v2 door's signatures)


class Served(Protocol):
    """What the lifecycle keeps up to date: the engine's settings, metrics, loaded versions and their users."""

    config: ServiceConfig
    metrics: Metrics
    versions: dict[str, Versions]
    users: dict[Handler, int]


@dataclass(frozen=True)
class Plan:
    """What the settings ask for one model name: its ``BIOMED_MODELS`` entries (None: the store's latest) in
    order, and its ``BIOMED_CANARY`` shares."""

    name: str
    entries: tuple[str | None, ...]
    canary: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Desired:
    """What one name should serve now: the default, the canaries, and every version to keep loaded (in order)."""

    default: str
    canary: tuple[tuple[str, float], ...]
    needed: tuple[str, ...]
    configured: tuple[str, ...]  # the BIOMED_MODELS entries, resolved (a load failure of these stops start-up)


def plans(models: tuple[str, ...], canary: tuple[tuple[str, str, float], ...]) -> list[Plan]:
    """One plan per model name, in ``BIOMED_MODELS`` order (StartupError for an entry listed twice)."""
    entries: dict[str, list[str | None]] = {}
    for ref in models:
        name, _, version = ref.strip().partition(":")
        version_or_latest = None if version in ("", LATEST) else version
        if not name:
            raise StartupError(f"{env('models')} has an empty model name in {ref!r}")
        if version_or_latest in entries.get(name, []):
            raise StartupError(f"model {ref} is configured twice in {env('models')}")
        entries.setdefault(name, []).append(version_or_latest)
    shares: dict[str, list[tuple[str, float]]] = {}
    for name, version, percent in canary:
        if name not in entries:
            raise StartupError(f"{env('canary')} names {name}:{version}, but {name} is not in {env('models')}")
        if percent > 0:
            shares.setdefault(name, []).append((version, percent))
    return [Plan(name, tuple(e), tuple(shares.get(name, ()))) for name, e in entries.items()]


def desired(plan: Plan, latest: str | None, rollout: dict) -> Desired:
    """What ``plan`` asks for, given the store's latest version of the name and its rollout file.

    A bare first entry (``name``) means "the default follows the newest export"; a rollout default takes
    its place (so the newest export is no longer loaded for it). Entries with a version, and bare entries
    after the first, stay loaded whatever the default is.
    """
    entries = list(plan.entries)
    default = rollout_default(rollout, latest)  # the same rule as the commands' (biomed.store.default_ref)
    if default and entries[0] is None:
        entries = entries[1:]
    configured = [v for v in (e if e is not None else latest for e in entries) if v]
    if not default:
        default = configured[0] if configured else latest
    canary = plan.canary if "canary" not in rollout else tuple(rollout["canary"].items())
    canary = tuple((v, float(p)) for v, p in canary if v != default and p > 0)
    needed = [v for v in dict.fromkeys([default, *configured, *(v for v, _ in canary)]) if v]
    return Desired(str(default or ""), canary, tuple(needed), tuple(dict.fromkeys(configured)))


@dataclass
class Lifecycle:
    """The versions of one worker's engine over time (see the module docstring)."""

    engine: Served
    shared: Shared
    plans: list[Plan] = field(default_factory=list)
    dirs: dict[str, Path] = field(default_factory=dict)  # name -> its folder in the store
    failed: dict[tuple[str, str], float] = field(default_factory=dict)  # (name, version) -> retry after (monotonic)
    _task: asyncio.Task | None = None
    _poke: asyncio.Event | None = None
    _lock: asyncio.Lock | None = None
    _draining: set = field(default_factory=set)  # the drain tasks
    _retiring: set = field(default_factory=set)  # their handlers, closed on shutdown if still draining

    def __post_init__(self) -> None:
        c = self.engine.config
        self.plans = plans(c.models, c.canary)

    # ------------------------------------------------------------ start-up (synchronous)

    def start(self) -> None:
        """Load what every plan asks for; a configured version that cannot load stops start-up (StartupError)."""
        for plan in self.plans:
            first = plan.entries[0]
            try:
                stored = resolve(plan.name if first is None else f"{plan.name}:{first}", self.engine.config.model_store
                                 or None)
            except ModelNotFound as err:
                raise StartupError(str(err)) from None
            folder = self.dirs[plan.name] = Path(stored.path).parent
            want = self._desired(plan)
            loaded: dict[str, LoadedModel] = {}
            for version in want.needed:
                try:
                    loaded[version] = self.load(plan.name, version)
                except StartupError as err:
                    if version in want.configured or version in (v for v, _ in plan.canary):
                        raise
                    log.error("%s (asked for by the store's rollout file; ignored)", err)
            if want.default not in loaded:  # the rollout's default cannot load: the settings' own, or stop
                want = desired(plan, latest_version(folder), {})
                for version in want.needed:
                    if version not in loaded:
                        loaded[version] = self.load(plan.name, version)
            self.apply(plan.name, want, loaded)

    # ------------------------------------------------------------ loading

    def _desired(self, plan: Plan) -> Desired:
        folder = self.dirs[plan.name]
        return desired(plan, latest_version(folder), read_rollout(folder))

    def load(self, name: str, version: str) -> LoadedModel:
        """Load and warm up ``name:version`` (blocking), with what it costs in memory (``LoadedModel.memory``)."""
        config = self.engine.config
        on_gpu = any(p in ("cuda", "tensorrt") for p in config.providers)
        before = Footprint.before(on_gpu)
        model = load_model(f"{name}:{version}", config.runtime_options(), config.model_store or None)
        handler = handler_class(model.kind)
        if handler is None:
            raise StartupError(f"model {model.name}: kind {model.kind!r} has no handler; served kinds: "
                               f"{', '.join(served_kinds())}")
        current = self.engine.versions.get(name)
        if current is not None and current.handlers and current.default_handler.kind != model.kind:
            raise StartupError(f"model {name}:{version} is {with_article(model.kind)} model; the loaded versions of {name} are "
                               f"{current.default_handler.kind} models")
        warm_up(model, handler.max_batch_size(config))
        model.memory = before.cost(model.provider)
        return model

    def apply(self, name: str, want: Desired, loaded: dict[str, LoadedModel]) -> None:
        """Swap in newly loaded versions and the routing ``want`` asks for, then retire what it no longer needs
        (one step: no await, so no request sees a half-made change)."""
        engine, m = self.engine, self.engine.metrics
        versions = engine.versions.setdefault(name, Versions(name))
        for version, model in loaded.items():
            versions.handlers[version] = handler_class(model.kind)(model, self.shared)  # type: ignore[misc]
            m.model_info.labels(model=name, version=version, provider=model.provider, sha256=model.sha256).set(1)
            host, device = model.memory.get("host_bytes"), model.memory.get("device_bytes")
            if host is not None:
                m.model_memory.labels(model=name, version=version, device="host").set(host)
            if device is not None:
                m.model_memory.labels(model=name, version=version, device="gpu").set(device)
        if not versions.handlers:
            del engine.versions[name]
            return
        old = versions.default
        if want.default in versions.handlers:
            versions.default = want.default
        elif old not in versions.handlers:
            versions.default = next(iter(versions.handlers))
        versions.canary = tuple((v, p) for v, p in want.canary if v in versions.handlers and v != versions.default)
        for version in [v for v in versions.handlers if v not in want.needed and v != versions.default]:
            self.retire(versions.handlers.pop(version))
        for version, handler in versions.handlers.items():
            handler.model.serving = {"default": version == versions.default, "canary_percent": versions.share(version)}
        if old and old != versions.default:
            log.info("%s: the default version is now %s (was %s)", name, versions.default, old)
        if versions.canary:
            log.info("%s: canary %s", name, ", ".join(f"{v} {p:g}%" for v, p in versions.canary))

    # ------------------------------------------------------------ watching the store

    def watch(self) -> None:
        """Start the watcher on the running event loop (nothing when ``BIOMED_MODEL_POLL_S`` is 0 or there is none)."""
        if self.engine.config.model_poll_s <= 0:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            log.warning("no event loop at start-up: the model store is not watched")
            return
        self._poke, self._lock = asyncio.Event(), asyncio.Lock()
        self._task = loop.create_task(self._watch())

    async def _watch(self) -> None:
        assert self._poke is not None
        while True:
            try:
                await asyncio.wait_for(self._poke.wait(), self.engine.config.model_poll_s)
            except asyncio.TimeoutError:
                pass
            self._poke.clear()
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - the watcher must outlive a bad look at the store
                log.error("looking at the model store failed (%s: %s); serving what is loaded",
                          type(err).__name__, str(err)[:200])

    @property
    def watching(self) -> bool:
        return self._task is not None and not self._task.done()

    async def reconcile(self) -> dict[str, Desired]:
        """Bring every name to what the store and settings ask for now; returns what each name asked for."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        loop = asyncio.get_running_loop()
        async with self._lock:
            wanted = await loop.run_in_executor(None, lambda: {p.name: self._desired(p) for p in self.plans
                                                               if p.name in self.dirs})
            for plan in self.plans:
                want = wanted.get(plan.name)
                versions = self.engine.versions.get(plan.name)
                if want is None or versions is None:
                    continue
                loaded: dict[str, LoadedModel] = {}
                for version in want.needed:
                    if version in versions.handlers or self.failed.get((plan.name, version), 0) > time.monotonic():
                        continue
                    try:
                        loaded[version] = await loop.run_in_executor(None, self.load, plan.name, version)
                    except Exception as err:  # noqa: BLE001 - StartupError, or anything onnxruntime raises
                        self.failed[(plan.name, version)] = time.monotonic() + RETRY_FAILED_S
                        self.engine.metrics.model_reloads.labels(model=plan.name, outcome="failed").inc()
                        log.error("%s:%s cannot be loaded; still serving %s (%s)", plan.name, version,
                                  versions.default, str(err)[:300])
                        continue
                    self.failed.pop((plan.name, version), None)
                    self.engine.metrics.model_reloads.labels(model=plan.name, outcome="loaded").inc()
                    log.info("%s:%s loaded and warmed up (%s)", plan.name, version, _describe(loaded[version].memory))
                if loaded or self._changes(versions, want):
                    self.apply(plan.name, want, loaded)
            return wanted

    def _changes(self, versions: Versions, want: Desired) -> bool:
        default = want.default if want.default in versions.handlers else versions.default
        canary = tuple((v, p) for v, p in want.canary if v in versions.handlers and v != default)
        extra = [v for v in versions.handlers if v not in want.needed and v != default]
        return default != versions.default or canary != versions.canary or bool(extra)

    # ------------------------------------------------------------ retiring

    def retire(self, handler: Handler) -> None:
        """Drain ``handler`` (already out of the routing), then close and unload it, on the event loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # at start-up (a rollout file changed nothing loaded yet): nothing can hold it
            self._unload(handler)
            return
        self._retiring.add(handler)
        task = loop.create_task(self._drain(handler))
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def _drain(self, handler: Handler) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.engine.config.request_timeout_s + DRAIN_GRACE_S
        while not self.idle(handler):
            if loop.time() > deadline:
                log.warning("%s:%s still has requests after the request timeout; unloading it anyway",
                            handler.model.name, handler.model.version)
                break
            await asyncio.sleep(0.05)
        await handler.batcher.aclose()
        self._unload(handler)
        await loop.run_in_executor(None, memory.release)

    def idle(self, handler: Handler) -> bool:
        """No request holds ``handler``: none picked it and is still running, none has rows queued or admitted."""
        return self.engine.users.get(handler, 0) == 0 and handler.batcher.idle

    def _unload(self, handler: Handler) -> None:
        m, model = self.engine.metrics, handler.model
        handler.close()  # again after a drain: a no-op
        self.engine.users.pop(handler, None)
        self._retiring.discard(handler)
        remove_series(m.model_info, model=model.name, version=model.version, provider=model.provider,
                      sha256=model.sha256)
        remove_series(m.queue_rows, model=model.name, version=model.version)
        for device, key in (("host", "host_bytes"), ("gpu", "device_bytes")):
            if model.memory.get(key) is not None:
                remove_series(m.model_memory, model=model.name, version=model.version, device=device)
        m.model_reloads.labels(model=model.name, outcome="unloaded").inc()
        for hook in UNLOAD_HOOKS:
            hook()
        log.info("%s:%s drained and unloaded", model.name, model.version)
        # Start-up froze every object then alive (service.py): unfreeze so that cycles through the old
        # session can be collected, then freeze what is left again.
        del handler, model
        gc.unfreeze()
        gc.collect()
        gc.freeze()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for task in list(self._draining):
            task.cancel()
        for handler in list(self._retiring):
            handler.close()
        self._retiring.clear()


def _describe(memory_: dict) -> str:
    host, device = memory_.get("host_bytes"), memory_.get("device_bytes")
    parts = [f"host {host / 2**20:.0f} MiB" if host is not None else "host unknown"]
    if device is not None:
        parts.append(f"GPU {device / 2**20:.0f} MiB")
    return ", ".join(parts)
