"""Plots written to the run folder: learning curves, ROC curves, confusion matrix."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import confusion_matrix, roc_curve  # noqa: E402


def plot_curves(history: list[dict], path: Path) -> None:
    """Train/validation loss and validation AUROC per epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], label="validation")
    ax1.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax1.legend()
    ax2.plot(epochs, [h["val_auroc"] for h in history], color="C2")
    ax2.set(xlabel="epoch", ylabel="macro AUROC", title="Validation AUROC", ylim=(0.4, 1.01))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_roc(targets: np.ndarray, probs: np.ndarray, baseline: np.ndarray, labels: list[str], path: Path) -> None:
    """One ROC curve per task (solid: network, dashed: logistic-regression baseline)."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for t, label in enumerate(labels):
        if 0 < targets[:, t].sum() < len(targets):
            fpr, tpr, _ = roc_curve(targets[:, t], probs[:, t])
            ax.plot(fpr, tpr, color=f"C{t}", label=f"{label} (network)")
            fpr, tpr, _ = roc_curve(targets[:, t], baseline[:, t])
            ax.plot(fpr, tpr, color=f"C{t}", linestyle="--", alpha=0.6, label=f"{label} (baseline)")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.5)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC on the held-out test split")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(y: np.ndarray, probs: np.ndarray, labels: list[str], path: Path) -> None:
    """Confusion matrix of the arg-max class on the held-out test split."""
    matrix = confusion_matrix(y, probs.argmax(1), labels=range(len(labels)))
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", color="black")
    ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=labels, yticklabels=labels,
           xlabel="predicted", ylabel="true", title="Confusion matrix (test)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
