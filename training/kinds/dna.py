"""Training DNA models: sequence tables, FASTA or BED, either strand read, strand-symmetric k-mers for the baseline."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from biomed.kinds.dna import KIND as DNA
from biomed.preprocess import dna
from biomed.preprocess.dna import DnaSpec
from training.config import TrainConfig
from training.data import Dataset, load_dna
from training.kinds.base import TrainingKind

_COMPLEMENT = torch.from_numpy(dna.COMPLEMENT)  # the serving side's table (biomed.preprocess.dna)


def load(config: TrainConfig) -> Dataset:
    return load_dna(config.data, config.reference)


def augment(codes: torch.Tensor) -> torch.Tensor:
    """Reverse-complement half of a (N, L) uint8 batch: binding does not depend on the strand read."""
    flip = torch.rand(codes.shape[0]) < 0.5
    rc = _COMPLEMENT[codes.flip(1).long()]
    return torch.where(flip[:, None], rc, codes)


def kmer_features(codes: np.ndarray, k: int = 5) -> np.ndarray:
    """Strand-symmetric k-mer counts per sequence (windows with N are dropped)."""
    n, length = codes.shape
    windows = np.lib.stride_tricks.sliding_window_view(codes.astype(np.int64), k, axis=1)  # (N, L-k+1, k)
    valid = (windows != dna.N_CODE).all(axis=2)
    powers = 4 ** np.arange(k - 1, -1, -1)
    index = (np.where(windows == dna.N_CODE, 0, windows) * powers).sum(axis=2)
    rc_index = ((3 - np.where(windows == dna.N_CODE, 0, windows))[:, :, ::-1] * powers).sum(axis=2)
    counts = np.zeros((n, 4**k), dtype=np.float32)
    rows = np.broadcast_to(np.arange(n)[:, None], index.shape)
    np.add.at(counts, (rows[valid], index[valid]), 1.0)
    np.add.at(counts, (rows[valid], rc_index[valid]), 1.0)
    return counts


def preprocess(config: TrainConfig, x: np.ndarray) -> dict[str, Any]:
    """The model's length from the held-out (N, L) codes; the serving stride, by default half of it."""
    length = int(x.shape[1])
    return DnaSpec(length, config.stride or max(1, length // 2)).to_dict()


KIND = TrainingKind(DNA.name, load, augment, kmer_features, preprocess,
                    "a table sequence,<task>... of 0/1 labels, FASTA with TASK=0/1 header labels (.fa/.fasta[.gz]) or "
                    "BED with label columns (.bed, needs --reference)")
