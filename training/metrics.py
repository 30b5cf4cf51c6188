"""Held-out metrics (AUROC, AUPRC, accuracy) and the logistic-regression baseline."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler



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


def logistic_baseline(f_train: np.ndarray, train_y: np.ndarray, f_test: np.ndarray, multilabel: bool,
                      seed: int) -> np.ndarray:
    """Fit logistic regression (one per task for multi-label) on the kind's baseline features (``training.kinds``)
    of the training inputs, and return the test inputs' probabilities (N, T)."""

    def fit(y: np.ndarray) -> object:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500, random_state=seed))
        return model.fit(f_train, y)

    if multilabel:
        return np.stack([fit(train_y[:, t]).predict_proba(f_test)[:, 1] for t in range(train_y.shape[1])], axis=1)
    return fit(train_y).predict_proba(f_test)
