"""deploy/kserve: the InferenceServices match KServe's own schema and run the v2 door as KServe expects.

The schema is KServe's InferenceService CRD (v1beta1 openAPIV3Schema), cut to the fields the manifests use
(deploy/kserve/schema/, made by scripts/kserve_schema_subset.py from the CRD; its source is recorded in the
file). Validation is strict: a field the schema does not declare is an error, as ``kubectl apply
--validate=strict`` would make it (the API server would otherwise drop it without a word).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
KSERVE = REPO / "deploy" / "kserve"
SCHEMA = KSERVE / "schema" / "inferenceservice-v1beta1.subset.json"
MANIFESTS = {"gpu": KSERVE / "inferenceservice-gpu.yaml", "cpu": KSERVE / "inferenceservice-cpu.yaml",
             "grpc": KSERVE / "inferenceservice-grpc.yaml"}
REST = ("cpu", "gpu")
SUPERVISOR_BYTES = 256 * 2**20  # as tests/test_deploy.py
CUDA_HOST_BYTES = 2 * 2**30


def _doc(variant: str) -> dict[str, Any]:
    [doc] = [d for d in yaml.safe_load_all(MANIFESTS[variant].read_text()) if d]
    return doc


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    [c] = doc["spec"]["predictor"]["containers"]
    return c


def _env(doc: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in _container(doc)["env"]}


def _undeclared(value: Any, schema: dict, where: str = "") -> Iterator[str]:
    """Paths of fields in ``value`` that ``schema`` does not declare (strict field validation)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict):
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        for key, item in value.items():
            if props is not None and key in props:
                yield from _undeclared(item, props[key], f"{where}.{key}")
            elif isinstance(extra, dict):
                yield from _undeclared(item, extra, f"{where}.{key}")
            elif props is not None or extra is False:
                yield f"{where}.{key}"
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from _undeclared(item, schema["items"], f"{where}[{i}]")


def test_the_schema_subset_says_where_it_comes_from() -> None:
    source = json.loads(SCHEMA.read_text())["source"]
    assert source["repository"] == "https://github.com/kserve/kserve" and re.fullmatch(r"[0-9a-f]{40}", source["commit"])
    assert source["path"] == "config/crd/full/serving.kserve.io_inferenceservices.yaml"
    assert source["version"] == "v1beta1" and source["license"] == "Apache-2.0"
    assert SCHEMA.stat().st_size < 64 * 1024


@pytest.mark.parametrize("variant", sorted(MANIFESTS))
def test_manifest_matches_kserves_schema_strictly(variant: str) -> None:
    schema = json.loads(SCHEMA.read_text())["schema"]
    doc = _doc(variant)
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)
    unknown = list(_undeclared(doc, schema))
    assert not unknown, (f"fields KServe's schema does not declare (or the subset lacks: rerun "
                         f"scripts/kserve_schema_subset.py against the CRD): {unknown}")
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1" and doc["kind"] == "InferenceService"


def test_the_validation_catches_mistakes() -> None:
    """The checks above bite: a wrong type, a missing required field and an unknown field each fail."""
    schema = json.loads(SCHEMA.read_text())["schema"]
    validator = jsonschema.Draft7Validator(schema)
    doc = _doc("gpu")
    bad_type = json.loads(json.dumps(doc))
    bad_type["spec"]["predictor"]["minReplicas"] = "one"
    assert list(validator.iter_errors(bad_type))
    no_name = json.loads(json.dumps(doc))
    del _container(no_name)["env"][0]["name"]
    assert list(validator.iter_errors(no_name))
    typo = json.loads(json.dumps(doc))
    _container(typo)["readinessProbe"]["httpGet"]["paht"] = "/v2/health/ready"
    assert list(_undeclared(typo, schema)) == [".spec.predictor.containers[0].readinessProbe.httpGet.paht"]


@pytest.mark.parametrize("variant", REST)
def test_custom_predictor_speaks_v2_with_open_probes(variant: str) -> None:
    from service import routes

    doc = _doc(variant)
    c = _container(doc)
    env = _env(doc)
    assert c["name"] == "kserve-container" and c["image"].startswith("biomed-serve")
    assert env["PROTOCOL"] == "v2"  # KServe's protocolVersion of a custom predictor
    [port] = c["ports"]
    assert port["containerPort"] == int(env["PORT"]) == 3000
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/v2/health/live")):
        get = c[probe]["httpGet"]
        assert get["path"] == path and get["port"] == port["containerPort"]
        assert routes.is_open(path), f"{path} must stay open for the kubelet"
    annotations = doc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "true"
    assert annotations["prometheus.kserve.io/port"] == str(port["containerPort"])
    assert annotations["prometheus.kserve.io/path"] == "/metrics"
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == ["ALL"]
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/tmp"} and env["BENTOML_HOME"].startswith("/tmp/")
    from biomed.settings import declared
    from service.config import ServiceConfig

    names = {d.env for _, d in declared()}
    assert {n for n in env if n.startswith("BIOMED_")} <= names, "a setting the service does not read"

    assert doc["spec"]["predictor"]["timeout"] == ServiceConfig.from_env(env).request_timeout_s


def test_the_grpc_predictor_speaks_v2_over_h2c_with_grpc_health_probes() -> None:
    """One port named h2c (Knative routes one), the door on it, and probes that ask grpc.health.v1."""
    from service.config import ServiceConfig
    from service.protocol.v2_grpc import SERVICE

    doc = _doc("grpc")
    c = _container(doc)
    env = _env(doc)
    config = ServiceConfig.from_env({k: v for k, v in env.items() if v is not None})
    assert env["PROTOCOL"] == "grpc-v2" and c["name"] == "kserve-container"
    assert c["ports"] == [{"name": "h2c", "containerPort": config.grpc_port, "protocol": "TCP"}]
    assert c["readinessProbe"]["grpc"] == {"port": config.grpc_port, "service": ""}
    assert c["livenessProbe"]["grpc"] == {"port": config.grpc_port, "service": SERVICE}
    assert "httpGet" not in c["readinessProbe"] and "httpGet" not in c["livenessProbe"]
    assert doc["metadata"]["annotations"]["prometheus.kserve.io/port"] == str(config.port)
    assert doc["spec"]["predictor"]["timeout"] == config.request_timeout_s
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == ["ALL"]


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return int(float(quantity[: -len(unit)]) * factor)
    return int(quantity)


@pytest.mark.parametrize("variant", sorted(MANIFESTS))
def test_resources_cover_the_memory_model_and_the_gpu(variant: str) -> None:
    from service.config import ServiceConfig

    doc = _doc(variant)
    resources = _container(doc)["resources"]
    config = ServiceConfig.from_env({k: v for k, v in _env(doc).items() if v is not None})
    gpu = "nvidia.com/gpu" in resources["limits"]
    assert gpu == (variant == "gpu") and gpu == config.require_gpu
    need = config.workers * config.memory_bound() + SUPERVISOR_BYTES + (CUDA_HOST_BYTES * config.workers if gpu else 0)
    limit = _bytes(resources["limits"]["memory"])
    assert need <= limit <= 1.5 * need + 2**30, (need / 2**30, limit / 2**30)
    if gpu:
        assert str(resources["requests"]["nvidia.com/gpu"]) == str(resources["limits"]["nvidia.com/gpu"]) == "1"
        assert config.providers[0] == "cuda" and config.workers == 1
    else:
        assert "cuda" not in config.providers and "nvidia" not in MANIFESTS[variant].read_text()
