"""Regions of a genome tiled into model windows, torch-free: the core of ``biomed predict-regions``.

A BED of regions is read, checked against the reference, clipped to the contigs, sorted in
the reference's contig order and merged where regions overlap (a track has one value per
base). Contig names of either convention match (``1`` or ``chr1``: ``biomed.genome``) and keep
the BED's spelling; a region on a contig the reference lacks is not tiled but kept in
``RegionSet.missing`` (the command lists them in a side file), never dropped unsaid. Each region is cut into bins of ``step`` bases, the last one shorter; a bin's value
is the model's prediction for the window of ``L`` bases centred on the bin (the bin's centre
at index ``L // 2``, N past a contig end). Windows are read with the same block reader as
variant contexts (``biomed/variant_stream.py``) and handed out in tiles of up to ``rows``
bins, across region boundaries, so many small regions still make large inference batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from biomed.genome import GenomeError, Reference, open_text
from biomed.variant_stream import ContextReader


@dataclass(frozen=True)
class Region:
    chrom: str
    start: int  # 0-based
    end: int  # exclusive


@dataclass(frozen=True)
class RegionSet:
    regions: list[Region]  # sorted (reference contig order, start), non-overlapping; chrom as the BED names it
    given: int  # BED lines read
    merged: int  # regions folded into an overlapping one
    clipped: int  # regions cut at a contig end
    missing: tuple[tuple[int, str], ...] = ()  # (line number, line) of each region on a contig the reference lacks

    @property
    def bases(self) -> int:
        return sum(r.end - r.start for r in self.regions)


def read_regions(path: str | Path, reference: Reference) -> RegionSet:
    """A BED file's regions (chrom, start, end; more columns are ignored), ready to tile.

    Raises:
        GenomeError: a line that is not BED, or no region on the reference's contigs.
    """
    name = Path(path).name
    raw: list[Region] = []
    missing: list[tuple[int, str]] = []
    clipped = 0
    with open_text(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            fields = line.split()
            if len(fields) < 3:
                raise GenomeError(f"{name}: line {number} has {len(fields)} columns; a BED line needs chrom start end")
            chrom = fields[0]
            try:
                start, end = int(fields[1]), int(fields[2])
            except ValueError:
                raise GenomeError(f"{name}: line {number}: start and end must be integers") from None
            if start < 0 or end <= start:
                raise GenomeError(f"{name}: line {number}: needs 0 <= start < end (0-based, half-open); got {start} {end}")
            contig = reference.name(chrom)
            if contig is None:
                missing.append((number, line.rstrip("\r\n")))
                continue
            size = reference.lengths[contig]
            if end > size:
                clipped += 1
                end = size
            if start < end:
                raw.append(Region(chrom, start, end))
    if not raw:
        lacking = f" ({len(missing)} on contigs it lacks, e.g. {missing[0][1].split()[0]!r})" if missing else ""
        raise GenomeError(f"{name} has no regions inside the reference's contigs{lacking}")
    order = {chrom: i for i, chrom in enumerate(reference.lengths)}
    raw.sort(key=lambda r: (order[reference.check(r.chrom)], r.start, r.end))
    merged: list[Region] = []
    for r in raw:
        last = merged[-1] if merged else None
        if last is not None and last.chrom == r.chrom and r.start < last.end:
            merged[-1] = Region(r.chrom, last.start, max(last.end, r.end))
        else:
            merged.append(r)
    return RegionSet(merged, len(raw), len(raw) - len(merged), clipped, tuple(missing))


def bin_count(regions: list[Region], step: int) -> int:
    return sum(-(-(r.end - r.start) // step) for r in regions)


@dataclass
class Tile:
    """Bins of one or more regions and their windows: ``segments`` are (chrom, starts, ends) in order."""

    segments: list[tuple[str, np.ndarray, np.ndarray]]
    windows: np.ndarray  # (n, L) uint8, one per bin, in segment order

    def __len__(self) -> int:
        return len(self.windows)


def tiles(regions: list[Region], reader: ContextReader, length: int, step: int, rows: int) -> Iterator[Tile]:
    """The bins of every region and their centred windows, ``rows`` bins at most per tile."""
    if step < 1:
        raise ValueError(f"step must be at least 1; got {step}")
    segments: list[tuple[str, np.ndarray, np.ndarray]] = []
    windows: list[np.ndarray] = []
    held = 0
    for region in regions:
        count = -(-(region.end - region.start) // step)
        done = 0
        while done < count:
            take = min(rows - held, count - done)
            starts = region.start + step * np.arange(done, done + take, dtype=np.int64)
            ends = np.minimum(starts + step, region.end)
            segments.append((region.chrom, starts, ends))
            windows.append(reader.contexts(region.chrom, (starts + ends) // 2)[:, :length])
            done += take
            held += take
            if held == rows:
                yield Tile(segments, np.concatenate(windows))
                segments, windows, held = [], [], 0
    if held:
        yield Tile(segments, np.concatenate(windows))
