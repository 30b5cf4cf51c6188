"""Model tracks over genome regions as bigWig files, one per task: ``biomed predict-regions``.

``Tracks`` takes each task's values bin by bin as they come (the regions in order) and spools them to a
file beside the track (``<task>.bw.bins``, 24 bytes a bin: memory stays flat); ``close(ok=True)`` writes each
task's bigWig from its spool with pybigtools (the bigtools writer) and renames it into place, and it
keeps each task's mean (weighted by bases) and maximum for the run's summary. The tracks open in IGV
or the UCSC browser.

The zoom levels (what a browser draws zoomed out) are pybigtools': each zoom record's sum is that of
the bases it covers, the last record of a block included (pyBigWig's writer, used before, left that one
at 0, so a zoomed-out view dropped to 0 at contig ends); tests/test_regions.py decodes every zoom
record and compares its mean with the exact mean of the bins it covers (<= 1e-6).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

import numpy as np

SPOOL = np.dtype([("chrom", "<i4"), ("start", "<i8"), ("end", "<i8"), ("value", "<f4")])  # one bin of one task
READ_BINS = 1 << 16  # bins read back from a spool at a time


def track_name(task: str) -> str:
    """A task name as a file name: characters outside ``[0-9A-Za-z_.-]`` become ``_``."""
    return re.sub(r"[^0-9A-Za-z_.-]", "_", task) or "_"


class Tracks:
    """One bigWig per task, written in order, and each task's summary.

    Args:
        contigs: every contig's length, in the order the bins come (the reference's), under the names the tracks
            use.
    """

    def __init__(self, out: Path, labels: list[str], contigs: dict[str, int]) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.labels = labels
        self.contigs = dict(contigs)
        self._index = {name: i for i, name in enumerate(self.contigs)}
        self.paths = [out / f"{track_name(t)}.bw" for t in labels]
        self.tmp = [p.with_name(p.stem + ".partial.bw") for p in self.paths]  # pybigtools wants the .bw suffix
        self.spools = [p.with_name(p.name + ".bins") for p in self.paths]
        self.files = [path.open("wb") for path in self.spools]
        self.best = [(-np.inf, "", 0, 0) for _ in labels]
        self.sums = np.zeros(len(labels))
        self.bases = 0

    def add(self, segments: list, values: np.ndarray) -> None:
        """Take ``values`` (bins, tasks): the bins of each ``(chrom, starts, ends)`` segment in turn, 0-based."""
        row = 0
        for chrom, starts, ends in segments:
            k = len(starts)
            block = values[row : row + k]
            bins = np.empty(k, dtype=SPOOL)
            bins["chrom"], bins["start"], bins["end"] = self._index[chrom], starts, ends
            for t, spool in enumerate(self.files):
                bins["value"] = block[:, t]
                spool.write(bins.tobytes())
            widths = (ends - starts).astype(float)
            self.sums += (block * widths[:, None]).sum(axis=0)
            self.bases += int(widths.sum())
            top = block.argmax(axis=0)
            for t in range(len(self.labels)):
                if block[top[t], t] > self.best[t][0]:
                    self.best[t] = (float(block[top[t], t]), chrom, int(starts[top[t]]), int(ends[top[t]]))
            row += k

    def _entries(self, spool: Path) -> Iterator[tuple[str, int, int, float]]:
        names = list(self.contigs)
        with spool.open("rb") as f:
            while chunk := f.read(READ_BINS * SPOOL.itemsize):
                bins = np.frombuffer(chunk, dtype=SPOOL)
                yield from zip([names[i] for i in bins["chrom"].tolist()], bins["start"].tolist(),
                               bins["end"].tolist(), bins["value"].tolist())

    def close(self, ok: bool) -> None:
        """Write the bigWigs and rename them into place when ``ok``, else write none (no partial track is left);
        the spools go either way."""
        import pybigtools

        for f in self.files:
            f.close()
        try:
            for spool, tmp, path in zip(self.spools, self.tmp, self.paths):
                if ok:
                    writer = pybigtools.open(str(tmp), "w")
                    writer.write(self.contigs, self._entries(spool))
                    os.replace(tmp, path)
        finally:
            for spool, tmp in zip(self.spools, self.tmp):
                spool.unlink(missing_ok=True)
                tmp.unlink(missing_ok=True)

    def summary(self) -> list[dict]:
        """Per task: its track's file name, the mean over the bases written and where its maximum is (1-based)."""
        return [{"task": t, "track": p.name, "mean": float(self.sums[i] / max(self.bases, 1)),
                 "max": self.best[i][0], "max_at": f"{self.best[i][1]}:{self.best[i][2] + 1}-{self.best[i][3]}"}
                for i, (t, p) in enumerate(zip(self.labels, self.paths))]
