"""Property-based fuzzing of every endpoint in the service's own OpenAPI document (schemathesis 4).

The schema is loaded from ``GET /openapi.json`` of the in-process ASGI app
(``Biomed.to_asgi()``; the lifespan loads the tiny demo models once). Each operation is
fuzzed with positive cases (bodies valid for the schema) and negative ones (bodies that
violate it). Every response must be a non-5xx that conforms to the document: status code
listed, content type and body schema as declared; every 4xx carries the contract's
``{"error": str, "detail": str}`` body.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis (the test extra)")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode, checks  # noqa: E402

try:
    from tests import live_server  # noqa: E402
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import live_server

# Cases per operation and mode; 5 POST operations x 2 modes x 105 + GET /models >= 1,000.
EXAMPLES = int(os.environ.get("BIOMED_FUZZ_EXAMPLES", "105"))
MIN_TOTAL = int(os.environ.get("BIOMED_FUZZ_MIN_TOTAL", "1000"))
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance]


@pytest.fixture(scope="module")
def schema(demo_models: dict[str, str]):  # type: ignore[no-untyped-def]
    from schemathesis.python import asgi

    loaded = schemathesis.openapi.from_asgi("/openapi.json", live_server.asgi_app())
    yield loaded
    asgi.shutdown_lifespans()  # stops the engine's threads


def _without_model(case, drop: bool):  # type: ignore[no-untyped-def]
    """Half the cases drop a generated ``model`` name, so valid bodies reach the models (not only a 404)."""
    if drop and isinstance(case.body, dict) and "model" in case.body:
        del case.body["model"]
    return case


def _fuzz(operation, mode: GenerationMode, statuses: Counter) -> int:  # type: ignore[no-untyped-def]
    ran = 0
    strategy = st.tuples(operation.as_strategy(generation_mode=mode), st.booleans()).map(lambda t: _without_model(*t))

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True, print_blob=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case) -> None:  # type: ignore[no-untyped-def]
        nonlocal ran
        response = case.call()
        ran += 1
        statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)
        if 400 <= response.status_code < 500:
            body = response.json()
            assert set(body) == {"error", "detail"}, body
            assert isinstance(body["error"], str) and isinstance(body["detail"], str) and body["detail"], body

    run()
    return ran


def test_every_operation_survives_fuzzing(schema) -> None:  # type: ignore[no-untyped-def]
    from service.routes import ROUTES

    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    # The document is the route table (schemathesis leaves out the path it loaded the document from).
    assert labels | {"GET /openapi.json"} == {f"{r.method} {r.path}" for r in ROUTES}
    assert {"POST /predict_image", "POST /predict_dna", "POST /predict_fasta", "POST /score_variants",
            "POST /explain_dna", "GET /models"} <= labels
    ours = {f"{r.method} {r.path}" for r in ROUTES if r.endpoint is not None}  # BentoML's probes are not fuzzed
    operations = [op for op in operations if op.label in ours]
    statuses: Counter = Counter()
    per_operation = {}
    for op in operations:
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if op.method.upper() == "POST" else [])
        per_operation[op.label] = sum(_fuzz(op, mode, statuses) for mode in modes)
    total = sum(per_operation.values())
    print(f"\nfuzzed {total} cases: {per_operation}; statuses {dict(sorted(statuses.items()))}")
    assert total >= MIN_TOTAL, per_operation
    assert statuses[200] > 0 and not any(code >= 500 for code in statuses)
