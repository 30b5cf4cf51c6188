"""The model card (``README.md``) stored next to each exported model."""

from __future__ import annotations

from pathlib import Path


def _metric_rows(doc: dict) -> list[str]:
    test, base = doc["training"]["metrics"], doc["training"].get("baseline", {})
    rows = ["| task | AUROC | AUPRC | baseline AUROC | baseline AUPRC |", "|---|---|---|---|---|"]
    for label in doc["labels"]:
        if label in test["auroc"]:
            rows.append(
                f"| {label} | {test['auroc'][label]:.3f} | {test['auprc'][label]:.3f} "
                f"| {base.get('auroc', {}).get(label, float('nan')):.3f} | {base.get('auprc', {}).get(label, float('nan')):.3f} |"
            )
    rows.append(f"| **macro** | **{test['auroc_macro']:.3f}** | **{test['auprc_macro']:.3f}** "
                f"| {base.get('auroc_macro', float('nan')):.3f} | {base.get('auprc_macro', float('nan')):.3f} |")
    return rows


def write_model_card(path: Path, doc: dict, extra_sections: list[str] | None = None) -> None:
    """Write a Markdown card: intended use, data, metrics beside the baseline, input contract, plots."""
    training, export = doc["training"], doc.get("export", {})
    plots = [p for p in ("curves.png", "roc.png", "confusion.png", "motifs.png") if (path.parent / p).exists()]
    lines = [
        f"# {doc['name']}:{doc['version']}",
        "",
        f"**Intended use:** {doc['intended_use']}.",
        "",
        f"- kind: {doc['kind']}; architecture: {doc.get('architecture', {}).get('arch', '?')}; "
        f"labels: {', '.join(doc['labels'])} ({'multi-label, sigmoid per task' if doc['multilabel'] else 'softmax over classes'})",
        f"- input: `{doc['input']['name']}` {doc['input']['dtype']} {doc['input']['shape']}; preprocessing: `{doc['preprocess']}`",
        f"- data: {training['data']}; split (train/val/test): {training.get('split')}; seed {training['seed']}; "
        f"epochs run {training['epochs']} (best {training.get('best_epoch')})",
        f"- export: opset {export.get('opset')}, variant {export.get('variant')}, "
        f"max |onnxruntime - torch| = {export.get('parity_max_abs_diff', float('nan')):.2e}; "
        f"held-out AUROC change vs fp32: {export.get('heldout_auroc_change_vs_fp32', 0.0):+.4f}",
        f"- code: {training.get('code_version')}",
        "",
        "## Held-out test metrics (network vs logistic-regression baseline)",
        "",
        *_metric_rows(doc),
        "",
        f"Accuracy: {training['metrics']['accuracy']:.3f} (baseline {training.get('baseline', {}).get('accuracy', float('nan')):.3f}).",
        "",
        *(extra_sections or []),
        *(["## Plots", "", *[f"![{p}]({p})" for p in plots], ""] if plots else []),
    ]
    path.write_text("\n".join(lines) + "\n")
