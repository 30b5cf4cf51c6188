"""Held-out metrics (AUROC, AUPRC, accuracy), how far they can be trusted, and the baselines they must beat.

Two baselines see each kind's baseline features (``training.kinds``): logistic regression and k nearest
neighbours. The one to beat is the better of the two on the held-out set (``best_baseline``). A held-out
set with fewer than ``MIN_PER_CLASS`` samples of some class (for multi-label data, of some task's
positives or negatives) is called too small: its AUROC can be 1.000 on two samples.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


MIN_PER_CLASS = 30  # held-out samples of each class below which the metrics are called too small
KNN_NEIGHBOURS = 15


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


def knn_baseline(f_train: np.ndarray, train_y: np.ndarray, f_test: np.ndarray, multilabel: bool) -> np.ndarray:
    """Test probabilities (N, T) of k nearest neighbours (distance-weighted, standardised features; k = 15 or fewer
    for a small training set), one output per task for multi-label data."""
    k = max(1, min(KNN_NEIGHBOURS, len(f_train) // 2))
    model = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=k, weights="distance"))
    model.fit(f_train, train_y)
    probs = model.predict_proba(f_test)
    if not multilabel:
        return _all_classes(probs, model.classes_, int(train_y.max()) + 1)
    classes = model[-1].classes_
    if not isinstance(probs, list):  # one task: scikit-learn treats an (N, 1) target as a single output
        probs, classes = [probs], [classes]
    return np.stack([p[:, list(c).index(1.0)] if 1.0 in c else np.zeros(len(f_test))
                     for p, c in zip(probs, classes)], axis=1)


def _all_classes(probs: np.ndarray, seen: np.ndarray, n: int) -> np.ndarray:
    """(N, n) probabilities from a classifier that saw only the classes ``seen``."""
    out = np.zeros((len(probs), n))
    out[:, seen.astype(int)] = probs
    return out


def baselines(f_train: np.ndarray, train_y: np.ndarray, f_test: np.ndarray, multilabel: bool,
              seed: int) -> dict[str, np.ndarray]:
    """Each baseline's test probabilities (N, T), by name."""
    return {"logistic regression": logistic_baseline(f_train, train_y, f_test, multilabel, seed),
            "k-nearest neighbours": knn_baseline(f_train, train_y, f_test, multilabel)}


def best_baseline(scores: dict[str, dict]) -> str:
    """The name of the baseline to beat: the higher held-out macro AUROC (NaN counts as none)."""
    return max(scores, key=lambda name: np.nan_to_num(scores[name]["auroc_macro"], nan=-1.0))


def small_classes(y: np.ndarray, labels: list[str], multilabel: bool) -> dict[str, int]:
    """The held-out classes (multi-label: tasks' positives or negatives) with fewer than ``MIN_PER_CLASS`` samples,
    and how many they have."""
    targets = _targets(y, len(labels), multilabel)
    counts = {}
    for t, label in enumerate(labels):
        positives = int(targets[:, t].sum())
        fewest = min(positives, len(targets) - positives) if multilabel else positives
        if fewest < MIN_PER_CLASS:
            counts[label] = fewest
    return counts
