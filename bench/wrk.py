"""Running ``wrk`` with the Lua scripts in ``bench/wrk/`` and parsing what it prints."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent / "wrk"

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_COUNT = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: throughput, latency percentiles (ms), and what went wrong.

    ``statuses`` comes from the ``bench-status`` line of ``bench/wrk/common.lua``
    (every response by status); ``non_2xx`` counts every response outside 200-299
    plus wrk's socket errors, so a clean run has 0.
    """

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    p90_ms: float = float("nan")
    statuses: dict[str, int] = field(default_factory=dict)
    socket_errors: int = 0
    wrk_non_2xx: int = 0  # wrk's own "Non-2xx or 3xx responses" (status > 399)

    @property
    def non_2xx(self) -> int:
        if self.statuses:
            bad = sum(n for s, n in self.statuses.items() if not s.startswith("2"))
        else:
            bad = self.wrk_non_2xx
        return bad + self.socket_errors

    def to_dict(self) -> dict:
        return {**asdict(self), "non_2xx": self.non_2xx}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if m is None:
        raise ValueError(f"cannot read wrk duration {text!r}; expected a number with us, ms, s, m or h")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse(output: str) -> WrkResult:
    """Parse the text of ``wrk --latency`` (wrk 4.x) into a WrkResult.

    Raises:
        ValueError: when the summary line or the latency distribution is missing.
    """
    summary = re.search(r"^\s*(\d+) requests in ([\d.]+\w+),", output, re.M)
    rps = re.search(r"^Requests/sec:\s*([\d.]+)", output, re.M)
    pct = {int(p): _ms(v) for p, v in re.findall(r"^\s*(50|90|99)(?:\.0+)?%\s+([\d.]+\w+)", output, re.M)}
    if summary is None or rps is None or not {50, 99} <= set(pct):
        raise ValueError("wrk output lacks the summary or the --latency distribution:\n" + output[-2000:])
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    non2 = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    status_line = re.search(r"^bench-status(.*)$", output, re.M)
    statuses = {}
    if status_line:
        statuses = {s: int(n) for s, n in re.findall(r"(\d+)=(\d+)", status_line.group(1))}
    return WrkResult(
        requests=int(summary.group(1)), seconds=_ms(summary.group(2)) / 1e3, rps=float(rps.group(1)),
        p50_ms=pct[50], p99_ms=pct[99], p90_ms=pct.get(90, float("nan")), statuses=statuses,
        socket_errors=sum(int(g) for g in socket.groups()) if socket else 0,
        wrk_non_2xx=int(non2.group(1)) if non2 else 0,
    )


def wrk_path() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise FileNotFoundError("wrk is not installed; install it with: apt-get install wrk")
    return found


def run(url: str, script: str, connections: int, seconds: float, env: dict[str, str],
        timeout_s: float = 10.0) -> WrkResult:
    """One wrk run of ``seconds`` at ``connections`` open connections (one wrk thread per core, at most 2).

    Args:
        url: full URL including the endpoint path.
        script: ``image.lua`` or ``dna.lua`` (in ``bench/wrk/``).
        env: BENCH_* variables the script reads (BENCH_FILE, BENCH_BODY).
    """
    threads = max(1, min(connections, 2))
    duration = f"{max(seconds, 0.5):g}s"
    args = [wrk_path(), f"-t{threads}", f"-c{connections}", f"-d{duration}", f"--timeout={timeout_s:g}s",
            "--latency", "-s", str(SCRIPTS / script), url]
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, **env},
                          timeout=seconds + timeout_s + 30)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return parse(proc.stdout)
