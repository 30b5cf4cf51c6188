"""First-layer convolution filters read back as motifs (DeepBind/Basset style).

For each filter, the windows of the input whose activation exceeds a fraction of
the filter's maximum over the data set (one window per sequence, at its best
position) are aligned and counted into a position probability matrix; the
low-information flanks are trimmed and the PPM is matched against the bundled
JASPAR CORE vertebrates motifs.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from biomed import jaspar
from biomed.kinds.dna import KIND as DNA
from training.config import TrainConfig, recorded_data
from training.data import load_dna

PSEUDOCOUNT = 0.5  # per base and column, added to the site counts
MIN_COLUMN_BITS = 0.3  # flanking columns below this information content are trimmed
MIN_INFORMATION = 3.0  # total bits for a filter to count as informative (table, logos)


@dataclass(frozen=True)
class FilterMotif:
    """One first-layer filter as a motif."""

    index: int  # filter number in the first convolution
    ppm: np.ndarray  # (4, W) probabilities, rows A, C, G, T, flanks trimmed
    n_sites: int  # windows counted
    max_activation: float  # the filter's largest activation over the data set
    information: float  # total information content of ``ppm`` in bits


def _first_layer(model: nn.Module, onehot: torch.Tensor) -> torch.Tensor:
    """(N, filters, L) activations after the first conv (and its BatchNorm, if any) and ReLU."""
    x = model.conv(onehot)
    norm = getattr(model, "norm", None)
    if isinstance(norm, nn.Module):
        x = norm(x)
    return torch.relu(x)


@torch.no_grad()
def _best_positions(model: nn.Module, codes: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per sequence and filter: the maximal activation (N, F) and the window start it occurs at (N, F)."""
    model.eval()
    pad = int(model.conv.padding[0])
    values, starts = [], []
    for i in range(0, len(codes), batch_size):
        onehot = model.onehot(torch.from_numpy(codes[i : i + batch_size]))  # (B, 4, L)
        act = _first_layer(model, onehot)  # (B, F, L')
        best, where = act.max(dim=2)
        values.append(best.numpy())
        starts.append(where.numpy() - pad)  # window start in the unpadded sequence
    return np.concatenate(values), np.concatenate(starts)


def _count_windows(codes: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """(4, W) base counts of the windows ``codes[r, s : s + W]``; positions outside the sequence or N count nothing."""
    counts = np.zeros((4, width))
    cols = starts[:, None] + np.arange(width)[None, :]  # (n, W)
    inside = (cols >= 0) & (cols < codes.shape[1])
    bases = np.where(inside, codes[np.arange(len(codes))[:, None], np.clip(cols, 0, codes.shape[1] - 1)], 4)
    for base in range(4):
        counts[base] = (bases == base).sum(axis=0)
    return counts


def _trim(ppm: np.ndarray, min_bits: float) -> np.ndarray:
    """Drop flanking columns below ``min_bits``; keeps at least the single most informative column."""
    bits = jaspar.information_content(ppm)
    keep = np.flatnonzero(bits >= min_bits)
    if keep.size == 0:
        best = int(bits.argmax())
        return ppm[:, best : best + 1]
    return ppm[:, keep[0] : keep[-1] + 1]


def filter_pwms(
    model: nn.Module,
    codes: np.ndarray,
    top_fraction: float = 0.5,
    min_activation: float = 0.0,
    pseudocount: float = PSEUDOCOUNT,
    min_column_bits: float = MIN_COLUMN_BITS,
    batch_size: int = 256,
) -> list[FilterMotif]:
    """One motif per first-layer filter of a DNA model (``model.onehot`` and ``model.conv``).

    Args:
        model: a DNA model whose first layer is ``conv`` (deepbind, danq); BatchNorm in ``norm`` is applied.
        codes: (N, L) uint8 base codes, e.g. the training sequences.
        top_fraction: a sequence contributes its best window when that activation exceeds
            ``top_fraction`` times the filter's maximum over ``codes``.
        min_activation: and also exceeds this absolute value (filters that never fire yield no sites).
        pseudocount: added to every base count of every column.
        min_column_bits: flanking columns with less information than this are trimmed.
        batch_size: sequences per forward pass.

    Returns:
        One :class:`FilterMotif` per filter, in filter order; a filter with no site gets a uniform PPM.
    """
    if codes.ndim != 2 or codes.dtype != np.uint8:
        raise ValueError(f"codes must be a (N, L) uint8 array; got {codes.dtype} {codes.shape}")
    if not 0.0 <= top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be between 0 and 1; got {top_fraction}")
    width = int(model.conv.kernel_size[0])
    best, starts = _best_positions(model, codes, batch_size)  # (N, F) each
    motifs = []
    for f in range(best.shape[1]):
        peak = float(best[:, f].max())
        rows = np.flatnonzero((best[:, f] > top_fraction * peak) & (best[:, f] > min_activation)) if peak > 0 else np.array([], int)
        counts = _count_windows(codes[rows], starts[rows, f], width) + pseudocount
        ppm = _trim(counts / counts.sum(axis=0, keepdims=True), min_column_bits) if rows.size else np.full((4, width), 0.25)
        motifs.append(FilterMotif(f, ppm, int(rows.size), peak, float(jaspar.information_content(ppm).sum())))
    return motifs


def training_codes(run: Path, data: str | Path | None = None, reference: str | Path | None = None) -> np.ndarray:
    """(N, L) uint8 codes of the run's TRAINING split: its data and saved ``split.json``.

    The data is read as training read it (``training.data.load_dna``, by suffix): a CSV table,
    a FASTA with header labels, or a BED with the run's ``--reference``. ``data``/``reference``: where the run's
    data is now, when it is no longer where ``config.json`` recorded it.
    """
    config = TrainConfig.load(run)
    if config.kind != DNA.name:
        raise ValueError(f"{run}: motifs need a {DNA.name} run (first-layer filters over bases); this one is "
                         f"{config.kind!r}")
    moved = {k: str(v) for k, v in (("data", data), ("reference", reference)) if v}
    config = recorded_data(config.with_(**moved), run, "--data")
    data = load_dna(config.data, config.reference)
    split = json.loads((run / "split.json").read_text())
    return data.x[np.asarray(split["train"], dtype=np.int64)]


@dataclass(frozen=True)
class MotifRow:
    """One line of ``motifs.tsv``: a filter and its best JASPAR match."""

    filter: int
    n_sites: int
    information: float
    match_id: str
    match_name: str
    score: float
    strand: str
    offset: int


TSV_FIELDS = ("filter", "n_sites", "information", "match_id", "match_name", "score", "strand", "offset")


def motif_report(run: str | Path, top: int | None = None, min_information: float = MIN_INFORMATION,
                 data: str | Path | None = None, reference: str | Path | None = None) -> list[MotifRow]:
    """Read a run's best model's filters as motifs, match them to JASPAR, write ``motifs.tsv`` and ``motifs.png``.

    Args:
        run: a ``biomed train dna`` run folder.
        top: keep only the ``top`` most informative filters (default: every informative filter).
        min_information: filters with fewer bits are left out of the table and the logos.
        data, reference: where the run's training data is now, when it moved (default: as ``config.json`` says).

    Returns:
        The rows written to ``motifs.tsv``, most informative filter first.
    """
    from training.export import load_run_model

    run = Path(run)
    model, _ = load_run_model(run)
    codes = training_codes(run, data, reference)
    motifs = [m for m in filter_pwms(model, codes) if m.n_sites and m.information >= min_information]
    motifs.sort(key=lambda m: -m.information)
    motifs = motifs[:top] if top else motifs
    rows = []
    for m in motifs:
        hit = jaspar.match(m.ppm, top=1)[0]
        rows.append(MotifRow(m.index, m.n_sites, round(m.information, 3), hit.id, hit.name, round(hit.score, 4), hit.strand, hit.offset))
    with (run / "motifs.tsv").open("w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(TSV_FIELDS)
        writer.writerows([getattr(r, k) for k in TSV_FIELDS] for r in rows)
    plot_logos(motifs, [f"{r.match_name} ({r.match_id}) r={r.score:.2f}" for r in rows], run / "motifs.png")
    return rows


def _letter_stack(ax: object, ppm: np.ndarray) -> None:
    """Fallback logo without logomaker: per column, letters stacked by height (bits), tallest on top."""
    heights = ppm * jaspar.information_content(ppm)[None, :]
    for col in range(ppm.shape[1]):
        bottom = 0.0
        for base in np.argsort(heights[:, col]):
            h = float(heights[base, col])
            ax.bar(col, h, bottom=bottom, width=0.9, color=LOGO_COLOURS["ACGT"[base]])
            if h > 0.15:
                ax.text(col, bottom + h / 2, "ACGT"[base], ha="center", va="center", fontsize=8, color="white", fontweight="bold")
            bottom += h


LOGO_COLOURS = {"A": "#109648", "C": "#255C99", "G": "#F7B32B", "T": "#D62839"}


def plot_logos(motifs: list[FilterMotif], titles: list[str], path: Path, columns: int = 3) -> None:
    """Sequence logos (bits) of ``motifs`` in one figure, a grid of subplots titled by ``titles``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        import logomaker
        import pandas as pd
    except ImportError:
        logomaker = pd = None
    rows = max(1, -(-len(motifs) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 2.2 * rows), squeeze=False)
    for ax in axes.flat[len(motifs):]:
        ax.axis("off")
    if not motifs:
        axes.flat[0].text(0.5, 0.5, "no informative filters", ha="center", va="center")
    for ax, motif, title in zip(axes.flat, motifs, titles):
        if logomaker is not None:
            bits = motif.ppm * jaspar.information_content(motif.ppm)[None, :]
            frame = pd.DataFrame(bits.T, columns=list("ACGT"))
            logomaker.Logo(frame, ax=ax, color_scheme=LOGO_COLOURS)
        else:
            _letter_stack(ax, motif.ppm)
        ax.set_ylim(0, 2)
        ax.set_ylabel("bits")
        ax.set_xticks([])
        ax.set_title(f"filter {motif.index}: {title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
