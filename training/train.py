"""The training entry point: ``biomed train`` and ``torchrun -m training.train``.

Loads the data through the shared preprocessing, holds out validation and test
splits by seed, trains with AdamW and early stopping, keeps the best
checkpoint, and reports held-out metrics beside the better of two baselines (logistic regression and k
nearest neighbours), calling a held-out set with fewer than 30 samples of some class too small.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from biomed.progress import make_progress
from models import OUTPUT_ARG, build_model, saved_kwargs
from training import checkpoint, distributed, kinds, metrics, plots
from training.config import TrainConfig
from training.data import Dataset, check_trainable, split_indices
from training.engine import predict, train_one_epoch

log = logging.getLogger(__name__)


def model_kwargs(config: TrainConfig, data: Dataset) -> dict:
    """Builder arguments, saved with the weights so the model can be rebuilt.

    The output size goes under the kind's own name (image: ``num_classes``, DNA: ``num_tasks``);
    builders reject arguments they do not take.
    """
    return {OUTPUT_ARG[config.kind]: len(data.labels), "dropout": config.dropout, **config.model_kwargs}


def make_loader(data: Dataset, config: TrainConfig, ctx: distributed.Context) -> tuple[DataLoader, DistributedSampler]:
    """Each rank takes every world-th sample of one seeded permutation: the same global batches for any world size."""
    tensors = TensorDataset(torch.from_numpy(data.x), torch.from_numpy(data.y))
    sampler = DistributedSampler(tensors, num_replicas=ctx.world, rank=ctx.rank, shuffle=True, seed=config.seed)
    per_rank = max(1, config.batch_size // ctx.world)
    return DataLoader(tensors, batch_size=per_rank, sampler=sampler, num_workers=config.workers), sampler


def _loss_fn(multilabel: bool) -> nn.Module:
    return nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()


def _save_split(run: Path, data: Dataset, split: dict[str, np.ndarray]) -> None:
    (run / "split.json").write_text(json.dumps({k: v.tolist() for k, v in split.items()}))
    test = data.subset(split["test"])
    np.savez_compressed(run / "heldout.npz", x=test.x, y=test.y, labels=np.array(data.labels),
                        sources=np.array(test.sources))


def fit(config: TrainConfig, resume: bool = False) -> dict:
    """Train one run; returns the summary (also written to ``metrics.json`` by rank 0)."""
    ctx = distributed.setup()
    try:
        return _fit(config, ctx, resume)
    finally:
        distributed.teardown(ctx)


def _fit(config: TrainConfig, ctx: distributed.Context, resume: bool) -> dict:
    run = Path(config.out)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    data = kinds.get(config.kind).load(config)
    split = split_indices(data.y, config.seed, config.val_fraction, config.test_fraction)
    check_trainable(data, split, config.data)  # before anything is trained or written
    train, val, test = (data.subset(split[k]) for k in ("train", "val", "test"))
    kwargs = model_kwargs(config, data)
    model: nn.Module = build_model(config.kind, config.arch, **kwargs).to(ctx.device)
    if ctx.main:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(config.to_json(launch=ctx.launch()))
        _save_split(run, data, split)
    if ctx.world > 1:
        model = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    loop = {"epoch": 0, "best": -float("inf"), "best_epoch": 0, "bad_epochs": 0, "history": []}
    torch.manual_seed(config.seed * 1000 + ctx.rank + 1)  # augmentation and dropout differ per rank
    if resume and (run / checkpoint.LAST).exists():
        loop = _restore(run, model, optimizer, scheduler)
    meta = {"config": json.loads(config.to_json()), "model_kwargs": kwargs, "labels": data.labels, "multilabel": data.multilabel}
    _epochs(config, ctx, model, optimizer, scheduler, train, val, loop, meta)
    if not ctx.main:
        return {}
    return _report(config, run, data, train, test, meta, loop, ctx.launch())


def _restore(run: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: object) -> dict:
    state = checkpoint.load(run / checkpoint.LAST)
    checkpoint.unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])  # type: ignore[attr-defined]
    checkpoint.set_rng_state(state["rng"])
    log.info("resuming %s after epoch %d", run, state["epoch"])
    return state["loop"]


def _epochs(config: TrainConfig, ctx: distributed.Context, model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: object, train: Dataset, val: Dataset, loop: dict, meta: dict) -> None:
    """The epoch loop with early stopping on validation AUROC and a live progress bar."""
    run = Path(config.out)
    loader, sampler = make_loader(train, config, ctx)
    augment = kinds.get(config.kind).augment
    loss_fn = _loss_fn(train.multilabel)
    scaler = torch.amp.GradScaler("cuda") if ctx.device.type == "cuda" and config.amp == "fp16" else None
    monitor = config.monitor if config.monitor != "auto" else ("val_auroc" if train.multilabel else "val_loss")

    def monitored(row: dict) -> float:
        """Higher is better: validation AUROC, or minus the validation loss."""
        return row["val_auroc"] if monitor == "val_auroc" else -row["val_loss"]

    def best_auroc() -> float:
        return max((h["val_auroc"] for h in loop["history"]), default=0.0)
    with make_progress() as progress:
        bar = progress.add_task(f"training {config.arch}", total=config.epochs * len(loader), completed=loop["epoch"] * len(loader), status="")
        for epoch in range(loop["epoch"] + 1, config.epochs + 1):
            sampler.set_epoch(epoch)
            started = time.perf_counter()

            def on_step(loss: float) -> None:
                progress.update(bar, advance=1, status=f"epoch {epoch} loss {loss:.3f} best val AUROC {best_auroc():.3f}")

            train_loss = distributed.mean_across(
                train_one_epoch(model, loader, optimizer, loss_fn, augment, ctx.device, config.amp, scaler, on_step), ctx)
            scheduler.step()  # type: ignore[attr-defined]
            row = _validate(model, val, loss_fn, ctx.device) | {"epoch": epoch, "train_loss": train_loss,
                                                                 "seconds": time.perf_counter() - started}
            loop["history"].append(row)
            score = monitored(row)
            improved = score > loop["best"] + 1e-4
            loop.update(epoch=epoch, best=max(loop["best"], score), bad_epochs=0 if improved else loop["bad_epochs"] + 1)
            if improved:
                loop["best_epoch"] = epoch
            if ctx.main:
                if improved:
                    checkpoint.save_best(run, model, meta | {"epoch": epoch})
                checkpoint.save_last(run, model, optimizer, scheduler, epoch, loop)
            if loop["bad_epochs"] >= config.patience:
                log.info("early stop after epoch %d (best %d)", epoch, loop["best_epoch"])
                break


def _validate(model: nn.Module, val: Dataset, loss_fn: nn.Module, device: torch.device) -> dict:
    probs = predict(checkpoint.unwrap(model), val.x, val.multilabel, device)
    p = torch.from_numpy(probs).clamp(1e-7, 1 - 1e-7)
    if val.multilabel:
        loss = float(nn.functional.binary_cross_entropy(p, torch.from_numpy(val.y)))
    else:
        loss = float(nn.functional.nll_loss(p.log(), torch.from_numpy(val.y)))
    return {"val_loss": loss, "val_auroc": metrics.score(val.y, probs, val.labels, val.multilabel)["auroc_macro"]}


def _report(config: TrainConfig, run: Path, data: Dataset, train: Dataset, test: Dataset, meta: dict, loop: dict,
            launch: dict) -> dict:
    """Held-out metrics of the best checkpoint beside the baseline; plots; ``metrics.json`` (with ``launch``)."""
    best = checkpoint.load(run / checkpoint.BEST)
    model = build_model(config.kind, config.arch, **saved_kwargs(config.kind, best["model_kwargs"]))
    model.load_state_dict(best["model"])
    probs = predict(model, test.x, test.multilabel, torch.device("cpu"))
    features = kinds.get(config.kind).baseline_features
    bases = metrics.baselines(features(train.x), train.y, features(test.x), test.multilabel, config.seed)
    scores = {name: metrics.score(test.y, p, test.labels, test.multilabel) | {"model": name} for name, p in bases.items()}
    best = metrics.best_baseline(scores)
    base = bases[best]
    small = metrics.small_classes(test.y, test.labels, test.multilabel)
    summary = {
        "test": metrics.score(test.y, probs, test.labels, test.multilabel) | {
            "too_small": bool(small), "small_classes": small, "min_per_class": metrics.MIN_PER_CLASS},
        "baseline": scores[best],  # the one to beat: the better of the baselines
        "baselines": list(scores.values()),
        "modalities": data.modalities,
        "best_epoch": loop["best_epoch"],
        "epochs_run": loop["epoch"],
        "split": {"train": len(train.y), "val": len(data.y) - len(train.y) - len(test.y), "test": len(test.y)},
        "skipped": data.skipped,
        "labels": data.labels,
        "multilabel": data.multilabel,
        "launch": launch,
    }
    (run / "metrics.json").write_text(json.dumps(summary, indent=2))
    targets = test.y if test.multilabel else np.eye(len(test.labels))[test.y]
    plots.plot_curves(loop["history"], run / "curves.png")
    plots.plot_roc(targets, probs, base, test.labels, run / "roc.png")
    if not test.multilabel:
        plots.plot_confusion(test.y, probs, test.labels, run / "confusion.png")
    return summary


def main(argv: list[str] | None = None) -> int:
    """``python -m training.train image|dna ...``: what torchrun launches (``biomed train --nproc N``), same flags."""
    import argparse

    from training.args import add_arguments, config_from, print_summary

    parser = argparse.ArgumentParser(prog="python -m training.train", description="One training run (a rank under torchrun).")
    add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = config_from(args)
        summary = fit(config, resume=bool(args.resume))
    except (ValueError, TypeError, LookupError, FileNotFoundError, NotADirectoryError, RuntimeError) as err:
        print(f"training.train: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 1
    if summary:
        print_summary(config.out, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
