"""The DICOM network rows of ``biomed bench``: instances per second through C-STORE and STOW-RS.

The running service has its C-STORE receiver on (``dicom_env``) and a destination that refuses
connections, so every instance is received, classified (every frame, through the batcher), its SR
built (highdicom) and written to the spool (fsync) before it is answered, as in production;
delivering the SRs to a PACS is not part of the figure (the forwarder retries in the background,
backing off to an hour). Each round sends ``n`` copies of the bench's 512x512 CT slice with fresh
SOP Instance UIDs (an instance sent twice would skip its SR as a duplicate):

- C-STORE: dcmtk's ``storescu``, one association (its start-up included);
- STOW-RS: one ``POST /dicomweb/studies`` of the ``n`` instances;
- beside them, the same ``n`` files to ``/predict_image`` one at a time (JSON, no SR): the native door.

Alone, on the demo model in the store: ``python -m bench.dicom [--n N] [--rounds R]``.
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
            "BIOMED_DICOM_RETRY_MAX_S": "3600"}


def _copies(ct: Path, out: Path, tag: str, n: int) -> list[Path]:
    import pydicom
    from pydicom.uid import generate_uid

    out.mkdir(parents=True, exist_ok=True)
    source = pydicom.dcmread(ct)
    study = generate_uid(entropy_srcs=["bench-dicom", tag, str(time.time_ns())])
    files = []
    for i in range(n):
        source.StudyInstanceUID = study
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
    storescu = dcmtk_storescu()
    timings: dict[str, list[float]] = {"C-STORE": [], "STOW-RS": [], "/predict_image": []}
    for r in range(rounds + 1):  # the first round warms up
        files = _copies(ct, work / "dicom-bench" / f"c{r}", f"c{r}", n)
        started = time.perf_counter()
        run = subprocess.run([storescu, "-R", "-aet", CALLING, "-aec", CALLED, "127.0.0.1", str(port),
                              *map(str, files)], capture_output=True, text=True, timeout=600)
        elapsed = time.perf_counter() - started
        if run.returncode != 0:
            raise RuntimeError(f"storescu failed: {(run.stderr or run.stdout).strip().splitlines()[-1:]}")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
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


if __name__ == "__main__":
    main()
