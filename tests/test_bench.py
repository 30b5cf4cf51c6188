"""biomed bench: the wrk output parser, the ceiling arithmetic, FLOP counting, and a quick run end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import load, wrk
from bench.flops import count_flops, peak_for
from bench.report import table
from tests.tools import REPO, require_tool

WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:3000/predict_image
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    95.12ms   20.31ms 310.44ms   80.12%
    Req/Sec    84.02     15.77   120.00     70.00%
  Latency Distribution
     50%   91.30ms
     75%  101.02ms
     90%  118.40ms
     99%    1.21s
  1680 requests in 10.02s, 1.10MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:    167.66
Transfer/sec:    112.40KB
bench-status 200=1676 413=4
"""

PARSE_CASES = [
    # (output, expected fields)
    (WRK_OUTPUT, {"requests": 1680, "seconds": 10.02, "rps": 167.66, "p50_ms": 91.3, "p90_ms": 118.4,
                  "p99_ms": 1210.0, "socket_errors": 3, "wrk_non_2xx": 4, "non_2xx": 7,
                  "statuses": {"200": 1676, "413": 4}}),
    (WRK_OUTPUT.replace("  Socket errors: connect 0, read 1, write 0, timeout 2\n", "")
     .replace("  Non-2xx or 3xx responses: 4\n", "").replace("bench-status 200=1676 413=4\n", "bench-status 200=1680\n")
     .replace("91.30ms", "812.00us"),
     {"p50_ms": 0.812, "socket_errors": 0, "non_2xx": 0, "statuses": {"200": 1680}}),
    # without the Lua status line, wrk's own count (status > 399) is used
    (WRK_OUTPUT.replace("bench-status 200=1676 413=4\n", ""), {"statuses": {}, "non_2xx": 7}),
]


@pytest.mark.parametrize("output, expected", PARSE_CASES)
def test_wrk_parser(output: str, expected: dict) -> None:
    result = wrk.parse(output).to_dict()
    for key, value in expected.items():
        assert result[key] == (pytest.approx(value) if isinstance(value, float) else value), key


def test_wrk_parser_refuses_output_without_latency_distribution() -> None:
    with pytest.raises(ValueError, match="--latency"):
        wrk.parse(WRK_OUTPUT.replace("  Latency Distribution\n", "").replace("     99%    1.21s\n", "")
                  .replace("     50%   91.30ms\n", ""))


CEILING_CASES = [
    # (pipeline req/s, floor req/s, ceiling req/s)
    (100.0, 100.0, 50.0),
    (100.0, 900.0, 90.0),
    (1000.0, 1e9, 1000.0),
]


@pytest.mark.parametrize("pipeline, floor, expected", CEILING_CASES)
def test_ceiling(pipeline: float, floor: float, expected: float) -> None:
    assert load.ceiling(pipeline, floor) == pytest.approx(expected, rel=1e-6)


def test_overhead_is_zero_at_the_ceiling_and_positive_below_it() -> None:
    c = load.ceiling(80.0, 400.0)
    assert load.overhead_ms(c, 80.0, 400.0) == pytest.approx(0.0, abs=1e-9)
    assert load.overhead_ms(c / 2, 80.0, 400.0) == pytest.approx(1000 / c, rel=1e-9)  # the time of one more request


def test_ceiling_refuses_zero_throughput() -> None:
    with pytest.raises(ValueError, match="positive"):
        load.ceiling(0.0, 100.0)


def test_rounds_combine_into_one_figure() -> None:
    runs = [wrk.parse(WRK_OUTPUT).to_dict(), {**wrk.parse(WRK_OUTPUT).to_dict(), "requests": 500, "seconds": 5.0,
                                              "p50_ms": 10.0, "p90_ms": 20.0, "p99_ms": 5000.0, "statuses": {"200": 500},
                                              "socket_errors": 0, "wrk_non_2xx": 0, "non_2xx": 0}]
    first = runs[0]
    both = load.combine(runs)
    assert both["requests"] == first["requests"] + 500 and both["seconds"] == pytest.approx(first["seconds"] + 5.0)
    assert both["rps"] == pytest.approx((first["requests"] + 500) / (first["seconds"] + 5.0))  # not the mean of rates
    assert both["p99_ms"] == 5000.0 and both["p50_ms"] == pytest.approx((first["p50_ms"] + 10.0) / 2)
    assert both["statuses"]["200"] == first["statuses"]["200"] + 500 and both["non_2xx"] == first["non_2xx"]
    assert both["rounds"] == 2


def test_flops_of_a_conv_gemm_and_lstm_graph() -> None:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((8, 1, 3, 3), np.float32), "w")  # 8 filters 3x3 on 1 channel
    g = numpy_helper.from_array(np.zeros((8 * 4 * 4, 5), np.float32), "g")
    lw = numpy_helper.from_array(np.zeros((2, 4 * 6, 5), np.float32), "lw")  # bidirectional, hidden 6
    lr = numpy_helper.from_array(np.zeros((2, 4 * 6, 6), np.float32), "lr")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),  # (N, 8, 4, 4)
             helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("Gemm", ["f", "g"], ["y"]),  # (N, 5)
             helper.make_node("Unsqueeze", ["y", "axes"], ["s"]),  # (1, N, 5): seq 1
             helper.make_node("LSTM", ["s", "lw", "lr"], ["h"], hidden_size=6, direction="bidirectional")]
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 4, 4])],
                              [helper.make_tensor_value_info("h", TensorProto.FLOAT, None)], [w, g, lw, lr, axes])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    conv, gemm, lstm = 2 * 8 * 16 * 9, 2 * 5 * 128, 2 * 1 * 2 * 24 * (5 + 6)
    assert count_flops(proto, batch=1) == conv + gemm + lstm
    assert count_flops(proto, batch=3) == 3 * (conv + gemm + lstm)


@pytest.mark.parametrize("name, fragment", [("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100 PCIe"),
                                            ("NVIDIA H200", "H200"), ("NVIDIA A100-SXM4-40GB", "A100"),
                                            ("NVIDIA L4", "L4"), ("Tesla T4", "T4")])
def test_gpu_peak_table(name: str, fragment: str) -> None:
    found = peak_for(name)
    assert found is not None and found[0] == fragment
    assert found[1]["fp16"] >= found[1]["tf32"] >= found[1]["fp32"] > 0


def test_markdown_table_formats_numbers() -> None:
    text = table([{"a": "x", "b": 1234.5678, "c": 3e-8, "d": float("nan"), "e": False}],
                 [("a", "A", -1), ("b", "B", 1), ("c", "C", 2), ("d", "D", 1), ("e", "E", -1)])
    assert text.splitlines()[2] == "| x | 1,234.6 | 3.0e-08 | – | **no** |"


def test_bench_gpu_script_help() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_gpu.py"), "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--dry-run" in proc.stdout


def test_bench_refuses_unknown_model_kind(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "cli", "bench", "--models", "protein", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "choose from: image, dna" in proc.stderr


@pytest.mark.slow
def test_bench_gpu_dry_run(demo_models: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_gpu.py"), "--dry-run", "--gpu", "NVIDIA H100",
                           "--batches", "1,4", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {r["engine"] for r in rows} == {"ort-cpu-fp32", "ort-cpu-fp32+iobinding", "ort-cpu-fp16",
                                           "ort-cpu-fp16+iobinding"}
    assert all(r["samples_per_s"] > 0 and 0 < r["of_ceiling"] < 1 for r in rows)


@pytest.mark.slow
def test_bench_quick_end_to_end(demo_models: dict[str, str], tmp_path: Path) -> None:
    require_tool("wrk", "apt-get install wrk")
    require_tool("h2load", "apt-get install nghttp2-client")
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "cli", "bench", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["errors"] == [], results["errors"]
    assert {"runtime", "preprocess", "pipeline", "service", "floor_mounted", "floor_api", "efficiency", "batching",
            "ism", "startup", "targets"} <= set(results)
    assert {r["concurrency"] for r in results["service"]} == {1, 4}
    assert {(r["model"], r["concurrency"]) for r in results["pipeline_rounds"]} == {
        (m, c) for m in ("demo-image", "demo-dna") for c in (1, 4)} | {("demo-image (128x128)", 1)}  # same rounds
    # the small upload (CT_small, 128x128) beside the 512x512 slice, and the large DNA requests against onnxruntime
    assert {r["model"] for r in results["efficiency"]} == {"demo-image", "demo-image (128x128)", "demo-dna"}
    large = {r["case"].split(",")[0]: r for r in results["large"]}
    assert set(large) == {"/predict_dna", "/score_variants", "/explain_dna"}
    assert all(r["rows"] > 0 and r["ratio"] > 0 for r in large.values())
    assert all(r["non_2xx"] == 0 and r["requests"] > 0 for r in results["service"] + results["batching"])
    assert {r["batching"] for r in results["batching"]} == {"on", "off"}
    # the v2 rows: binary v2 beside the native endpoint, same rounds (quick: concurrency 1 only)
    assert {(r["model"], r["concurrency"]) for r in results["v2"]} == {("demo-image", 1), ("demo-dna", 1),
                                                                       ("demo-image (128x128)", 1)}
    assert all(r["non_2xx"] == 0 and r["v2_rps"] > 0 and r["v2_of_native"] > 0 for r in results["v2"])
    assert all(r["endpoint"].startswith("/v2/models/") for r in results["v2_binary"])
    # gRPC beside REST v2 binary, same rounds: every call served (the server's refusals count as non-2xx), the cost
    assert {(r["model"], r["concurrency"]) for r in results["grpc_v2"]} == {(m, c) for m, c in (
        ("demo-image", 1), ("demo-dna", 1), ("demo-image (128x128)", 1))}
    assert all(r["non_2xx"] == 0 and r["grpc_rps"] > 0 and r["grpc_cpu_ms"] > 0 for r in results["grpc_v2"])
    off = {r["model"]: r["rows_per_call"] for r in results["batching"] if r["batching"] == "off"}
    # The unbatched server's own metrics: one image per call; a DNA request is two rows (both strands), at most two
    # per call, and the fair share may now and then split one request's two rows over two calls.
    assert off["demo-image"] == off["demo-image (128x128)"] == 1.0 and 1.9 <= off["demo-dna"] <= 2.0, off
    assert {r["engine"] for r in results["runtime"]} >= {"onnxruntime-cpu", "torch-eager-cpu"}
    assert results["startup"]["first_start_s"] > 0 and results["startup"]["rss_ready_mb"] > 50
    assert results["ism"]["bases"] == 1000 and results["ism"]["scores_rows"] == 1000
    genome = {r["case"]: r for r in results["genome"]}  # the genome-scale commands against onnxruntime alone
    assert set(genome) == {"score-variants", "predict-regions"} and genome["score-variants"]["items"] >= 2000
    assert all(r["windows"] > 0 and 0 < r["ratio"] for r in genome.values())
    explained = results["explain_image"]  # /explain_image of the 512x512 slice, every format (goal: < 1 s)
    assert explained["model_rows"] == 226 and all(explained[f"{f}_median_s"] > 0 for f in ("json", "png", "dicom"))
    dicom = {r["door"].split(":")[0]: r for r in results["dicom"]}  # instances/s through the DICOM doors
    assert {"C-STORE", "STOW-RS"} <= set(dicom) and all(r["per_s"] > 0 for r in dicom.values())
    [series] = results["dicom_series"]  # a series through C-STORE, one SR per series, timed to the PACS
    assert series["instances"] == 8 and series["per_s"] > 0 and series["quiet_s"] <= series["sr_after_s"] < 60
    assert any(t["target"].startswith("C-STORE, a 8-slice series") and t["measured"] for t in results["targets"])
    assert results["machine"]["cores"] >= 1 and "bentoml" in results["machine"]["versions"]
    # the timings the tests do not assert (bench/timings.py): every row measured, beside its goal
    assert len(results["timings"]) == 14 and all(r["seconds"] > 0 and r["goal_s"] > 0 for r in results["timings"])
    text = (out / "results.md").read_text()
    assert "## 7. Refusals and heavy inputs" in text and "## 2. Service efficiency" in text and "| demo-image |" in text and "Open Inference Protocol v2" in text
    for plot in ("throughput.png", "latency_p99.png"):
        assert (out / plot).read_bytes().startswith(b"\x89PNG")
