"""Progress bars for long work (rich), quiet when not on a terminal or under CI."""

from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, Sequence, TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from biomed.flags import parse_flag

T = TypeVar("T")


def enabled() -> bool:
    """Bars show on a terminal; ``BIOMED_PROGRESS=0`` or a non-TTY turns them off."""
    try:
        return parse_flag(os.environ.get("BIOMED_PROGRESS"), sys.stderr.isatty(), "BIOMED_PROGRESS")
    except ValueError:
        return sys.stderr.isatty()  # a progress bar is not worth failing a run over


def make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled(),
        transient=False,
    )


def progress_bar(items: Sequence[T] | Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar."""
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)  # type: ignore[arg-type]
    with make_progress() as progress:
        task = progress.add_task(description, total=total, status="")
        for item in items:
            yield item
            progress.advance(task)
