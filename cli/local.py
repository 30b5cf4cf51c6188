"""Models run on this machine by the commands (``score-variants``, ``predict-regions``, ``explain``,
``explain-image``): the version servers following the name serve by default, said when it matters."""

from __future__ import annotations

import os
import sys

from biomed import runtime, store
from biomed.settings import env


def load_local(ref: str, kind: str) -> runtime.LoadedModel:
    """``ref`` loaded on the CPU with onnxruntime: ``name:version`` as given; a bare ``name`` is what servers following
    it serve by default (``biomed.store.default_ref``: the promoted version, else the newest export), in the store
    servers load from (``BIOMED_MODEL_STORE``, else BentoML's). When a promote or a canary is in play, one line on
    stderr says which version runs and how to name another."""
    where = os.environ.get(env("model_store")) or None
    try:
        choice = store.default_ref(ref, where)
    except store.ModelNotFound as err:
        raise runtime.StartupError(str(err)) from None
    if choice.why == "promoted" or choice.canary:
        canary = ", ".join(f"{v} ({p:g}%)" for v, p in choice.canary.items())
        print(f"biomed: {ref} is {choice.ref}, " + ("the version promoted in the store" if choice.why == "promoted"
              else "the newest export") + (f"; the canary {canary} that servers give a share of requests is not used "
                                           "here" if canary else "") + "; name another with NAME:VERSION",
              file=sys.stderr)
    return runtime.load_model(choice.ref, runtime.RuntimeOptions(), where, kind=kind)
