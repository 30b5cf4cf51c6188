"""The BentoML model store as biomed sees it: models exported by ``biomed export``, and their rollout.

A store is BentoML's (``$BENTOML_HOME/models``, or a bento's own) unless a folder is named
(``store``: a folder of ``<name>/<version>/`` entries, e.g. a volume several servers share).
Beside a model's versions, ``<name>/biomed-rollout.json`` says which version servers make the
default and which get a canary share (``promote``, ``set_canary``); servers that watch the store
pick it up (docs/deployment.md, "Rolling out a new model version"). Every change of a rollout
file happens under ``rollout_lock`` (an exclusive ``flock`` on ``.biomed-rollout.lock`` beside it),
so promotes and canary changes of one model, from any thread or process, happen one at a time:
none is written over by another's stale read.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import bentoml

from biomed.settings import DEMO_MODELS  # the default of BIOMED_MODELS

ROLLOUT_FILE = "biomed-rollout.json"  # beside the versions of a model: {"default": version, "canary": {version: %}}
ROLLOUT_LOCK = ".biomed-rollout.lock"  # held (flock) while the rollout file is read, changed and written
LATEST = "latest"


class ModelNotFound(LookupError):
    """No model in the store matches a reference."""


def _store(store: str | Path | None) -> dict[str, Any]:
    """BentoML's ``_model_store`` argument for a named store folder (none: BentoML's own store)."""
    if not store:
        return {}
    from bentoml._internal.models.model import ModelStore  # BentoML 1.4's store class (no public constructor)

    return {"_model_store": ModelStore(Path(store))}


def biomed_models(store: str | Path | None = None) -> list[bentoml.Model]:
    """Every model in the store exported by ``biomed export``, newest first."""
    if store and not Path(store).is_dir():
        return []
    models = [m for m in bentoml.models.list(**_store(store)) if m.info.labels.get("biomed") == "1"]
    return sorted(models, key=lambda m: m.info.creation_time, reverse=True)


def resolve(ref: str, store: str | Path | None = None) -> bentoml.Model:
    """A model by ``name`` (latest version) or ``name:version``."""
    try:
        return bentoml.models.get(ref, **_store(store))
    except Exception:  # BentoML raises NotFound or a tag validation error
        known = sorted({m.tag.name for m in biomed_models(store)})
        raise ModelNotFound(f"model {ref!r} is not in the model store; available: {', '.join(known) or 'none'}") from None


def onnx_path(model: bentoml.Model) -> Path:
    return Path(model.path_of("model.onnx"))


def imported(name: str, version: str, store: str | Path | None = None) -> dict[str, Any]:
    """An imported model's ``source``, ``description`` and ``checks`` from its ONNX metadata (all None for a model
    of biomed's own, or one that cannot be read)."""
    from biomed import metadata

    try:
        doc = metadata.read(onnx_path(resolve(f"{name}:{version}", store)))
    except (ModelNotFound, metadata.MetadataError):
        doc = {}
    found = doc.get("import", {})
    return {key: found.get(key) for key in ("source", "description", "checks")}


def has_models(names: tuple[str, ...] = DEMO_MODELS, store: str | Path | None = None) -> bool:
    present = {m.tag.name for m in biomed_models(store)}
    return all(name in present for name in names)


@dataclass(frozen=True)
class Row:
    name: str
    version: str
    kind: str
    variant: str
    labels: list[str]
    auroc: float
    created: str
    source: str = "biomed"  # biomed export, or the format an imported model came in (onnx, torchscript, monai_bundle)

    @classmethod
    def of(cls, model: bentoml.Model) -> "Row":
        meta: dict[str, Any] = model.info.metadata
        return cls(model.tag.name, model.tag.version or "", str(meta.get("kind", "?")), str(meta.get("variant", "?")),
                   list(meta.get("labels", [])), float(meta.get("auroc_macro", float("nan"))),
                   model.info.creation_time.strftime("%Y-%m-%d %H:%M"), str(meta.get("source", "biomed")))


def check_kind(name: str, kind: str, store: str | Path | None = None) -> None:
    """Refuse (ValueError) a ``kind`` model under a ``name`` whose versions in the store are of another kind: servers
    following the name would take it up as the name's newest version and serve the wrong kind under it."""
    from biomed.errors import with_article

    others = sorted({str(m.info.labels.get("kind")) for m in biomed_models(store) if m.tag.name == name} - {kind})
    if others:
        raise ValueError(f"model {name!r} holds {' and '.join(others)} models in the store; this is "
                         f"{with_article(kind)} model: export it under another name (--name)")


def import_onnx(path: str | Path, name: str | None = None, store: str | Path | None = None) -> str:
    """Put an exported ``model.onnx`` (with its ``biomed`` metadata) into the store; returns ``name:version``.

    For a file made elsewhere (another machine's ``biomed export``, a benchmark kit): the metadata is
    validated first, and the store entry carries the same labels ``biomed export`` writes. ``store``: a
    store folder (default: BentoML's).
    """
    from biomed import metadata

    doc = metadata.read(path)
    return save(Path(path).read_bytes(), doc, name or doc["name"], store)


def save(onnx_bytes: bytes, doc: dict[str, Any], name: str, store: str | Path | None = None,
         files: dict[str, bytes] | None = None) -> str:
    """Write a model whose ``biomed`` document is ``doc`` (already validated and embedded in ``onnx_bytes``) into the
    store as ``name:<doc's version>``, with ``files`` beside it (a model card); returns the tag. The store entry's
    labels and metadata are what ``biomed models`` lists: kind, labels, variant, AUROC (NaN when none was
    measured, as for an imported model) and, for an imported model, its source format."""
    check_kind(name, doc["kind"], store)  # a name holds one kind of model
    metrics = doc.get("training", {}).get("metrics", {})
    labels = {"biomed": "1", "kind": doc["kind"], "arch": str(doc.get("architecture", {}).get("arch", "?")),
              "variant": str(doc.get("export", {}).get("variant", "fp32"))}
    meta = {"biomed_schema": doc["schema"], "kind": doc["kind"], "labels": doc["labels"],
            "auroc_macro": float(metrics.get("auroc_macro", float("nan"))), "variant": labels["variant"]}
    if "import" in doc:
        meta["source"] = doc["import"]["source"]["format"]
    if store:
        Path(store).mkdir(parents=True, exist_ok=True)
    with bentoml.models.create(f"{name}:{doc['version']}", labels=labels, metadata=meta, **_store(store)) as stored:
        Path(stored.path_of("model.onnx")).write_bytes(onnx_bytes)
        for file_name, data in (files or {}).items():
            Path(stored.path_of(file_name)).write_bytes(data)
        return str(stored.tag)


# ---------------------------------------------------------------- rollout: which version serves


def split_ref(ref: str) -> tuple[str, str]:
    """``name:version`` as (name, version); ``version`` is ``""`` for a bare name."""
    name, _, version = ref.strip().partition(":")
    return name, version


def latest_version(name_dir: Path) -> str | None:
    """The version BentoML's ``latest`` file names in a model's folder (written once an export is complete)."""
    try:
        return (name_dir / LATEST).read_text().strip() or None
    except OSError:
        return None


def read_rollout(name_dir: Path) -> dict[str, Any]:
    """The rollout of a model: ``{"default": version}`` and/or ``{"canary": {version: percent}}``; ``{}`` when
    there is none (or it cannot be read: a half-written file is never seen, ``write_rollout`` replaces it whole)."""
    try:
        doc = json.loads((name_dir / ROLLOUT_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict):
        return {}
    out: dict[str, Any] = {}
    if isinstance(doc.get("default"), str) and doc["default"]:
        out["default"] = doc["default"]
    canary = doc.get("canary")
    if isinstance(canary, dict):
        out["canary"] = {str(v): float(p) for v, p in canary.items()
                         if isinstance(p, (int, float)) and math.isfinite(p) and 0 < p <= 100}
    return out


def write_rollout(name_dir: Path, rollout: dict[str, Any]) -> None:
    """Replace the rollout file of a model atomically (every watching server reads either the old or the new)."""
    doc = {**rollout, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    fd, tmp = tempfile.mkstemp(prefix=f".{ROLLOUT_FILE}.", dir=name_dir)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, name_dir / ROLLOUT_FILE)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def lock_rollout(name_dir: Path) -> int:
    """Take the model's rollout lock, waiting for whoever holds it; returns the descriptor ``unlock_rollout`` takes.

    Raises:
        OSError: the lock file cannot be created (a read-only store).
    """
    fd = os.open(name_dir / ROLLOUT_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # per open file: two threads of one process exclude each other too
    except BaseException:
        os.close(fd)
        raise
    return fd


def unlock_rollout(fd: int) -> None:
    os.close(fd)  # releases the lock


@contextlib.contextmanager
def rollout_lock(name_dir: Path) -> Iterator[None]:
    """The model's rollout lock for the duration of a block (``lock_rollout``)."""
    fd = lock_rollout(name_dir)
    try:
        yield
    finally:
        unlock_rollout(fd)


def _name_dir(name: str, version: str, store: str | Path | None) -> tuple[Path, str]:
    """The model's folder in the store and the exact version ``version`` names (``latest``: the newest export)."""
    if not name or ":" in version:
        raise ModelNotFound(f"{name}:{version} is not a model reference; use NAME:VERSION")
    stored = resolve(name if version in ("", LATEST) else f"{name}:{version}", store)
    return Path(stored.path).parent, str(stored.tag.version)


def promote(ref: str, store: str | Path | None = None) -> dict[str, Any]:
    """Make ``name:version`` the default version of ``name`` for every server watching the store; a promote ends
    any canary of that model. ``name:latest`` (or a bare name) makes the servers follow the newest export again.

    Returns the rollout written. Raises ModelNotFound when the version is not in the store, and OSError when
    the store cannot be written (a bento's own store is read-only).
    """
    name_dir, rollout = promotion(ref, store)
    with rollout_lock(name_dir):
        write_rollout(name_dir, rollout)
    return {"model": split_ref(ref)[0], **rollout}


def promotion(ref: str, store: str | Path | None = None) -> tuple[Path, dict[str, Any]]:
    """The model's folder and the rollout a promote of ``ref`` writes there (``promote``), nothing written yet.

    Raises ModelNotFound when the version is not in the store."""
    name, version = split_ref(ref)
    name_dir, exact = _name_dir(name, version, store)
    return name_dir, {"default": LATEST if version in ("", LATEST) else exact, "canary": {}}


def set_canary(ref: str, percent: float, store: str | Path | None = None) -> dict[str, Any]:
    """Send ``percent`` (0 to 100; 0 ends it) of the requests for ``name`` to ``version``, on every server watching
    the store; the other canaries of the model are kept (their shares add up to at most 100)."""
    name, version = split_ref(ref)
    if not version or version == LATEST:
        raise ValueError("a canary needs an exact version: NAME:VERSION")
    if not (math.isfinite(percent) and 0 <= percent <= 100):
        raise ValueError(f"the canary share must be a percentage from 0 to 100, not {percent:g}")
    name_dir, exact = _name_dir(name, version, store)
    with rollout_lock(name_dir):  # read, change, write: one at a time
        rollout = read_rollout(name_dir)
        canary = dict(rollout.get("canary") or {})
        canary.pop(exact, None)
        if percent > 0:
            canary[exact] = float(percent)
        if sum(canary.values()) > 100:
            raise ValueError(f"the canary shares of {name} would add up to {sum(canary.values()):g}%, over 100")
        rollout["canary"] = canary
        write_rollout(name_dir, rollout)
    return {"model": name, **rollout}


def rollout_default(rollout: dict[str, Any], latest: str | None) -> str | None:
    """The default version a rollout file sets (``latest``: the newest export, ``latest``), or None when it sets none.

    One rule for servers (``service/lifecycle.py``) and this machine's commands (``default_ref``).
    """
    default = rollout.get("default")
    return latest if default == LATEST else default or None


@dataclass(frozen=True)
class Choice:
    """The version a bare model name means: ``ref`` (``name:version``), why (``promoted``, ``newest``), and the canary
    shares servers give other versions (``{version: percent}``)."""

    ref: str
    why: str
    canary: dict[str, float]


def default_ref(ref: str, store: str | Path | None = None) -> Choice:
    """What servers following ``name`` serve by default, for a command on this machine: ``name:version`` as given;
    ``name`` (or ``name:latest``) is the promoted version (``biomed models promote``), else the newest export.

    Raises ModelNotFound when the name (or the version) is not in the store.
    """
    name, version = split_ref(ref)
    if version and version != LATEST:
        return Choice(ref, "named", {})
    stored = resolve(name, store)
    folder = Path(stored.path).parent
    rollout = read_rollout(folder)
    newest = latest_version(folder) or str(stored.tag.version)
    promoted = rollout_default(rollout, newest)
    chosen = promoted or newest
    canary = {v: p for v, p in (rollout.get("canary") or {}).items() if v != chosen}
    return Choice(f"{name}:{chosen}", "promoted" if rollout.get("default") not in (None, LATEST) else "newest", canary)


def rollout_of(name: str, store: str | Path | None = None) -> dict[str, Any]:
    """The rollout file of ``name`` as ``read_rollout`` gives it (``{}``: none, or the model is not in the store)."""
    try:
        return read_rollout(Path(resolve(name, store).path).parent)
    except ModelNotFound:
        return {}
