"""``biomed bench``: every case in one run, so the ratios compare figures taken under the same load."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from bench import cases, load, machine, report, timings
from bench import grpc as grpc_bench
from bench import v2 as v2_bench
from bench.inputs import Model, load_model
from bench.kinds import BENCH, REQUESTS, Case, Context
from bench.server import Server, free_port

log = logging.getLogger("bench")


@dataclass(frozen=True)
class Plan:
    """How long and how wide each case runs (quick: a CI smoke test of seconds)."""

    quick: bool
    concurrency: tuple[int, ...]
    wrk_seconds: float  # per wrk run; each point is ``rounds`` runs, the arms of a comparison taking turns
    rounds: int
    batching_concurrency: int
    runtime_batches: tuple[int, ...]
    min_time_s: float  # per timed micro-benchmark
    pipeline_seconds: float
    ism_repeats: int
    ism_bases: int
    encode_mb: tuple[float, ...]  # the first: the largest request the service takes (BIOMED_MAX_BASES)
    python_encode_mb: float
    genome_variants: int = 100_000  # variants of the synthetic genome scored by `biomed score-variants`
    genome_rounds: int = 3  # turns of the command and onnxruntime alone
    dicom_instances: int = 64  # CT slices per round through C-STORE and STOW-RS
    dicom_rounds: int = 3
    series_instances: int = 200  # 512x512 CT slices of the series sent each round (one SR per series)
    series_quiet_s: float = 10.0  # its quiet period (BIOMED_DICOM_GROUP_TIMEOUT_S: the default)

    @classmethod
    def of(cls, quick: bool) -> "Plan":
        if quick:
            return cls(True, (1, 4), 1.0, 1, 4, (1, 8, 32), 0.05, 0.3, 1, 1000, (1.0,), 0.1, genome_variants=2000,
                       genome_rounds=1, dicom_instances=8, dicom_rounds=1, series_instances=8, series_quiet_s=2.0)
        return cls(False, (1, 4, 16, 64), 4.0, 3, 32, (1, 8, 32), 2.0, 10.0, 5, 1000, (2.0, 20.0), 1.0)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: runtime, service efficiency, batching, preprocessing, ISM, start-up")
    p.add_argument("--quick", action="store_true", help="a smoke run of seconds (CI): concurrency 1 and 4, short runs")
    p.add_argument("--out", default="bench-results", help="folder for results.md, results.json and the plots")
    p.add_argument("--models", default=",".join(BENCH),
                   help=f"which demo models to bench, comma-separated: {', '.join(BENCH)} (default: all)")
    for name, kind in BENCH.items():
        p.add_argument(f"--{name}-model", dest=f"{name}_model", default=kind.default_ref,
                       help=f"store reference of the {kind.title} model")
    p.add_argument("--tensorrt", action="store_true", help="add onnxruntime TensorRT fp16 to the runtime case")
    p.set_defaults(func=cmd_bench)


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in BENCH]
    if bad or not kinds:
        raise ValueError(f"--models {text!r} is invalid; choose from: {', '.join(BENCH)} (comma-separated)")
    return kinds


def cmd_bench(args: argparse.Namespace) -> int:
    from bench import wrk

    kinds = _kinds(args.models)
    wrk.wrk_path()  # fail early, with the install hint
    grpc_bench.h2load_path()
    models = {k: load_model(getattr(args, f"{k}_model"), k) for k in kinds}
    out = Path(args.out)
    results = run(models, Plan.of(args.quick), out, tensorrt=args.tensorrt)
    print(report.markdown(results))
    print(f"\nwritten: {out / 'results.md'}, {out / 'results.json'}, " + ", ".join(str(out / p) for p in results["plots"]))
    return 0


class Runner:
    """Runs cases in order, recording a failed case as 'not measured' instead of losing the whole run."""

    def __init__(self, results: dict) -> None:
        self.results = results

    def case(self, name: str, fn: Callable[[], object]) -> object:
        print(f"biomed bench: {name} ...", flush=True)
        started = time.perf_counter()
        try:
            value = fn()
        except Exception as err:  # noqa: BLE001 - report and go on with the other cases
            log.debug("%s failed:\n%s", name, traceback.format_exc())
            self.results["errors"].append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            return None
        self.results.setdefault("case_seconds", {})[name] = round(time.perf_counter() - started, 1)
        return value


def run(models: dict[str, Model], plan: Plan, out: Path, tensorrt: bool = False) -> dict:
    """Every case, in an order that keeps one server at a time on the machine; torch comes last."""
    started = time.perf_counter()
    results: dict = {"mode": "quick" if plan.quick else "full", "errors": [],
                     "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                     "machine": machine.describe(), "settings": asdict(plan),
                     "models": {k: {"name": m.name, "ref": m.ref, "arch": m.doc.get("architecture", {}).get("arch")}
                                for k, m in models.items()}}
    runner = Runner(results)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="biomed-bench-") as tmp:
        work = Path(tmp)
        files, results["requests"], targets = _requests(models, work)
        main = {k: files[BENCH[k].main.key] for k in models}  # each model's main request
        results["preprocess"] = runner.case("preprocessing", lambda: [
            *(row for k, m in models.items() for row in BENCH[k].preprocess(m, main[k].read_bytes(), plan.min_time_s)),
            *cases.encoding(plan.encode_mb, plan.python_encode_mb, plan.min_time_s)]) or []
        # A quiet-machine reference before any server starts (results.json); the ceiling uses the rounds' own.
        reference = (runner.case(f"pipeline {m.kind}", lambda k=k, m=m: cases.pipeline(
            m, main[k].read_bytes(), plan.pipeline_seconds, BENCH[k].one_request)) for k, m in models.items())
        results["pipeline"] = [p for p in reference if p]
        _served(runner, results, models, targets, files, plan, work)
        for k, m in models.items():  # with no server up (genome scale: the commands and onnxruntime alone)
            _own(runner, results, BENCH[k].after, Context(m, plan, work, main[k]))
        results["efficiency"] = _efficiency(results)
        results["v2"] = v2_bench.ratios(results)
        results["grpc_v2"] = grpc_bench.ratios(results)
    results["timings"] = runner.case("timings", lambda: timings.measure(1 if plan.quick else 5)) or []
    results["runtime"] = [row for k, m in models.items() for row in runner.case(
        f"runtime {m.kind}", lambda k=k, m=m: cases.runtime(m, plan.runtime_batches, plan.min_time_s, BENCH[k].rows,
                                                             tensorrt)) or []]
    results["duration_s"] = round(time.perf_counter() - started, 1)
    results["loadavg_end"] = machine.loadavg()
    report.write(results, out)
    return results


def _requests(models: dict[str, Model], work: Path) -> tuple[dict[str, Path], dict, dict[str, load.Target]]:
    """Each model's request files, what they are (None for a kind not run) and wrk targets: main requests first."""
    files: dict[str, Path] = {}
    described: dict[str, str | None] = dict.fromkeys(REQUESTS)
    mains: dict[str, load.Target] = {}
    others: dict[str, load.Target] = {}
    for k, m in models.items():
        for r in BENCH[k].requests:
            files[r.key] = r.make(m, work)
            described[r.key] = r.describe(m, files[r.key])
            target = load.target(m, files[r.key], BENCH[k].endpoints, r.label(m))
            (mains if r is BENCH[k].main else others)[r.key] = target
    return files, described, {**mains, **others}


def _own(runner: Runner, results: dict, own: tuple[Case, ...], context: Context) -> None:
    """A kind's own cases, each into its results key (``empty`` when it fails)."""
    for case in own:
        results[case.key] = runner.case(case.name, lambda case=case: case.run(context)) or case.empty()


def _sweep(key: str, concurrency: tuple[int, ...]) -> tuple[int, ...]:
    """The concurrencies request ``key`` is swept at: those of the run's it keeps, else the run's lowest."""
    only = REQUESTS[key].concurrency
    return (tuple(c for c in concurrency if c in only) or concurrency[:1]) if only else concurrency


def _served(runner: Runner, results: dict, models: dict[str, Model], targets: dict[str, load.Target],
            files: dict[str, Path], plan: Plan, work: Path) -> None:
    """Service, unbatched service and floor up together; every comparison interleaved in rounds.

    The service starts first on a quiet machine (its start-up is the first-start figure), the
    unbatched one second; an idle server costs the others nothing measurable.
    """
    env = {"BIOMED_MODELS": ",".join(m.ref for m in models.values()), "BIOMED_API_TOKEN": "", "BIOMED_WORKERS": "1"}
    dicom_port = free_port()  # the service alone receives DICOM (the other servers would share the port)
    own_env: dict[str, str] = {}
    for k in models:
        own_env.update(BENCH[k].service_env(work, dicom_port))
    grpc_port = free_port()  # the service alone serves v2 over gRPC
    service = Server("service.service:Biomed", {**env, **own_env, "BIOMED_GRPC_PORT": str(grpc_port),
                                                "BIOMED_GRPC_HOST": "127.0.0.1"}, work / "service.log")
    unbatched = Server("service.service:Biomed", {**env, **load.UNBATCHED_ENV}, work / "unbatched.log")
    floor = Server("bench.floor_service:Floor", {}, work / "floor.log")
    startup: dict = {}
    try:
        if runner.case("service start", service.start) is None:
            return
        startup.update(first_start_s=service.startup_s, rss_ready_mb=service.rss_mb())
        unbatched_up = runner.case("unbatched service start", unbatched.start) is not None
        if unbatched_up:
            startup["second_start_s"] = unbatched.startup_s
        floor_up = runner.case("floor start", floor.start) is not None
        if floor_up:
            startup["floor_rss_mb"] = floor.rss_mb()
        for key, t in targets.items():
            loop = cases.pipeline_runner(t.model, files[key].read_bytes(), BENCH[t.model.kind].one_request)
            v2_body, v2_header = v2_bench.body(t.model, files[key], work / f"v2_{key}.bin",
                                               BENCH[t.model.kind].v2_element)
            framed = grpc_bench.body(t.model, files[key], work / f"grpc_{key}.bin", BENCH[t.model.kind].v2_element)
            v2_only = tuple(c for c in plan.concurrency if c in v2_bench.CONCURRENCY)
            arms = [load.Arm("service", service, t.path),
                    load.Arm("v2_binary", service, f"/v2/models/{t.model.name}/infer", script="v2.lua",
                             env=v2_bench.env(v2_body, v2_header), only=v2_only),
                    load.Arm("grpc", service, grpc_bench.PATH, only=v2_only, run=lambda c, secs, framed=framed:
                             grpc_bench.run(service, grpc_port, framed, c, secs)),
                    load.Arm("pipeline_rounds", local=lambda secs, loop=loop: loop(secs)["rps"])]
            if floor_up:
                arms += [load.Arm("floor_mounted", floor, t.mounted), load.Arm("floor_api", floor, t.api)]
            sweep = _sweep(key, plan.concurrency)
            rows = runner.case(f"service and floor {t.name}", lambda t=t, arms=arms, sweep=sweep: load.interleaved(
                arms, t, sweep, plan.wrk_seconds, plan.rounds, lambda arm: grpc_bench.server_cpu(arm.server))) or {}
            for series_key, series in rows.items():
                results.setdefault(series_key, []).extend(series)
        for k, m in models.items():  # each kind's own cases with the service up
            context = Context(m, plan, work, files[BENCH[k].main.key], service, dicom_port)
            _own(runner, results, BENCH[k].served, context)
        if unbatched_up:
            for t in targets.values():
                results.setdefault("batching", []).extend(runner.case(
                    f"batching on/off {t.model.kind}", lambda t=t: load.batching(
                        service, unbatched, t, plan.batching_concurrency, plan.wrk_seconds, plan.rounds)) or [])
        startup["rss_loaded_mb"] = service.rss_mb()
    finally:
        for server in (floor, unbatched, service):
            server.stop()
        startup.setdefault("floor_rss_mb", float("nan"))
        results["startup"] = startup
    by = {(r["model"], r["batching"]): r["rps"] for r in results.get("batching", [])}
    results["batching_ratio"] = {m.name: by[(m.name, "on")] / by[(m.name, "off")] for m in models.values()
                                 if (m.name, "on") in by and (m.name, "off") in by}


def _efficiency(results: dict) -> list[dict]:
    """Service against the ceiling at each concurrency (pipeline and floor measured in the same rounds)."""
    key = lambda r: (r["model"], r["concurrency"])  # noqa: E731
    pipeline, floors, apis = ({key(r): r for r in results.get(k, [])}
                              for k in ("pipeline_rounds", "floor_mounted", "floor_api"))
    rows = []
    for service in results.get("service", []):
        p, floor, api = pipeline.get(key(service)), floors.get(key(service)), apis.get(key(service))
        if p is None or floor is None:
            continue
        ceiling = load.ceiling(p["rps"], floor["rps"])
        rows.append({"model": service["model"], "concurrency": service["concurrency"], "service_rps": service["rps"],
                     "service_per_round": service.get("per_round", ""),
                     "p50_ms": service["p50_ms"], "p99_ms": service["p99_ms"], "pipeline_rps": p["rps"],
                     "floor_rps": floor["rps"], "floor_api_rps": api["rps"] if api else float("nan"),
                     "ceiling_rps": ceiling, "of_ceiling": service["rps"] / ceiling,
                     "overhead_ms": load.overhead_ms(service["rps"], p["rps"], floor["rps"]),
                     "non_2xx": service["non_2xx"]})
    return rows
