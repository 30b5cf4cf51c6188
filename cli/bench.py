"""``biomed bench``: the benchmarks live in the checkout's top-level ``bench/`` (a developer tool, not installed)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]


def _bench_cli():  # type: ignore[no-untyped-def]
    """``bench.cli`` from the source checkout this package was installed from (editable install)."""
    if not (CHECKOUT / "bench" / "cli.py").is_file():
        raise LookupError("`biomed bench` runs from a source checkout (the benchmarks are in its bench/ folder); "
                          "clone the repository and `pip install -e .`")
    if str(CHECKOUT) not in sys.path:
        sys.path.insert(0, str(CHECKOUT))
    import bench.cli

    return bench.cli


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench``; its own flags are defined by ``bench.cli`` when the checkout has it."""
    try:
        _bench_cli().register(sub)
    except LookupError as err:
        p = sub.add_parser("bench", help="benchmarks (from a source checkout)")

        def unavailable(args: argparse.Namespace, reason: str = str(err)) -> int:
            raise LookupError(reason)

        p.set_defaults(func=unavailable)
