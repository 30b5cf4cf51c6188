"""Deployment files: bentofile, kustomize, Prometheus, Grafana, checkov.

Fast checks need kubectl (with kustomize), promtool (Debian `prometheus`), the
kubernetes-validate package and the checkov venv (scripts/tools-venv.sh). Missing tools
skip locally and fail under CI=true (tests/tools.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli is in the test extra for it
    import tomli as tomllib

try:
    from tests.prom import free_port, running_prometheus, wait_for_query
    from tests.tools import REPO, require_module, require_tool, tools_venv_bin
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from prom import free_port, running_prometheus, wait_for_query
    from tools import REPO, require_module, require_tool, tools_venv_bin

K8S = REPO / "deploy" / "k8s"
PROM = REPO / "deploy" / "prometheus"
RULES = PROM / "rules" / "biomed.rules.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "biomed-dashboard.json"
ADAPTER = K8S / "prometheus-adapter" / "values.yaml"
KUBE_VERSION = "1.32"
BENTO_UID = 1034  # the `bentoml` user of BentoML's generated Dockerfile
# The inference routes, as the `endpoint` label has them (the route template): what a pod's in-flight requests count.
LATENCY_ENDPOINTS = {"/predict_image", "/predict_dna", "/predict_fasta", "/score_variants", "/explain_dna",
                     "/explain_image", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"}
API_ENDPOINTS = LATENCY_ENDPOINTS | {"/dicomweb/studies", "/dicomweb/studies/{StudyInstanceUID}",  # + STOW-RS
                                     "/predict_series", "/explain_series"}  # and a series in one request: none is a latency

KUSTOMIZATIONS = {
    "cpu": K8S / "overlays" / "cpu",
    "gpu": K8S / "overlays" / "gpu",
    "gpu-monitoring": K8S / "overlays" / "gpu-monitoring",
    "cpu-dicom": K8S / "overlays" / "cpu-dicom",
    "cpu-keda": K8S / "overlays" / "cpu-keda",
    "cpu-store": K8S / "overlays" / "cpu-store",
    "training": K8S / "training",
    "jobs": K8S / "jobs",
}
# Custom resources: no schema in kubernetes-validate; checked by hand below.
CRD_REQUIRED = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("selector", "endpoints"),
    ("kubeflow.org/v1", "PyTorchJob"): ("pytorchReplicaSpecs",),
    ("keda.sh/v1alpha1", "ScaledObject"): ("scaleTargetRef", "triggers"),
}
# Every metric name a rule, panel or adapter rule may use: the service's (docs/api.md plus
# the proposed biomed_gpu_required), BentoML 1.4's own, and kube-state-metrics'.
HISTOGRAMS = {
    "biomed_inference_seconds", "biomed_batch_size", "biomed_preprocess_seconds", "biomed_queue_seconds",
    "biomed_model_request_seconds", "biomed_dicom_group_instances", "biomed_dicom_group_seconds",
    "bentoml_service_request_duration_seconds", "bentoml_service_adaptive_batch_size",
}
SAMPLES = {
    "biomed_predictions_total", "biomed_rejected_requests_total", "biomed_model_info",
    "biomed_gpu_required", "biomed_queue_rows", "biomed_model_memory_bytes", "biomed_model_reloads_total",
    "biomed_dicom_forwarded_total", "biomed_audit_dropped_total", "biomed_dicom_groups_open",
    "biomed_dicom_group_overdue_seconds",
    "bentoml_service_request_total",
    "bentoml_service_request_in_progress", "bentoml_service_last_request_timestamp_seconds",
    "kube_deployment_status_replicas_available", "up",
}
KNOWN_METRICS = SAMPLES | {f"{h}{s}" for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}


# ---------------------------------------------------------------- helpers


def _render(path: Path) -> list[dict[str, Any]]:
    kubectl = require_tool("kubectl", "kubectl from https://kubernetes.io/docs/tasks/tools/ (has kustomize)")
    out = subprocess.run([kubectl, "kustomize", str(path)], check=True, capture_output=True, text=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: _render(path) for name, path in KUSTOMIZATIONS.items()}


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _config(docs: list[dict[str, Any]], prefix: str = "biomed-serve-config") -> dict[str, str]:
    maps = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(prefix)]
    assert len(maps) == 1
    return maps[0]["data"]


def _serving_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = _one(docs, "Deployment", "biomed-serve")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "biomed-serve")


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (labels, functions and keywords removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)           # string literals
    expr = re.sub(r"\{[^}]*\}", " ", expr)                      # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)                     # ranges, $__rate_interval
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    idents = re.findall(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr)
    keywords = {"and", "or", "unless", "offset", "bool", "by", "without", "inf", "nan"}
    return {name for name, call in idents if not call and name.lower() not in keywords}


def _rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def _recorded() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


# ---------------------------------------------------------------- bento


def test_bentofile_serves_without_torch() -> None:
    bento = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    assert bento["service"] == "service.service:Biomed"
    assert set(bento["include"]) == {"service/**/*.py", "service/ui/*", "biomed/**/*.py", "biomed/data/*.json",
                                     "biomed/data/*.md"}
    assert not any(p.startswith(("models", "training")) for p in bento["include"])
    packages = bento["python"]["packages"]
    names = {re.split(r"[\[<>=!~; ]", p, maxsplit=1)[0].lower() for p in packages}
    assert "torch" not in names and not any("torch" in n for n in names)
    assert any(p.startswith("onnxruntime-gpu[cuda,cudnn]") for p in packages)
    assert {m if isinstance(m, str) else m["tag"] for m in bento["models"]} == {"demo-image:latest", "demo-dna:latest",
                                                                              "demo-volume:latest"}
    assert {"owner", "project", "stage"} <= set(bento["labels"])
    assert "cuda_version" not in bento["docker"] and "base_image" not in bento["docker"]
    envs = {e["name"]: e["value"] for e in bento["envs"]}
    assert envs["BENTOML_HOME"].startswith("/tmp/")


def test_bentofile_packages_match_pyproject() -> None:
    """The image installs exactly the serving dependencies of pyproject.toml."""
    bento = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def name(req: str) -> str:
        return re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower().replace("_", "-")

    serving = {name(r) for r in project["dependencies"]} - {"bentoml", "onnxruntime"}
    assert {name(p) for p in bento["python"]["packages"]} == serving


# ---------------------------------------------------------------- kubernetes


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_rendered_objects_match_kubernetes_schemas(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    validator = require_module("kubernetes_validate", "pip install kubernetes-validate (test extra)")
    docs = rendered[name]
    assert docs, f"{name} renders nothing"
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CRD_REQUIRED:
            assert doc["metadata"]["name"] and doc["metadata"].get("namespace") == "biomed"
            missing = [f for f in CRD_REQUIRED[key] if f not in doc.get("spec", {})]
            assert not missing, f"{doc['kind']} {doc['metadata']['name']} lacks spec.{missing}"
            continue
        validator.validate(doc, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_serving_pod_is_hardened_and_probed(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    deploy = _one(docs, "Deployment", "biomed-serve")
    pod = deploy["spec"]["template"]["spec"]
    c = _serving_container(docs)
    assert "replicas" not in deploy["spec"], "the HPA owns the replica count"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == BENTO_UID
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["runAsUser"] == BENTO_UID
    # Writable dirs on the emptyDir at /tmp
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["BENTOML_HOME"].startswith("/tmp/") and env["PORT"] == "3000"
    # Probes: ready only after warm-up; a 10-minute start-up budget for engine builds
    assert c["ports"] == [{"name": "http", "containerPort": 3000, "protocol": "TCP"},
                          {"name": "grpc", "containerPort": 8001, "protocol": "TCP"}]
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] == "/readyz"
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 600
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    # Graceful shutdown
    sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] >= sleep + 30
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind])
    # Config from the generated ConfigMap
    [ref] = c["envFrom"]
    assert ref["configMapRef"]["name"] in {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    # Selectors line up
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
        obj = _one(docs, kind, "biomed-serve")["spec"]
        selector = obj.get("selector") or obj.get("podSelector")
        selector = selector.get("matchLabels", selector)
        assert selector and selector.items() <= labels.items(), kind
    annotations = deploy["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "3000"


SUPERVISOR_BYTES = 256 * 2**20  # bentoml serve's supervisor process beside the workers
CUDA_HOST_BYTES = 2 * 2**30  # host memory of a CUDA context with cuDNN (estimate)


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return int(float(quantity[: -len(unit)]) * factor)
    return int(quantity)


@pytest.mark.parametrize("overlay", ["cpu", "gpu", "cpu-dicom", "cpu-store"])
def test_the_memory_limit_covers_the_memory_model(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    """The pod's memory limit is at least workers x the worst case of one worker under the ConfigMap's limits."""
    from service.config import ServiceConfig

    docs = rendered[overlay]
    config = ServiceConfig.from_env(_config(docs))
    need = config.workers * config.memory_bound() + SUPERVISOR_BYTES
    if "nvidia.com/gpu" in _serving_container(docs)["resources"]["limits"]:
        need += CUDA_HOST_BYTES * config.workers
    limit = _bytes(_serving_container(docs)["resources"]["limits"]["memory"])
    assert need <= limit, f"{overlay}: the memory model needs {need / 2**30:.2f} GiB, the limit is {limit / 2**30:.2f}"
    assert limit <= 1.5 * need + 2**30, f"{overlay}: the limit is far above what the model needs"


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_the_grpc_port_is_open_on_the_pod_the_service_and_the_policy(rendered: dict[str, list[dict[str, Any]]],
                                                                     overlay: str) -> None:
    """The v2 gRPC door (BIOMED_GRPC_PORT): the container's port, the Service's (h2c) and the NetworkPolicy's."""
    from service.config import ServiceConfig

    docs = rendered[overlay]
    config = ServiceConfig.from_env(_config(docs))
    assert config.grpc_port == 8001 and config.grpc_host == "0.0.0.0"
    assert {"name": "grpc", "containerPort": config.grpc_port, "protocol": "TCP"} in _serving_container(docs)["ports"]
    service = _one(docs, "Service", "biomed-serve")
    assert {"name": "grpc", "port": config.grpc_port, "targetPort": "grpc", "protocol": "TCP",
            "appProtocol": "kubernetes.io/h2c"} in service["spec"]["ports"]
    policy = _one(docs, "NetworkPolicy", "biomed-serve")
    assert {"port": "grpc", "protocol": "TCP"} in policy["spec"]["ingress"][0]["ports"]


def test_dicom_component_opens_the_port_and_keeps_the_spool(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """components/dicom: the C-STORE port on the container and the Service, the spool on a PVC, a policy for the PACS."""
    from service.config import ServiceConfig

    docs = rendered["cpu-dicom"]
    config = ServiceConfig.from_env(_config(docs))  # valid settings (allowed AE titles, destination)
    assert config.dicom_port and config.dicom_destination and "*" not in config.dicom_allowed_aets
    c = _serving_container(docs)
    assert {"name": "dicom", "containerPort": config.dicom_port, "protocol": "TCP"} in c["ports"]
    service = _one(docs, "Service", "biomed-serve")
    assert {"name": "dicom", "port": config.dicom_port, "targetPort": "dicom", "protocol": "TCP"} in service["spec"]["ports"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    pod = _one(docs, "Deployment", "biomed-serve")["spec"]["template"]["spec"]
    volume = {v["name"]: v for v in pod["volumes"]}[mounts[config.dicom_spool]]
    claim = _one(docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every replica shares the spool (one forwarder)
    policy = _one(docs, "NetworkPolicy", "biomed-serve-dicom")
    labels = _one(docs, "Deployment", "biomed-serve")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert any(p["port"] == "dicom" for rule in policy["spec"]["ingress"] for p in rule["ports"])
    assert policy["spec"]["egress"] and all(rule.get("to") for rule in policy["spec"]["egress"])
    for overlay in ("cpu", "gpu"):
        assert "BIOMED_DICOM_PORT" not in _config(rendered[overlay])


def test_gpu_overlay_requests_a_gpu(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["gpu"]
    pod = _one(docs, "Deployment", "biomed-serve")["spec"]["template"]["spec"]
    c = _serving_container(docs)
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    config = _config(docs)
    assert config["BIOMED_REQUIRE_GPU"] == "1"
    assert config["BIOMED_PROVIDERS"] == "cuda,cpu"


def test_cpu_overlay_has_no_gpu(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["cpu"]
    assert "nvidia.com/gpu" not in json.dumps(docs)
    pod = _one(docs, "Deployment", "biomed-serve")["spec"]["template"]["spec"]
    assert "tolerations" not in pod and "nodeSelector" not in pod
    assert _config(docs)["BIOMED_REQUIRE_GPU"] == "0"
    assert "cuda" not in _config(docs)["BIOMED_PROVIDERS"]


def _endpoints(expr: str) -> set[str]:
    """The route templates an ``endpoint=~"..."`` matcher of a PromQL expression selects (regex escapes removed)."""
    regex = re.search(r'endpoint=~"([^"]+)"', expr).group(1)
    return {part.replace("\\\\", "") for part in regex.split("|")}


def _adapter_rules() -> dict[str, dict]:
    return {r["name"]["as"]: r for r in yaml.safe_load(ADAPTER.read_text())["rules"]["custom"]}


def test_the_endpoint_lists_are_the_inference_routes() -> None:
    """The adapter, the alerts and the dashboard select the inference routes by their templates, as served."""
    from service.routes import ROUTES

    templates = {r.path for r in ROUTES}
    assert API_ENDPOINTS <= templates
    inference = {r.path for r in ROUTES if r.body is not None and r.method == "POST" and not r.path.startswith("/admin")}
    assert inference == API_ENDPOINTS
    assert _endpoints(_adapter_rules()["biomed_requests_in_flight"]["metricsQuery"]) == API_ENDPOINTS
    groups = yaml.safe_load(RULES.read_text())["groups"]
    [latency] = [r for g in groups for r in g["rules"] if r.get("alert") == "BiomedHighP99Latency"]
    assert _endpoints(latency["expr"]) == LATENCY_ENDPOINTS  # a STOW-RS study is not a latency
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            if "endpoint=~" in target["expr"]:
                assert _endpoints(target["expr"]) == API_ENDPOINTS, panel["title"]


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_hpa_scales_on_queue_time_with_in_flight_and_cpu_as_fallbacks(rendered: dict[str, list[dict[str, Any]]],
                                                                      overlay: str) -> None:
    hpa = _one(rendered[overlay], "HorizontalPodAutoscaler", "biomed-serve")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "biomed-serve"}
    metrics = hpa["spec"]["metrics"]
    assert [m["type"] for m in metrics] == ["Pods", "Pods", "Resource"]
    assert [m["pods"]["metric"]["name"] for m in metrics[:2]] == ["biomed_queue_time_seconds",
                                                                  "biomed_requests_in_flight"]
    assert metrics[0]["pods"]["target"] == {"type": "AverageValue", "averageValue": "100m"}
    assert metrics[2]["resource"]["name"] == "cpu"
    rules = _adapter_rules()
    assert set(rules) == {"biomed_queue_time_seconds", "biomed_requests_in_flight"}
    for rule in rules.values():
        series = re.match(r"([a-zA-Z_:][\w:]*)", rule["seriesQuery"]).group(1)
        assert {"namespace", "pod"} <= set(rule["resources"]["overrides"])
        expr = rule["metricsQuery"].replace("<<.Series>>", series).replace("<<.LabelMatchers>>", 'pod="x"')
        assert metric_names(expr.replace("<<.GroupBy>>", "pod")) <= KNOWN_METRICS
    assert rules["biomed_queue_time_seconds"]["seriesQuery"].startswith("biomed_queue_seconds_count")
    assert rules["biomed_requests_in_flight"]["seriesQuery"].startswith("bentoml_service_request_in_progress")


def test_keda_replaces_the_hpa_with_the_same_signals(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """components/keda: no HPA of ours, a ScaledObject on the Deployment with the HPA's targets and replicas."""
    docs = rendered["cpu-keda"]
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    hpa = _one(rendered["cpu"], "HorizontalPodAutoscaler", "biomed-serve")["spec"]
    scaled = _one(docs, "ScaledObject", "biomed-serve")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "biomed-serve"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (hpa["minReplicas"], hpa["maxReplicas"])
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["behavior"]
    triggers = {t["name"] if "name" in t else t["type"]: t for t in spec["triggers"]}
    assert [t.get("name", t["type"]) for t in spec["triggers"]] == ["queue-time", "in-flight", "cpu"]
    for name in ("queue-time", "in-flight"):
        t = triggers[name]
        assert t["type"] == "prometheus" and t["metadata"]["serverAddress"].startswith("http")
        names = metric_names(t["metadata"]["query"])
        assert names and names <= KNOWN_METRICS, names
        assert 'namespace="biomed"' in t["metadata"]["query"]
    assert triggers["queue-time"]["metricType"] == "Value"  # a mean: compared as it is
    assert float(triggers["queue-time"]["metadata"]["threshold"]) == 0.1  # the HPA's 100m
    assert triggers["in-flight"]["metricType"] == "AverageValue"
    assert triggers["in-flight"]["metadata"]["threshold"] == hpa["metrics"][1]["pods"]["target"]["averageValue"]
    assert _endpoints(triggers["in-flight"]["metadata"]["query"]) == API_ENDPOINTS
    assert triggers["cpu"]["metadata"]["value"] == str(hpa["metrics"][2]["resource"]["target"]["averageUtilization"])


def test_model_store_component_mounts_the_training_store(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """components/model-store: the store `biomed export` writes (the training claim), watched by every worker."""
    from service.config import ServiceConfig

    docs = rendered["cpu-store"]
    config = ServiceConfig.from_env(_config(docs))
    assert config.model_store and config.model_poll_s > 0
    c = _serving_container(docs)
    pod = _one(docs, "Deployment", "biomed-serve")["spec"]["template"]["spec"]
    mount = next(m for m in c["volumeMounts"] if config.model_store.startswith(m["mountPath"] + "/"))
    volume = {v["name"]: v for v in pod["volumes"]}[mount["name"]]
    claims = {d["metadata"]["name"]: d for d in rendered["training"] if d["kind"] == "PersistentVolumeClaim"}
    claim = claims[volume["persistentVolumeClaim"]["claimName"]]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]  # every replica, and the training pods
    training = _config(rendered["training"], "biomed-train-config")["BENTOML_HOME"]
    # the claim's root is a BentoML home: its models/ folder is the store
    assert config.model_store.removeprefix(mount["mountPath"]) == "/models" and training.startswith("/")
    assert "BIOMED_MODEL_STORE" not in _config(rendered["cpu"])


def test_servicemonitor_only_in_the_monitoring_variant(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay in ("cpu", "gpu"):
        assert not [d for d in rendered[overlay] if d["kind"] == "ServiceMonitor"]
    docs = rendered["gpu-monitoring"]
    monitor = _one(docs, "ServiceMonitor", "biomed-serve")
    service = _one(docs, "Service", "biomed-serve")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["honorLabels"] is True, "BentoML's `endpoint` label must survive"


def test_training_job_and_pytorchjob(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["training"]
    config = _config(docs, "biomed-train-config")
    store = config["BENTOML_HOME"]
    job = _one(docs, "Job", "biomed-train-dna")["spec"]["template"]["spec"]
    [train] = job["containers"]
    script = train["args"][0]
    assert "biomed train dna" in script and "biomed export" in script
    assert int(train["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert job["restartPolicy"] == "Never"
    ddp = _one(docs, "PyTorchJob", "biomed-train-dna-ddp")
    assert ddp["apiVersion"] == "kubeflow.org/v1"
    specs = ddp["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] >= 1
    pods = [job] + [specs[r]["template"]["spec"] for r in ("Master", "Worker")]
    for spec in pods[1:]:
        [c] = spec["containers"]
        assert c["name"] == "pytorch"
        assert re.search(r"torchrun --nnodes=.*-m training\.train dna", c["args"][0], re.S)
        assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    for spec in pods:
        [c] = spec["containers"]
        assert c["envFrom"][0]["configMapRef"]["name"] == "biomed-train-config"
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts["model-store"] == store
        volumes = {v["name"]: v for v in spec["volumes"]}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_indexed_scoring_job(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """deploy/k8s/jobs: pod i of N scores shard i of N of the VCF, hardened like the training Job."""
    docs = rendered["jobs"]
    config = _config(docs, "biomed-genomics-config")
    job = _one(docs, "Job", "biomed-score-vcf")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and 1 <= spec["parallelism"] <= spec["completions"]
    assert spec["backoffLimitPerIndex"] >= 1 and spec["activeDeadlineSeconds"] > 0
    pod = spec["template"]["spec"]
    [c] = pod["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert int(env["BIOMED_SHARDS"]) == spec["completions"], "BIOMED_SHARDS must equal completions"
    script = c["args"][0]
    assert "biomed score-variants" in script and '--shard "$i/$BIOMED_SHARDS"' in script
    assert 'i="$JOB_COMPLETION_INDEX"' in script and "--server" in script
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind])
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for key in ("BIOMED_VCF", "BIOMED_REFERENCE"):  # inputs from the volume, read-only
        mount = next(m for path, m in mounts.items() if config[key].startswith(path + "/"))
        assert mount.get("readOnly") is True and "persistentVolumeClaim" in volumes[mount["name"]]
    results = mounts[config["BIOMED_RESULTS"]]
    assert not results.get("readOnly") and "persistentVolumeClaim" in volumes[results["name"]]
    assert mounts[config["BENTOML_HOME"]]["name"] == "model-store"
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert volumes["genomics"]["persistentVolumeClaim"]["claimName"] in claims
    # the model store is the one deploy/k8s/training defines (and `biomed export` writes)
    training_claims = {d["metadata"]["name"] for d in rendered["training"] if d["kind"] == "PersistentVolumeClaim"}
    assert volumes["model-store"]["persistentVolumeClaim"]["claimName"] in training_claims
    token = volumes[mounts["/var/run/secrets/biomed"]["name"]]["secret"]  # the token as a file, never in env
    assert token["secretName"] == "biomed-serve-auth" and token["optional"] is True
    assert "secretKeyRef" not in json.dumps(c)
    policy = _one(docs, "NetworkPolicy", "biomed-genomics")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert policy["ingress"] == []


# ---------------------------------------------------------------- prometheus


def test_promtool_check_config(tmp_path: Path) -> None:
    promtool = require_tool("promtool", "apt-get install prometheus")
    result = subprocess.run([promtool, "check", "config", str(PROM / "prometheus.yml")], capture_output=True, text=True)
    if result.returncode != 0 and "kubernetes_sd_configs not found" in result.stdout + result.stderr:
        # Debian builds Prometheus without Kubernetes service discovery. Check everything
        # else with promtool and the kubernetes job's shape here.
        config = yaml.safe_load((PROM / "prometheus.yml").read_text())
        k8s = [j for j in config["scrape_configs"] if "kubernetes_sd_configs" in j]
        assert [j["job_name"] for j in k8s] == ["kubernetes-pods"]
        assert k8s[0]["kubernetes_sd_configs"] == [{"role": "pod"}]
        keep = k8s[0]["relabel_configs"][0]
        assert keep["action"] == "keep" and "prometheus_io_scrape" in keep["source_labels"][0]
        config["scrape_configs"] = [j for j in config["scrape_configs"] if j not in k8s]
        (tmp_path / "rules").symlink_to(PROM / "rules")
        stripped = tmp_path / "prometheus.yml"
        stripped.write_text(yaml.safe_dump(config))
        result = subprocess.run([promtool, "check", "config", str(stripped)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    promtool = require_tool("promtool", "apt-get install prometheus")
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    promtool = require_tool("promtool", "apt-get install prometheus")
    tests = RULES.with_name("biomed.rules.test.yml")
    result = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_cover_the_required_alerts() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}
    assert {
        "BiomedHigh5xxRate", "BiomedHigh4xxRate", "BiomedHighP99Latency", "BiomedBatchSaturated",
        "BiomedInferenceSlowdown", "BiomedGPUFallbackToCPU", "BiomedNoReadyPods", "BiomedHighQueueTime",
        "BiomedModelLoadFailing", "BiomedAuditMessagesDropped",
    } <= set(alerts)
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    tested = RULES.with_name("biomed.rules.test.yml").read_text()
    untested = [name for name in alerts if f"alertname: {name}" not in tested]
    assert not untested, f"alerts without a promtool unit test: {untested}"


def test_batch_saturation_threshold_follows_max_batch_size(rendered: dict[str, list[dict[str, Any]]]) -> None:
    max_batch = int(_config(rendered["gpu"])["BIOMED_MAX_BATCH_SIZE"])
    groups = yaml.safe_load(RULES.read_text())["groups"]
    [rule] = [r for g in groups for r in g["rules"] if r.get("alert") == "BiomedBatchSaturated"]
    threshold = float(re.search(r">\s*([\d.]+)\s*$", rule["expr"].strip()).group(1))
    assert threshold == pytest.approx(0.8 * max_batch)


def test_rules_use_only_known_metrics() -> None:
    known = KNOWN_METRICS | _recorded()
    for expr in _rule_exprs():
        names = metric_names(expr)
        assert names, expr
        assert names <= known, f"unknown metrics {names - known} in {expr}"


# ---------------------------------------------------------------- grafana


def test_grafana_dashboard_panels_query_known_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    seen: set[str] = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names and names <= KNOWN_METRICS, f"{panel['title']}: {names - KNOWN_METRICS}"
            seen |= names
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in ("request rate", "error rate", "latency", "batch size", "inference time",
                  "predictions by label", "rejected", "preprocessing", "models", "share per version (canary)",
                  "prediction distribution per version", "latency p50 / p99 per version", "queue time",
                  "queue rows", "memory", "reloads"):
        assert topic in titles, topic
    wanted = {"bentoml_service_request_total", "bentoml_service_request_duration_seconds_bucket",
              "biomed_inference_seconds_bucket", "biomed_batch_size_sum", "biomed_predictions_total",
              "biomed_rejected_requests_total", "biomed_preprocess_seconds_bucket", "biomed_model_info",
              "biomed_model_request_seconds_count", "biomed_model_request_seconds_bucket", "biomed_queue_seconds_sum",
              "biomed_queue_seconds_bucket", "biomed_queue_rows", "biomed_model_memory_bytes",
              "biomed_model_reloads_total"}
    assert wanted <= seen


def test_metric_name_parser() -> None:
    expr = ('histogram_quantile(0.99, sum by (endpoint, le) (rate(foo_bucket{a="b{c}", d=~"$x"}[5m] offset 1h)))'
            " / on (pod) group_left(model) bar and baz:rec > 2")
    assert metric_names(expr) == {"foo_bucket", "bar", "baz:rec"}


# ---------------------------------------------------------------- checkov


def test_checkov_has_no_unaccepted_failures(rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    checkov = require_tool("checkov", "scripts/tools-venv.sh (make tools)", path=tools_venv_bin("checkov"))
    for name, docs in rendered.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump_all(docs))
    result = subprocess.run(
        [checkov, "-d", str(tmp_path), "--framework", "kubernetes", "--output", "json", "--quiet", "--compact"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode in (0, 1), result.stderr  # 1 = some check failed
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [c for r in reports for c in r["results"]["failed_checks"]]
    assert sum(r["summary"]["parsing_errors"] for r in reports) == 0
    accepted = {a["id"]: a for a in yaml.safe_load((K8S / "checkov-accepted.yaml").read_text())["accepted"]}
    for entry in accepted.values():
        assert len(entry["reason"].split()) >= 8, f"{entry['id']}: give a real reason"
    unaccepted = [
        f"{c['check_id']} {c['resource']} ({c['check_name']})"
        for c in failed
        if c["check_id"] not in accepted or c["resource"].split(".")[0] not in accepted[c["check_id"]]["kinds"]
    ]
    assert not unaccepted, "checkov failures not in deploy/k8s/checkov-accepted.yaml:\n" + "\n".join(unaccepted)
    stale = set(accepted) - {c["check_id"] for c in failed}
    assert not stale, f"accepted checks that no longer fail; remove them: {sorted(stale)}"


# ---------------------------------------------------------------- prometheus helper


@pytest.mark.slow
def test_prometheus_helper_scrapes_itself(tmp_path: Path) -> None:
    require_tool("prometheus", "apt-get install prometheus")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "self", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
    }))
    with running_prometheus(config, port=port) as prom:
        [sample] = wait_for_query(prom.url, 'up{job="self"} == 1', timeout_s=30)
        assert sample["metric"]["instance"] == f"127.0.0.1:{port}"
        assert wait_for_query(prom.url, 'prometheus_build_info{job="self"}')
        with pytest.raises(RuntimeError, match="failed"):
            wait_for_query(prom.url, "sum(", timeout_s=1)
    assert prom.process.poll() is not None, "the server must be stopped on exit"
