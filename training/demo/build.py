"""``make demo-models``: demo data, one image, one DNA and one volume model, exported into the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from biomed.store import DEMO_MODELS, has_models

# Sized to finish in a few minutes on two CPU cores with held-out AUROC >= 0.95 (the volume demo: >= 100 held-out
# series, its gapped series refused and its tilted ones resampled, as its spec says).
FULL = {"image": {"n": 600, "epochs": 30}, "dna": {"n": 6000, "epochs": 30}, "volume": {"n": 440, "epochs": 12}}
QUICK = {"image": {"n": 90, "epochs": 2}, "dna": {"n": 300, "epochs": 2}, "volume": {"n": 40, "epochs": 2}}
VOLUME = {"volume_size": (24, 48, 48), "spacing": (5.0, 5.0, 5.0), "resample": ("tilt",), "test_fraction": 0.25,
          "batch_size": 8, "lr": 1e-3, "dropout": 0.0, "weight_decay": 1e-4}


def build_demo_models(workdir: Path, force: bool = False, quick: bool = False) -> list[str]:
    """Generate the three demo sets, train, export as ``demo-image``, ``demo-dna`` and ``demo-volume``; the tags.

    Does nothing when the store already has every demo model, unless ``force``. Quick builds (tests) are too
    small to beat their baselines and are exported anyway (``force``); full ones must beat them.
    """
    if has_models(DEMO_MODELS) and not force:
        print(f"model store already has {', '.join(DEMO_MODELS)}; use --force to rebuild")
        return []
    from training.demo.dicom_demo import generate_images
    from training.demo.dna_demo import generate_dna
    from training.demo.volume_demo import WINDOW, generate_volumes
    from models import DEFAULT_ARCH
    from training.config import TrainConfig
    from training.export import export_run
    from training.train import fit

    sizes = QUICK if quick else FULL
    workdir = Path(workdir).resolve()  # the runs record absolute data paths: usable from any working directory
    images = generate_images(workdir / "image", n=sizes["image"]["n"], seed=0)
    table = generate_dna(workdir / "dna", n=sizes["dna"]["n"], seed=0)
    volumes = generate_volumes(workdir / "volume", n=sizes["volume"]["n"], seed=0)
    options: dict[str, dict[str, Any]] = {"volume": {**VOLUME, "window": WINDOW}}
    tags = []
    for kind, data, name in (("image", images, DEMO_MODELS[0]), ("dna", table, DEMO_MODELS[1]),
                             ("volume", volumes, DEMO_MODELS[2])):
        run = workdir / "runs" / kind
        config = TrainConfig(kind=kind, data=str(data), out=str(run), arch=DEFAULT_ARCH[kind],
                             epochs=sizes[kind]["epochs"], **options.get(kind, {}))
        summary = fit(config)
        print(f"{name}: held-out AUROC {summary['test']['auroc_macro']:.3f} (baseline {summary['baseline']['auroc_macro']:.3f})")
        if kind == "dna":
            from training.motifs import motif_report

            motif_report(run)  # motifs.tsv and motifs.png, carried into the model card
        tags.append(export_run(run, name, force=quick).tag)
    return tags
