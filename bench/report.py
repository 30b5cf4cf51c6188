"""results.json, results.md (Markdown tables) and the PNG plots of a benchmark run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

from bench.kinds import BENCH


def _fmt(v: Any, digits: int = 1) -> str:
    if isinstance(v, bool) or v is None:
        return {True: "yes", False: "**no**", None: "–"}[v]
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if v and abs(v) < 0.5 * 10**-digits:
            return f"{v:.1e}"
        return f"{v:,.{digits}f}" if abs(v) < 1e5 else f"{v:,.0f}"
    return str(v)


def table(rows: Iterable[dict], columns: list[tuple[str, str, int]]) -> str:
    """A Markdown table of ``rows``; columns are (key, header, decimals)."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---:" if d >= 0 else "---" for _, _, d in columns) + "|"
    body = ["| " + " | ".join(_fmt(r.get(k), max(d, 0)) for k, _, d in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def targets(results: dict) -> list[dict]:
    """The issue's targets against what this run measured (``met`` is None when not measured)."""
    out = []

    def add(name: str, goal: str, value: float | None, ok: Any) -> None:
        out.append({"target": name, "goal": goal, "measured": value, "met": None if value is None else bool(ok(value))})

    for model in {r["model"] for r in results.get("runtime", [])}:
        rows = [r for r in results["runtime"] if r["model"] == model and r["engine"] == "onnxruntime-cpu"]
        at32 = next((r["vs_torch_cpu"] for r in rows if r["batch"] == 32), None)
        add(f"onnxruntime ÷ PyTorch eager, batch 32, {model}", "≥ 1.5", at32, lambda v: v >= 1.5)
    for kind, model in results.get("models", {}).items():  # each kind's own (bench.kinds)
        for goal in BENCH[kind].goals(results, model):
            add(*goal)
    enc = next((r for r in results.get("preprocess", []) if r["impl"].startswith("biomed dna")), None)
    add(f"DNA encoding, {enc['bases'] / 1e6:g} Mb sequence, MB/s" if enc else "DNA encoding, MB/s", "≥ 200",
        enc["per_s"] if enc else None, lambda v: v >= 200)
    start = results.get("startup", {}).get("first_start_s")
    add("start to /readyz 200, both models, s", "≤ 10", start, lambda v: v <= 10)
    ism = results.get("ism", {}).get("median_s")
    add("ISM of 1 kb through /explain_dna, s", "< 2", ism, lambda v: v < 2)
    explained = results.get("explain_image", {}).get("json_median_s")
    add("/explain_image of a 512x512 CT slice (default patch and stride, JSON), s", "< 1", explained, lambda v: v < 1)
    for model in sorted({r["model"] for r in results.get("v2", [])}):
        rows = [r for r in results["v2"] if r["model"] == model]
        worst = min(rows, key=lambda r: r["v2_of_native"])
        add(f"v2 binary ÷ native req/s, {model} (worst of conc. {', '.join(str(r['concurrency']) for r in rows)}: "
            f"{worst['concurrency']})", "≥ 0.9", worst["v2_of_native"], lambda v: v >= 0.9)
    for model in sorted({r["model"] for r in results.get("grpc_v2", [])}):
        rows = [r for r in results["grpc_v2"] if r["model"] == model]
        worst = min(rows, key=lambda r: r["grpc_of_rest"])
        add(f"v2 gRPC ÷ v2 REST binary req/s, {model} (worst of conc. "
            f"{', '.join(str(r['concurrency']) for r in rows)}: {worst['concurrency']})", "≥ 0.9", worst["grpc_of_rest"],
            lambda v: v >= 0.9)
    for r in results.get("genome", []):
        if r["case"] == "score-variants" and r["items"] >= 100_000:  # the goal's size (quick runs: start-up dominates)
            add(f"score-variants ÷ onnxruntime alone, windows/s, {r['items']:,} variants of a synthetic genome",
                "≥ 0.7", r["ratio"], lambda v: v >= 0.7)
    for r in results.get("large", []):
        add(f"large request ÷ onnxruntime alone, rows/s: {r['case']}", "≥ 0.7", r["ratio"], lambda v: v >= 0.7)
    runs = [r for k in ("service", "floor_mounted", "floor_api", "batching", "v2_binary", "grpc")
            for r in results.get(k, [])]
    add("non-2xx responses (gRPC: refused calls) over every load run", "0", float(sum(r["non_2xx"] for r in runs)) if runs else None,
        lambda v: v == 0)
    return out


def markdown(results: dict) -> str:
    m = results["machine"]
    v = ", ".join(f"{k} {val}" for k, val in m["versions"].items())
    gpu = "; ".join(m["gpus"]) or "none"
    lines = [f"# biomed bench ({results['mode']} mode, {results['started']})", "",
             f"- CPU: {m['cpu']}, {m['cores']} cores usable ({m['logical_cpus']} logical), {m['memory_gib']} GiB memory",
             f"- GPU: {gpu}; onnxruntime providers built in: {', '.join(m['onnxruntime_providers'])}",
             f"- {m['os']}; {v}",
             f"- load average (1 min) at the start {m.get('loadavg', '–')}, at the end {results.get('loadavg_end', '–')}"
             " (other work on the machine shows up here)",
             f"- models: {', '.join(mm['ref'] for mm in results['models'].values())}; each point "
             f"{results['settings'].get('rounds', 1)} wrk runs of {results['settings']['wrk_seconds']} s, the arms of "
             "a comparison (service and floors; batching on and off) taking turns; all figures from this one run", ""]
    sections = [
        ("Targets", "targets", [("target", "target", -1), ("goal", "goal", -1), ("measured", "measured", 2),
                                ("met", "met", -1)]),
        ("1. Runtime: onnxruntime vs PyTorch eager (same weights)", "runtime",
         [("model", "model", -1), ("engine", "engine", -1), ("batch", "batch", 0), ("ms_per_batch", "ms/batch", 2),
          ("samples_per_s", "samples/s", 0), ("vs_torch_cpu", "÷ torch CPU", 2), ("max_abs_diff", "max |Δ|", 2)]),
        ("2. Service efficiency (wrk; ceiling = 1/(1/pipeline + 1/floor))", "efficiency",
         [("model", "model", -1), ("concurrency", "conc.", 0), ("service_rps", "service req/s", 1),
          ("service_per_round", "req/s per round", -1), ("p50_ms", "p50 ms", 1), ("p99_ms", "p99 ms", 1),
          ("pipeline_rps", "pipeline req/s", 1),
          ("floor_rps", "floor req/s (mounted)", 0), ("floor_api_rps", "floor req/s (@api)", 0),
          ("ceiling_rps", "ceiling req/s", 1), ("of_ceiling", "service ÷ ceiling", 2),
          ("overhead_ms", "overhead ms/req", 2), ("non_2xx", "non-2xx", 0)]),
        ("3. Adaptive batching", "batching",
         [("model", "model", -1), ("batching", "batching", -1), ("concurrency", "conc.", 0), ("rps", "req/s", 1),
          ("per_round", "req/s per round", -1), ("p50_ms", "p50 ms", 1), ("p99_ms", "p99 ms", 1),
          ("rows_per_call", "rows/inference call", 1),
          ("non_2xx", "non-2xx", 0)]),
        ("2b. Open Inference Protocol v2, binary, beside the native endpoint (same work, same rounds)", "v2",
         [("model", "model", -1), ("concurrency", "conc.", 0), ("native_path", "native endpoint", -1),
          ("native_rps", "native req/s", 1), ("v2_rps", "v2 binary req/s", 1), ("v2_per_round", "v2 req/s per round", -1),
          ("v2_p50_ms", "v2 p50 ms", 1), ("v2_p99_ms", "v2 p99 ms", 1), ("native_p99_ms", "native p99 ms", 1),
          ("v2_of_native", "v2 ÷ native", 2), ("non_2xx", "non-2xx", 0)]),
        ("2c. Open Inference Protocol v2 over gRPC beside v2 REST binary (h2load, one connection, conc. = streams; "
         "same work, same rounds; cpu ms = the server's CPU time per request)", "grpc_v2",
         [("model", "model", -1), ("concurrency", "conc.", 0), ("rest_rps", "REST req/s", 1),
          ("grpc_rps", "gRPC req/s", 1), ("grpc_per_round", "gRPC req/s per round", -1),
          ("rest_p50_ms", "REST p50 ms", 2), ("grpc_p50_ms", "gRPC p50 ms", 2), ("rest_p99_ms", "REST p99 ms", 1),
          ("grpc_p99_ms", "gRPC p99 ms", 1), ("rest_cpu_ms", "REST cpu ms/req", 2), ("grpc_cpu_ms", "gRPC cpu ms/req", 2),
          ("grpc_of_rest", "gRPC ÷ REST", 2), ("non_2xx", "non-2xx", 0)]),
        ("4. Preprocessing", "preprocess",
         [("case", "case", -1), ("impl", "implementation", -1), ("ms", "ms/image", 2), ("per_s", "per s", 1),
          ("unit", "unit", -1), ("vs_naive", "÷ naive", 1)]),
    ]
    for title, key, columns in sections:
        rows = results.get(key)
        if rows:
            lines += [f"## {title}", "", table(rows, columns), ""]
        if key == "batching" and results.get("batching_ratio"):
            lines += ["On ÷ off: " + ", ".join(f"{k} {r:.2f}x" for k, r in results["batching_ratio"].items()), ""]
    if results.get("ism"):
        i = results["ism"]
        lines += ["## 5. In-silico mutagenesis", "", f"`/explain_dna`, {i['bases']} bases ({i['scores_rows']} rows of "
                  f"scores): median {i['median_s']:.3f} s over {i['repeats']} (min {i['min_s']:.3f} s).", ""]
    if results.get("large"):
        lines += ["## 5e. Large DNA requests: the service against onnxruntime alone on the same rows", "",
                  table(results["large"], [
                      ("case", "request", -1), ("rows", "model rows", 0), ("service_s", "service s", 3),
                      ("onnxruntime_s", "onnxruntime alone s", 3), ("service_rows_per_s", "service rows/s", 0),
                      ("onnxruntime_rows_per_s", "onnxruntime rows/s", 0), ("ratio", "service ÷ onnxruntime", 2),
                      ("per_round", "per round", -1)]), "",
                  "Each request sent whole, one at a time, from the first byte sent to the last received (JSON "
                  "parsing, encoding, tiling, batching, the response); onnxruntime alone runs as many rows in "
                  "1,024-row calls; the two take turns, the best of each kept.", ""]
    if results.get("explain_image"):
        e = results["explain_image"]
        lines += ["## 5b. Image explanations (occlusion)", "",
                  f"`/explain_image` on the {e['image']}, patch {e.get('patch')} and stride {e.get('stride')} "
                  f"({e.get('model_rows')} model rows), median of {e['repeats']} sent one at a time:", "",
                  table([e], [("json_median_s", "JSON map, s", 3), ("png_median_s", "PNG overlay, s", 3),
                              ("dicom_median_s", "DICOM object, s", 3), ("json_min_s", "JSON min, s", 3)]), ""]
    if results.get("dicom"):
        lines += ["## 5d. DICOM network: instances per second", "",
                  table(results["dicom"], [("door", "door", -1), ("instances", "instances per round", 0),
                                           ("rounds", "rounds", 0), ("per_s", "instances/s", 1),
                                           ("per_round", "per round", -1)]), "",
                  "512x512 CT slices with fresh UIDs each round. Through C-STORE and STOW-RS each instance is "
                  "classified and its SR built (highdicom) and written to the spool (fsync) before it is answered "
                  "(an SR per instance: BIOMED_DICOM_GROUP_BY=instance); delivery to a PACS is not included (the "
                  "destination is down, the forwarder backs off).", ""]
    if results.get("dicom_series"):
        lines += ["## 5e. DICOM network: one SR per series", "",
                  table(results["dicom_series"], [
                      ("door", "door", -1), ("instances", "slices per series", 0), ("rounds", "rounds", 0),
                      ("per_s", "instances/s", 1), ("per_round", "per round", -1), ("quiet_s", "quiet period, s", 1),
                      ("sr_after_s", "last instance to SR at the PACS, s", 2), ("sr_per_round", "per round", -1),
                      ("pacs", "PACS", -1), ("load", "load average, start and end", -1)]), "",
                  "A fresh series of 512x512 CT slices each round, on a server of its own (one worker, grouping by "
                  "series): each instance classified and on disk in its group (fsync) before it is answered; the "
                  "series' one SR made after the quiet period and delivered to the PACS by C-STORE.", ""]
    if results.get("genome"):
        lines += ["## 5c. Genome scale: the commands against onnxruntime alone on the same windows", "",
                  table(results["genome"], [
                      ("case", "command", -1), ("model", "model", -1), ("items", "items", 0), ("unit", "of", -1),
                      ("windows", "model windows", 0), ("command_s", "command s", 2), ("onnxruntime_s", "onnxruntime s", 2),
                      ("command_wps", "command windows/s", 0), ("onnxruntime_wps", "onnxruntime windows/s", 0),
                      ("ratio", "command ÷ onnxruntime", 2), ("per_round", "per round", -1)]), "",
                  "The command is timed whole (a subprocess: start-up, reading the bgzipped VCF or the BED and the "
                  "reference, windows, onnxruntime, writing the VCF with its index or the bigWigs); onnxruntime "
                  "alone runs the same rows, prebuilt, in the same 1,024-row calls, the two taking turns.", ""]
    if results.get("startup"):
        s = results["startup"]
        lines += ["## 6. Start-up and memory", "", table([s], [
            ("first_start_s", "first start to /readyz 200, s", 2), ("second_start_s", "second start, s", 2),
            ("rss_ready_mb", "RSS at ready, MiB", 0), ("rss_loaded_mb", "RSS after the load, MiB", 0),
            ("floor_rss_mb", "floor service RSS, MiB", 0)]), "",
            "RSS is summed over the server's process tree (bentoml serve, its API server and worker).", ""]
    if results.get("timings"):
        lines += ["## 7. Refusals and heavy inputs (bench/timings.py)", "",
                  table(results["timings"], [("what", "timing", -1), ("seconds", "best, s", 3), ("goal_s", "goal, s", 1),
                                             ("met", "met", -1)]), "",
                  "In-process, one call at a time, the best of the runs; the test suite checks what these inputs "
                  "give, this table how long they take.", ""]
    if results.get("errors"):
        lines += ["## Not measured", ""] + [f"- {e}" for e in results["errors"]] + [""]
    return "\n".join(lines)


def plots(results: dict, out: Path) -> list[str]:
    """throughput.png and latency_p99.png: one panel per model, service and floor against concurrency."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    eff = results.get("efficiency", [])
    models = sorted({r["model"] for r in eff})
    if not models:
        return []
    written = []
    for key, ylabel, name in (("rps", "requests/s", "throughput.png"), ("p99_ms", "p99 latency, ms", "latency_p99.png")):
        fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
        for ax, model in zip(axes[0], models):
            for series, label in (("service", "biomed service"), ("floor_mounted", "floor (mounted Starlette)"),
                                  ("floor_api", "floor (@bentoml.api)")):
                rows = [r for r in results.get(series, []) if r["model"] == model]
                if rows:
                    ax.plot([r["concurrency"] for r in rows], [r[key] for r in rows], marker="o", label=label)
            if key == "rps":
                rows = [r for r in eff if r["model"] == model]
                ax.plot([r["concurrency"] for r in rows], [r["ceiling_rps"] for r in rows], "k--", label="ceiling")
                ax.axhline(rows[0]["pipeline_rps"], color="grey", linestyle=":", label="pipeline, plain loop")
            ax.set(xscale="log", yscale="log", xlabel="concurrent connections (wrk)", ylabel=ylabel, title=model)
            ax.set_xticks([r["concurrency"] for r in eff if r["model"] == model])
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.legend(fontsize=8, loc="best")
            ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results["targets"] = targets(results)
    results["plots"] = plots(results, out)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "results.md").write_text(markdown(results) + "".join(f"\n![{p}]({p})\n" for p in results["plots"]))
