"""``biomed serve``: run the BentoML service on the configured port (torch is never imported)."""

from __future__ import annotations

import os
import shutil
import sys

from biomed import settings
from biomed.runtime import check_providers
from biomed.store import has_models
from service.config import ServiceConfig


def serve(port: int, host: str, workers: int | None, models: str | None, dicom_port: int | None = None,
          grpc_port: int | None = None) -> int:
    """Replace this process with ``bentoml serve service.service:Biomed``; the flags go to its environment.

    ``dicom_port`` turns the C-STORE receiver on (``BIOMED_DICOM_PORT``), ``grpc_port`` the Open Inference
    Protocol v2 over gRPC (``BIOMED_GRPC_PORT``); each listens on the same host as HTTP unless
    ``BIOMED_DICOM_HOST`` / ``BIOMED_GRPC_HOST`` says otherwise.
    """
    env = dict(os.environ)
    if models:
        env[settings.env("models")] = models
    if workers:
        env[settings.env("workers")] = str(workers)
    if dicom_port:
        env[settings.env("dicom_port")] = str(dicom_port)
        env.setdefault(settings.env("dicom_host"), host)
    if grpc_port:
        env[settings.env("grpc_port")] = str(grpc_port)
        env.setdefault(settings.env("grpc_host"), host)
    config = ServiceConfig.from_env(env)  # the server reads the same; a bad setting fails here, before the exec
    check_providers(config.providers)  # as the server would at start-up, in one line here
    wanted = tuple(ref.split(":")[0] for ref in config.models)
    if not has_models(wanted, config.model_store or None):
        raise LookupError(f"the model store lacks some of {', '.join(wanted)}; run `make demo-models` or `biomed export`")
    bentoml = shutil.which("bentoml", path=os.path.dirname(sys.executable)) or "bentoml"
    args = [bentoml, "serve", "service.service:Biomed", "--host", host, "--port", str(port)]
    sys.stdout.flush()
    os.execvpe(args[0], args, env)
    return 0  # not reached
