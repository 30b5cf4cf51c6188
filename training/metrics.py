"""Held-out metrics (AUROC, AUPRC, accuracy) and the logistic-regression baseline."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from biomed.preprocess.dna import N_CODE


def _targets(y: np.ndarray, n_labels: int, multilabel: bool) -> np.ndarray:
    """(N, T) 0/1 targets: the labels themselves, or one-vs-rest for classes."""
    return y if multilabel else np.eye(n_labels, dtype=np.float32)[y]


def score(y: np.ndarray, probs: np.ndarray, labels: list[str], multilabel: bool) -> dict:
    """AUROC and AUPRC per task, their macro means, and accuracy.

    Args:
        y: (N,) class indices, or (N, T) 0/1 for multi-label.
        probs: (N, T) probabilities.
    """
    targets = _targets(y, len(labels), multilabel)
    auroc, auprc = {}, {}
    for t, label in enumerate(labels):
        if 0 < targets[:, t].sum() < len(targets):
            auroc[label] = float(roc_auc_score(targets[:, t], probs[:, t]))
            auprc[label] = float(average_precision_score(targets[:, t], probs[:, t]))
    if multilabel:
        accuracy = float(((probs >= 0.5) == (targets >= 0.5)).mean())
    else:
        accuracy = float((probs.argmax(1) == y).mean())
    return {
        "auroc": auroc,
        "auprc": auprc,
        "auroc_macro": float(np.mean(list(auroc.values()))) if auroc else float("nan"),
        "auprc_macro": float(np.mean(list(auprc.values()))) if auprc else float("nan"),
        "accuracy": accuracy,
        "n": int(len(y)),
    }


def kmer_features(codes: np.ndarray, k: int = 5) -> np.ndarray:
    """Strand-symmetric k-mer counts per sequence (windows with N are dropped)."""
    n, length = codes.shape
    windows = np.lib.stride_tricks.sliding_window_view(codes.astype(np.int64), k, axis=1)  # (N, L-k+1, k)
    valid = (windows != N_CODE).all(axis=2)
    powers = 4 ** np.arange(k - 1, -1, -1)
    index = (np.where(windows == N_CODE, 0, windows) * powers).sum(axis=2)
    rc_index = ((3 - np.where(windows == N_CODE, 0, windows))[:, :, ::-1] * powers).sum(axis=2)
    counts = np.zeros((n, 4**k), dtype=np.float32)
    rows = np.broadcast_to(np.arange(n)[:, None], index.shape)
    np.add.at(counts, (rows[valid], index[valid]), 1.0)
    np.add.at(counts, (rows[valid], rc_index[valid]), 1.0)
    return counts


def baseline_features(x: np.ndarray, kind: str) -> np.ndarray:
    """Images: pixels at half resolution; DNA: 5-mer counts."""
    if kind == "image":
        n, c, h, w = x.shape
        return x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5)).reshape(n, -1)
    return kmer_features(x)


def logistic_baseline(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, kind: str, multilabel: bool, seed: int) -> np.ndarray:
    """Fit logistic regression (one per task for multi-label) and return test probabilities (N, T)."""
    f_train, f_test = baseline_features(train_x, kind), baseline_features(test_x, kind)

    def fit(y: np.ndarray) -> object:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500, random_state=seed))
        return model.fit(f_train, y)

    if multilabel:
        return np.stack([fit(train_y[:, t]).predict_proba(f_test)[:, 1] for t in range(train_y.shape[1])], axis=1)
    return fit(train_y).predict_proba(f_test)
