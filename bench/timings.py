"""Timings the test suite checks only for correctness: how fast hostile DICOM is refused, how long the heaviest
accepted files take, and two developer-facing helpers (demo DNA data, JASPAR matching).

Each row is the best of ``--repeats`` runs (after one warm-up) on this machine's CPU, beside its goal; a row over
its goal is reported, not raised: speed is a benchmark's question, not a test's (docs/benchmarks.md).

``python -m bench.timings [--repeats N] [--json OUT]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench import hostile_dicom as hostile

MB = 2**20
BOMBS = ("flat", "64MB", "undefined_sq", "defined_sq", "implicit_defined_sq", "items", "fragments", "meta",
         "no_preamble")


def best_of(fn: Callable[[], Any], repeats: int) -> float:
    """The fastest of ``repeats`` calls of ``fn`` after one warm-up call, in seconds."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def _refused(data: bytes) -> Callable[[], None]:
    from biomed.errors import TooLarge
    from biomed.preprocess.image import ImageSpec, Limits, load_image

    def run() -> None:
        try:
            load_image(data, ImageSpec(size=(32, 32)), Limits(max_bytes=96 * MB))
        except TooLarge:
            return
        raise AssertionError("the element bomb was not refused")

    return run


def _loaded(data: bytes, limits: Any = None) -> Callable[[], None]:
    from biomed.preprocess.image import ImageSpec, Limits, load_image

    return lambda: load_image(data, ImageSpec(size=(32, 32)), limits or Limits())


def cases() -> list[tuple[str, Callable[[], Any], float]]:
    """(what, the call, its goal in seconds)."""
    from pydicom.uid import RLELossless

    from biomed.jaspar import find_motif, match
    from biomed.preprocess.image import Limits
    from training.demo.dna_demo import generate_dna

    rle = hostile.encapsulated(RLELossless, [hostile.rle_frame([b"\x81\x07" * (4 * MB)])], 16, 16)
    ctcf = find_motif("CTCF").ppm
    query = np.hstack([ctcf, ctcf[:, :4]])  # 19 columns
    out = tempfile.mkdtemp(prefix="biomed-bench-timings-")
    rows: list[tuple[str, Callable[[], Any], float]] = [
        (f"refuse a 1,000,000-element DICOM bomb ({kind})", _refused(hostile.bomb(kind)), 1.0) for kind in BOMBS]
    rows += [
        ("load 99,000 elements (under the 100,000 cap)", _loaded(hostile.bomb("flat", n=99_000)), 1.5),
        ("load an Enhanced MR-like file of 256 frames", _loaded(hostile.enhanced(256)), 3.0),
        ("decode an RLE segment expanding to 512 MB (16x16 frame)", _loaded(rle, Limits(max_bytes=16 * MB)), 1.0),
        ("generate the demo DNA table (3,000 sequences)", lambda: generate_dna(Path(tempfile.mkdtemp(dir=out))), 2.0),
        ("match a 19-column PPM against JASPAR CORE", lambda: match(query), 0.5),
    ]
    return rows


def measure(repeats: int) -> list[dict]:
    """Every row: what, the best of ``repeats`` seconds, the goal and whether it is met."""
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for what, fn, goal in cases():
            seconds = best_of(fn, repeats)
            rows.append({"what": what, "seconds": round(seconds, 4), "goal_s": goal, "met": seconds < goal})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = measure(args.repeats)
    print(f"| timing | best of {args.repeats}, s | goal, s | met |\n|---|---:|---:|---|")
    for r in rows:
        print(f"| {r['what']} | {r['seconds']:.3f} | {r['goal_s']:g} | {'yes' if r['met'] else '**no**'} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
