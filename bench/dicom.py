"""The DICOM network rows of ``biomed bench``: instances per second through C-STORE and STOW-RS, an SR per
instance and an SR per series.

``throughput``: the running service has its C-STORE receiver on (``dicom_env``), an SR per instance
(``BIOMED_DICOM_GROUP_BY=instance``, the behaviour before results per series) and a destination
that refuses connections, so every instance is received, classified (every frame, through the
batcher), its SR built (highdicom) and written to the spool (fsync) before it is answered;
delivering the SRs to a PACS is not part of the figure (the forwarder retries in the background,
backing off to an hour). Each round sends ``n`` copies of the bench's 512x512 CT slice with fresh
SOP Instance UIDs (an instance sent twice would skip its SR as a duplicate):

- C-STORE: dcmtk's ``storescu``, one association (its start-up included);
- STOW-RS: one ``POST /dicomweb/studies`` of the ``n`` instances;
- beside them, the same ``n`` files to ``/predict_image`` one at a time (JSON, no SR): the native door.

``series``: a server of its own, one worker, grouping by series (the default) with its SRs going to a
PACS (``bench/pacs.py``: Orthanc when installed); each round a fresh series of ``n`` slices (200 in
the full run) through ``storescu`` on one association: its instances per second (each on disk, in
its group, before it is answered), and the time from the last answer to the PACS holding the
series' one SR (the quiet period, then the SR's making and delivery).

Alone, on the demo model in the store: ``python -m bench.dicom [--n N] [--rounds R] [--series N]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.inputs import ct_slice, load_model
from bench.server import Server, free_port, http

CALLING = "BENCH"
CALLED = "BIOMED"


def dicom_env(work: Path, port: int) -> dict[str, str]:
    """The service's settings for this case: the receiver on ``port``, SRs spooled for a destination that is down."""
    return {"BIOMED_DICOM_PORT": str(port), "BIOMED_DICOM_HOST": "127.0.0.1", "BIOMED_DICOM_AET": CALLED,
            "BIOMED_DICOM_ALLOWED_AETS": CALLING, "BIOMED_DICOM_SPOOL": str(work / "dicom-spool"),
            "BIOMED_DICOM_DESTINATION": f"http://127.0.0.1:{free_port()}/dicom-web",
            "BIOMED_DICOM_RETRY_MAX_S": "3600", "BIOMED_DICOM_GROUP_BY": "instance"}


def _copies(ct: Path, out: Path, tag: str, n: int) -> list[Path]:
    """``n`` copies of ``ct`` as one new series of one new study (instance numbers 1 to n)."""
    import pydicom
    from pydicom.uid import generate_uid

    out.mkdir(parents=True, exist_ok=True)
    source = pydicom.dcmread(ct)
    study = generate_uid(entropy_srcs=["bench-dicom", tag, str(time.time_ns())])
    series = generate_uid(entropy_srcs=[study, "series"])
    files = []
    for i in range(n):
        source.StudyInstanceUID, source.SeriesInstanceUID, source.InstanceNumber = study, series, i + 1
        source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = generate_uid(
            entropy_srcs=[study, str(i)])
        path = out / f"{tag}-{i:04d}.dcm"
        source.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def _multipart(files: list[Path], boundary: str = "biomed-bench") -> bytes:
    body = io.BytesIO()
    for path in files:
        body.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        body.write(path.read_bytes())
        body.write(b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue()


def dcmtk_storescu() -> str:
    """dcmtk's ``storescu`` on PATH, never the venv's: pynetdicom installs a script of that name (other flags) into
    the venv's ``bin``, first on PATH once the venv is activated."""
    venvs = {Path(sys.prefix) / "bin"} if sys.prefix != sys.base_prefix else set()
    venvs |= {Path(os.environ["VIRTUAL_ENV"]) / "bin"} if os.environ.get("VIRTUAL_ENV") else set()
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if d and Path(d).resolve() not in {v.resolve() for v in venvs})
    found = shutil.which("storescu", path=path)
    if found is None:
        raise RuntimeError("dcmtk's storescu is not installed (apt-get install dcmtk)")
    return str(Path(found).resolve())


def throughput(server: Server, port: int, ct: Path, n: int, rounds: int, work: Path) -> list[dict]:
    """Instances per second through each door (module docstring); medians over ``rounds``."""
    timings: dict[str, list[float]] = {"C-STORE": [], "STOW-RS": [], "/predict_image": []}
    for r in range(rounds + 1):  # the first round warms up
        files = _copies(ct, work / "dicom-bench" / f"c{r}", f"c{r}", n)
        elapsed = _storescu(port, files)
        if r:
            timings["C-STORE"].append(n / elapsed)
        body = _multipart(_copies(ct, work / "dicom-bench" / f"s{r}", f"s{r}", n))
        started = time.perf_counter()
        status, answer = http("POST", server.url + "/dicomweb/studies", body,
                              'multipart/related; type="application/dicom"; boundary=biomed-bench', timeout=600)
        elapsed = time.perf_counter() - started
        if status != 200:
            raise RuntimeError(f"STOW-RS answered {status}: {answer[:200]!r}")
        if r:
            timings["STOW-RS"].append(n / elapsed)
        native = [p.read_bytes() for p in files]
        started = time.perf_counter()
        for data in native:
            status, answer = http("POST", server.url + "/predict_image", data, "application/dicom")
            if status != 200:
                raise RuntimeError(f"/predict_image answered {status}")
        if r:
            timings["/predict_image"].append(n / (time.perf_counter() - started))
        shutil.rmtree(work / "dicom-bench", ignore_errors=True)
    doors = {"C-STORE": "C-STORE: storescu, one association (SR built and spooled)",
             "STOW-RS": "STOW-RS: one request of all instances (SR built and spooled)",
             "/predict_image": "/predict_image, one at a time (JSON, no SR)"}
    return [{"door": doors[k], "instances": n, "rounds": rounds, "per_s": statistics.median(v),
             "per_round": ", ".join(f"{x:.1f}" for x in v)} for k, v in timings.items()]


def _storescu(port: int, files: list[Path]) -> float:
    """``files`` over one association; the seconds it took."""
    storescu = dcmtk_storescu()
    started = time.perf_counter()
    run = subprocess.run([storescu, "-R", "-aet", CALLING, "-aec", CALLED, "127.0.0.1", str(port), *map(str, files)],
                         capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        raise RuntimeError(f"storescu failed: {(run.stderr or run.stdout).strip().splitlines()[-1:]}")
    return time.perf_counter() - started


def series(model_ref: str, ct: Path, n: int, rounds: int, quiet_s: float, work: Path) -> list[dict]:
    """A series of ``n`` slices through C-STORE, one SR per series to a PACS (module docstring); medians over
    ``rounds`` after a warm-up round, with the machine's load averages."""
    from bench import pacs as pacs_bench

    pacs = pacs_bench.start(work / "pacs")
    port = free_port()
    env = {**dicom_env(work, port), "BIOMED_MODELS": model_ref, "BIOMED_API_TOKEN": "", "BIOMED_WORKERS": "1",
           "BIOMED_DICOM_DESTINATION": pacs.peer, "BIOMED_DICOM_SPOOL": str(work / "series-spool"),
           "BIOMED_DICOM_GROUP_BY": "series", "BIOMED_DICOM_GROUP_TIMEOUT_S": f"{quiet_s:g}",
           "BIOMED_DICOM_RETRY_MAX_S": "1"}
    server = Server("service.service:Biomed", env, work / "series-service.log")
    rates, delays, load = [], [], [os.getloadavg()[0]]
    try:
        server.start()
        for r in range(rounds + 1):  # the first round warms up
            files = _copies(ct, work / "series-bench" / f"r{r}", f"series{r}", n)
            expected = pacs.arrivals() + 1
            elapsed = _storescu(port, files)
            answered = time.monotonic()
            confirmed = pacs.wait(expected, quiet_s + 60)
            if r:
                rates.append(n / elapsed)
                delays.append(confirmed - answered)
            shutil.rmtree(work / "series-bench", ignore_errors=True)
        load.append(os.getloadavg()[0])
    finally:
        server.stop()
        pacs.stop()
    return [{"door": "C-STORE: storescu, one association, one SR per series", "instances": n, "rounds": rounds,
             "per_s": statistics.median(rates), "per_round": ", ".join(f"{x:.1f}" for x in rates),
             "quiet_s": quiet_s, "sr_after_s": statistics.median(delays), "sr_max_s": max(delays),
             "sr_per_round": ", ".join(f"{x:.2f}" for x in delays), "pacs": pacs.name,
             "load": ", ".join(f"{x:.1f}" for x in load)}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--series", type=int, default=0, help="also a series of this many slices, one SR per series")
    parser.add_argument("--quiet", type=float, default=10.0, help="the series' quiet period, seconds")
    args = parser.parse_args()
    model = load_model("demo-image", "image")
    with tempfile.TemporaryDirectory(prefix="biomed-bench-dicom-") as tmp:
        work = Path(tmp)
        port = free_port()
        server = Server("service.service:Biomed", {"BIOMED_MODELS": model.ref, "BIOMED_API_TOKEN": "",
                                                   "BIOMED_WORKERS": "1", **dicom_env(work, port)}, work / "service.log")
        try:
            server.start()
            print(json.dumps(throughput(server, port, ct_slice(work / "ct_512.dcm"), args.n, args.rounds, work),
                             indent=2))
        finally:
            server.stop()
        if args.series:
            print(json.dumps(series(model.ref, work / "ct_512.dcm", args.series, args.rounds, args.quiet, work),
                             indent=2))


if __name__ == "__main__":
    main()
