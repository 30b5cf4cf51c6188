"""What the benchmarks do for each kind of model, in one table: ``BENCH[kind's name]``.

The cases (``bench/cli.py``) look a model's kind up here and never ask which kind it is: the
request files it sends, where wrk sends them, its v2 element, its random rows, its one request
in-process, its own cases with the service up and after the servers, and its report targets.
A kind the benchmarks should run is one more entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from bench import cases, dicom, large, load, v2
from bench.explain import explain_image
from bench.genome import throughput as genome_throughput
from bench.inputs import Model, ct_slice, ct_small, dna_body
from bench.server import Server
from biomed.kinds import dna, image

if TYPE_CHECKING:
    from bench.cli import Plan

Goal = tuple[str, str, "float | None", Callable[[float], bool]]  # (target, goal, measured or None, met(measured))


@dataclass(frozen=True)
class Request:
    """A request file the benchmarks send a model of the kind.

    Attributes:
        key: its key in results.json's ``requests`` (and its wrk target's).
        make: (model, work folder) -> the file, written there.
        describe: (model, file) -> what results.json says it is.
        size: how its rows tell it from the kind's main request ("128x128"); empty: the model's name alone.
        concurrency: the only concurrencies it is swept at (none of them in the run: the run's lowest);
            empty: every one of the run's.
    """

    key: str
    make: Callable[[Model, Path], Path]
    describe: Callable[[Model, Path], str]
    size: str = ""
    concurrency: tuple[int, ...] = ()

    def label(self, model: Model) -> str:
        """How its rows name the model ("" is the model's name)."""
        return f"{model.name} ({self.size})" if self.size else ""


@dataclass(frozen=True)
class Context:
    """What a kind's own case is given: the model, the run's plan and folder, the model's main request file and,
    while the servers are up, the service and its DICOM port."""

    model: Model
    plan: "Plan"
    work: Path
    request: Path
    service: Server | None = None
    dicom_port: int = 0


@dataclass(frozen=True)
class Case:
    """A case of one kind: its name in the run, the results.json key it fills, and ``empty`` there if it fails."""

    name: str
    key: str
    run: Callable[[Context], Any]
    empty: type = list


def _no_env(work: Path, dicom_port: int) -> dict[str, str]:
    return {}


def _no_goals(results: dict, model: dict) -> list[Goal]:
    return []


@dataclass(frozen=True)
class BenchKind:
    """What the benchmarks do for models of one kind.

    Attributes:
        title: how help texts name it ("image", "DNA").
        default_ref: the store reference its ``--<kind>-model`` flag defaults to.
        requests: the files it sends. The first is its main request (the pipeline's, the preprocessing's,
            its own cases'); the others are swept after every kind's main request.
        endpoints: where wrk sends them, on the service and on the floor.
        v2_element: the native request file as the one BYTES element of the kind's v2 person input.
        rows: random model rows of a shape, for the runtime case.
        one_request: one request in-process (the pipeline): (model, request, session, input name) -> call.
        preprocess: its rows of the preprocessing case, on the main request: (model, request, min seconds).
        service_env: (work folder, DICOM port) -> what the service needs for its cases.
        served: its cases run while the servers are up, after the sweeps.
        after: its cases run once the servers have stopped.
        goals: (results, its entry in results['models']) -> its rows of the report's targets.
    """

    title: str
    default_ref: str
    requests: tuple[Request, ...]
    endpoints: load.Endpoints
    v2_element: Callable[[Path], bytes]
    rows: cases.Rows
    one_request: cases.OneRequest
    preprocess: Callable[[Model, bytes, float], list[dict]] = cases.no_preprocess
    service_env: Callable[[Path, int], dict[str, str]] = _no_env
    served: tuple[Case, ...] = ()
    after: tuple[Case, ...] = ()
    goals: Callable[[dict, dict], list[Goal]] = _no_goals

    @property
    def main(self) -> Request:
        return self.requests[0]


def _upload_goals(results: dict, model: dict) -> list[Goal]:
    """Service ÷ ceiling at concurrency 16 for each upload size: the 512x512 slice and the 128x128 CT_small."""
    efficiency = results.get("efficiency", [])
    out: list[Goal] = []
    for name in sorted({r["model"] for r in efficiency if r["model"].startswith(model["name"])}):
        at16 = next((r for r in efficiency if r["model"] == name and r["concurrency"] == 16), None)
        size = name.removeprefix(model["name"]).strip(" ()") or "512x512"
        out.append((f"service ÷ ceiling at concurrency 16, {model['name']}, {size} upload", "≥ 0.9",
                    at16["of_ceiling"] if at16 else None, lambda v: v >= 0.9))
    return out


def _series_goals(results: dict, model: dict) -> list[Goal]:
    """A series through C-STORE at 3x the SR-per-instance rate of the same run, and its SR at the PACS within the
    quiet period + 2 s."""
    series = next(iter(results.get("dicom_series", [])), None)
    per_instance = next((r for r in results.get("dicom", []) if r["door"].startswith("C-STORE")), None)
    ratio = series["per_s"] / per_instance["per_s"] if series and per_instance else None
    late = series["sr_max_s"] - series["quiet_s"] if series else None
    return [(f"C-STORE, a {series['instances'] if series else 200}-slice series ÷ an SR per instance, instances/s",
             "≥ 3", ratio, lambda v: v >= 3),
            ("series SR at the PACS after the last instance, beyond the quiet period, s (worst round)", "≤ 2", late,
             lambda v: v <= 2)]


def _batching_goal(results: dict, model: dict) -> list[Goal]:
    ratio = results.get("batching_ratio", {}).get(model["name"])
    return [(f"batching on ÷ off, {model['name']}", "≥ 2", ratio, lambda v: v >= 2)]


IMAGE = BenchKind(
    title="image",
    default_ref="demo-image",
    requests=(
        Request(image.KIND.name, lambda m, work: ct_slice(work / "ct_512.dcm"),
                lambda m, f: "synthetic CT slice, 512x512 16-bit, explicit VR LE, "
                             f"{f.stat().st_size // 1024} KiB, multipart field 'file'"),
        # a small upload beside it, at 1 and 16 connections only (the sweep's length stays as it was)
        Request(f"{image.KIND.name}_small", lambda m, work: ct_small(work / "ct_small.dcm"),
                lambda m, f: "pydicom's CT_small.dcm, 128x128 16-bit, 39 KiB, multipart field 'file'",
                size="128x128", concurrency=(1, 16)),
    ),
    endpoints=load.Endpoints("image.lua", "BENCH_FILE", "/predict_image", "/mounted/predict_image", "/api_image"),
    v2_element=v2.file_element,
    rows=cases.pixel_rows,
    one_request=cases.image_request,
    preprocess=cases.dicom_preprocess,
    service_env=dicom.dicom_env,  # the service alone receives DICOM (the other servers would share the port)
    served=(
        Case("dicom network", "dicom", lambda c: dicom.throughput(
            c.service, c.dicom_port, c.request, c.plan.dicom_instances, c.plan.dicom_rounds, c.work)),
        Case("explain image", "explain_image", lambda c: explain_image(
            c.service, c.model, c.request, c.plan.ism_repeats), dict),
    ),
    # a series with no other server up: a server of its own grouping by series, its SRs to a PACS
    after=(Case("dicom series", "dicom_series", lambda c: dicom.series(
        c.model.ref, c.request, c.plan.series_instances, c.plan.dicom_rounds, c.plan.series_quiet_s,
        c.work / "dicom-series")),),
    goals=lambda results, model: _upload_goals(results, model) + _series_goals(results, model),
)

DNA = BenchKind(
    title="DNA",
    default_ref="demo-dna",
    requests=(Request(dna.KIND.name, lambda m, work: dna_body(work / "dna.json", m.length),
                      lambda m, f: f"one {m.length}-base sequence (2 rows with the reverse strand)"),),
    endpoints=load.Endpoints("dna.lua", "BENCH_BODY", "/predict_dna", "/mounted/predict_dna", "/api_dna"),
    v2_element=v2.sequence_element,
    rows=cases.base_rows,
    one_request=cases.dna_request,
    served=(
        Case("ism", "ism", lambda c: load.ism(c.service, c.model, c.plan.ism_bases, c.plan.ism_repeats), dict),
        Case("large requests", "large", lambda c: large.large_requests(c.service, c.model, c.plan.quick,
                                                                        c.plan.rounds)),
    ),
    # genome scale, with no server up: the commands and onnxruntime alone taking turns
    after=(Case("genome scale", "genome", lambda c: genome_throughput(
        c.model, c.plan.genome_variants, c.plan.genome_rounds, c.work / "genome-scale")),),
    goals=_batching_goal,
)

BENCH: dict[str, BenchKind] = {image.KIND.name: IMAGE, dna.KIND.name: DNA}  # the order of --models' default
REQUESTS: dict[str, Request] = {r.key: r for kind in BENCH.values() for r in kind.requests}
