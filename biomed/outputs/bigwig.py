"""Model tracks over genome regions as bigWig files, one per task (pyBigWig): ``biomed predict-regions``.

``Tracks`` writes each task's values bin by bin as they come (the regions in order, so pyBigWig
takes them without sorting), under ``<task>.bw.tmp`` until ``close(ok=True)`` renames them into
place, and keeps each task's mean (weighted by bases) and maximum for the run's summary. The
tracks open in IGV or the UCSC browser.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np


def track_name(task: str) -> str:
    """A task name as a file name: characters outside ``[0-9A-Za-z_.-]`` become ``_``."""
    return re.sub(r"[^0-9A-Za-z_.-]", "_", task) or "_"


class Tracks:
    """One bigWig per task, written in order, and each task's summary."""

    def __init__(self, out: Path, labels: list[str], contigs: dict[str, int]) -> None:
        import pyBigWig

        out.mkdir(parents=True, exist_ok=True)
        self.labels = labels
        self.paths = [out / f"{track_name(t)}.bw" for t in labels]
        self.tmp = [p.with_name(p.name + ".tmp") for p in self.paths]
        self.files = []
        for path in self.tmp:
            bw = pyBigWig.open(str(path), "w")
            bw.addHeader(list(contigs.items()), maxZooms=10)
            self.files.append(bw)
        self.best = [(-np.inf, "", 0, 0) for _ in labels]
        self.sums = np.zeros(len(labels))
        self.bases = 0

    def add(self, segments: list, values: np.ndarray) -> None:
        """Write ``values`` (bins, tasks): the bins of each ``(chrom, starts, ends)`` segment in turn, 0-based."""
        row = 0
        for chrom, starts, ends in segments:
            k = len(starts)
            block = values[row : row + k]
            chroms, s, e = [chrom] * k, starts.tolist(), ends.tolist()
            for t, bw in enumerate(self.files):
                bw.addEntries(chroms, s, ends=e, values=block[:, t].astype(float).tolist())
            widths = (ends - starts).astype(float)
            self.sums += (block * widths[:, None]).sum(axis=0)
            self.bases += int(widths.sum())
            top = block.argmax(axis=0)
            for t in range(len(self.labels)):
                if block[top[t], t] > self.best[t][0]:
                    self.best[t] = (float(block[top[t], t]), chrom, int(starts[top[t]]), int(ends[top[t]]))
            row += k

    def close(self, ok: bool) -> None:
        """Close the files; rename them into place when ``ok``, else remove them (no partial track is left)."""
        for bw in self.files:
            bw.close()
        for tmp, path in zip(self.tmp, self.paths):
            if ok:
                os.replace(tmp, path)
            else:
                tmp.unlink(missing_ok=True)

    def summary(self) -> list[dict]:
        """Per task: its track's file name, the mean over the bases written and where its maximum is (1-based)."""
        return [{"task": t, "track": p.name, "mean": float(self.sums[i] / max(self.bases, 1)),
                 "max": self.best[i][0], "max_at": f"{self.best[i][1]}:{self.best[i][2] + 1}-{self.best[i][3]}"}
                for i, (t, p) in enumerate(zip(self.labels, self.paths))]
