"""``make demo-models``: demo data, one image and one DNA model, exported into the store."""

from __future__ import annotations

from pathlib import Path

from biomed.store import DEMO_MODELS, has_models

# Sized to finish in a few minutes on two CPU cores with held-out AUROC >= 0.95.
FULL = {"image": {"n": 600, "epochs": 30}, "dna": {"n": 6000, "epochs": 30}}
QUICK = {"image": {"n": 90, "epochs": 2}, "dna": {"n": 300, "epochs": 2}}


def build_demo_models(workdir: Path, force: bool = False, quick: bool = False) -> list[str]:
    """Generate both demo sets, train, export as ``demo-image`` and ``demo-dna``; returns the tags.

    Does nothing when the store already has both demo models, unless ``force``.
    """
    if has_models(DEMO_MODELS) and not force:
        print(f"model store already has {', '.join(DEMO_MODELS)}; use --force to rebuild")
        return []
    from training.demo.dicom_demo import generate_images
    from training.demo.dna_demo import generate_dna
    from models import DEFAULT_ARCH
    from training.config import TrainConfig
    from training.export import export_run
    from training.train import fit

    sizes = QUICK if quick else FULL
    workdir = Path(workdir).resolve()  # the runs record absolute data paths: usable from any working directory
    images = generate_images(workdir / "image", n=sizes["image"]["n"], seed=0)
    table = generate_dna(workdir / "dna", n=sizes["dna"]["n"], seed=0)
    tags = []
    for kind, data, name in (("image", images, DEMO_MODELS[0]), ("dna", table, DEMO_MODELS[1])):
        run = workdir / "runs" / kind
        config = TrainConfig(kind=kind, data=str(data), out=str(run), arch=DEFAULT_ARCH[kind], epochs=sizes[kind]["epochs"])
        summary = fit(config)
        print(f"{name}: held-out AUROC {summary['test']['auroc_macro']:.3f} (baseline {summary['baseline']['auroc_macro']:.3f})")
        if kind == "dna":
            from training.motifs import motif_report

            motif_report(run)  # motifs.tsv and motifs.png, carried into the model card
        tags.append(export_run(run, name).tag)
    return tags
