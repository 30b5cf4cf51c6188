"""Model builders: output shapes for every (kind, arch), error messages, parameter counts, unknown and legacy arguments."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import ARCHS, DEFAULT_ARCH, OUTPUT_ARG, build_model, saved_kwargs

# (kind, arch, kwargs, input shape, expected output shape)
CASES = [
    ("dna", "deepbind", {"num_tasks": 3}, (2, 200), (2, 3)),
    ("dna", "deepbind", {"num_tasks": 1, "filters": 8, "filter_width": 15}, (5, 101), (5, 1)),
    ("dna", "deepbind", {"num_tasks": 2, "hidden": 16}, (1, 64), (1, 2)),
    ("dna", "deepbind", {"num_tasks": 2, "batch_norm": False, "pool": "max"}, (3, 50), (3, 2)),
    ("dna", "danq", {"num_tasks": 3}, (2, 200), (2, 3)),
    ("dna", "danq", {"num_tasks": 1, "filters": 8, "pool": 2, "hidden": 8}, (4, 64), (4, 1)),
    ("image", "cnn", {"num_classes": 2}, (2, 1, 64, 64), (2, 2)),
    ("image", "cnn", {"num_classes": 5, "in_channels": 3}, (1, 3, 32, 48), (1, 5)),
    ("image", "resnet", {"num_classes": 3}, (2, 1, 64, 64), (2, 3)),
    ("image", "resnet", {"num_classes": 2}, (1, 1, 40, 40), (1, 2)),
    ("image", "resnet18", {"num_classes": 2}, (1, 1, 224, 224), (1, 2)),
    ("image", "resnet18", {"num_classes": 3, "in_channels": 3}, (2, 3, 64, 64), (2, 3)),
    ("volume", "cnn3d", {"num_classes": 2}, (2, 1, 24, 48, 48), (2, 2)),
    ("volume", "cnn3d", {"num_classes": 3}, (1, 1, 9, 20, 13), (1, 3)),
    ("volume", "resnet3d", {"num_classes": 2}, (2, 1, 24, 48, 48), (2, 2)),
    ("volume", "resnet3d", {"num_classes": 4, "in_channels": 2}, (1, 2, 16, 16, 16), (1, 4)),
]

# Sane sizes for the default builders: big enough to learn, small enough for two CPU cores.
PARAMS = {("dna", "deepbind"): (1_000, 100_000), ("dna", "danq"): (5_000, 200_000),
          ("image", "cnn"): (10_000, 500_000), ("image", "resnet"): (50_000, 2_000_000),
          ("image", "resnet18"): (11_000_000, 11_500_000),  # ResNet-18's size on purpose: the GPU benchmark's model
          ("volume", "cnn3d"): (20_000, 500_000), ("volume", "resnet3d"): (200_000, 2_000_000)}


def _shape(kind: str) -> tuple[int, ...]:
    """A small input of the kind: DNA codes, an image, a volume."""
    return {"dna": (2, 80), "image": (2, 1, 32, 32), "volume": (2, 1, 8, 16, 16)}[kind]


def _input(kind: str, shape: tuple[int, ...]) -> torch.Tensor:
    if kind == "dna":
        return torch.randint(0, 5, shape, dtype=torch.uint8)  # codes A, C, G, T and N=4
    return torch.rand(shape)


def test_every_arch_has_a_case() -> None:
    assert {(k, a) for k, a, *_ in CASES} == {(k, a) for k in ARCHS for a in ARCHS[k]}
    assert all(DEFAULT_ARCH[k] in ARCHS[k] for k in ARCHS)


@pytest.mark.parametrize(("kind", "arch", "kwargs", "shape", "expected"), CASES)
def test_output_shape(kind: str, arch: str, kwargs: dict, shape: tuple[int, ...], expected: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = build_model(kind, arch, **kwargs).eval()
    with torch.no_grad():
        out = model(_input(kind, shape))
    assert tuple(out.shape) == expected
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("kind", "arch"), [(k, a) for k in ARCHS for a in ARCHS[k]])
def test_parameter_count_is_sane(kind: str, arch: str) -> None:
    model = build_model(kind, arch, **{OUTPUT_ARG[kind]: 3})
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    low, high = PARAMS[(kind, arch)]
    assert low <= n <= high, f"{kind}/{arch} has {n} parameters"


@pytest.mark.parametrize("arch", list(ARCHS["dna"]))
def test_dna_models_take_uint8_codes_and_all_n(arch: str) -> None:
    model = build_model("dna", arch, num_tasks=2).eval()
    with torch.no_grad():
        out = model(torch.full((2, 100), 4, dtype=torch.uint8))  # all N: 0.25 everywhere
    assert torch.allclose(out[0], out[1])


@pytest.mark.parametrize("arch", list(ARCHS["dna"]))
def test_dna_first_layer_holds_a_whole_motif(arch: str) -> None:
    assert build_model("dna", arch).conv.kernel_size[0] >= 15


@pytest.mark.parametrize(
    ("kind", "arch", "names"),
    [("dna", "nope", ("deepbind", "danq")), ("image", "vit", ("cnn", "resnet")), ("protein", "cnn", ("image", "dna"))],
)
def test_unknown_names_list_the_choices(kind: str, arch: str, names: tuple[str, ...]) -> None:
    with pytest.raises(ValueError) as err:
        build_model(kind, arch)
    assert all(name in str(err.value) for name in names)
    assert repr(arch if kind in ARCHS else kind) in str(err.value)


# (kind, arch, kwargs, the argument the TypeError must name): misspelt options and the other kind's output size.
UNKNOWN = [
    ("dna", "deepbind", {"num_task": 2}, "num_task"),
    ("dna", "deepbind", {"num_tasks": 2, "filter_witdh": 11}, "filter_witdh"),
    ("dna", "deepbind", {"num_classes": 2}, "num_classes"),
    ("dna", "danq", {"filter": 8}, "filter"),
    ("dna", "danq", {"num_tasks": 2, "hiden": 8}, "hiden"),
    ("dna", "danq", {"num_classes": 2}, "num_classes"),
    ("image", "cnn", {"num_clases": 3}, "num_clases"),
    ("image", "cnn", {"num_classes": 3, "in_chanels": 3}, "in_chanels"),
    ("image", "cnn", {"num_tasks": 3}, "num_tasks"),
    ("image", "resnet", {"drop_out": 0.1}, "drop_out"),
    ("image", "resnet", {"num_tasks": 3}, "num_tasks"),
    ("image", "resnet18", {"widths": (8, 16)}, "widths"),
    ("volume", "cnn3d", {"num_tasks": 2}, "num_tasks"),
    ("volume", "resnet3d", {"depth": 18}, "depth"),
]


def test_every_arch_has_an_unknown_argument_case() -> None:
    assert {(k, a) for k, a, *_ in UNKNOWN} == {(k, a) for k in ARCHS for a in ARCHS[k]}


@pytest.mark.parametrize(("kind", "arch", "kwargs", "name"), UNKNOWN)
def test_unknown_argument_raises_type_error_naming_it(kind: str, arch: str, kwargs: dict, name: str) -> None:
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{name}'"):
        build_model(kind, arch, **kwargs)


# What every run saved before builders rejected unknown arguments: both output names, the same number.
LEGACY = {"num_classes": 3, "num_tasks": 3, "dropout": 0.2}


@pytest.mark.parametrize(("kind", "arch"), [(k, a) for k in ARCHS for a in ARCHS[k]])
def test_legacy_saved_kwargs_build_through_the_helper(kind: str, arch: str) -> None:
    with pytest.raises(TypeError):
        build_model(kind, arch, **LEGACY)  # the reason the helper exists
    kwargs = saved_kwargs(kind, LEGACY)
    assert kwargs == {OUTPUT_ARG[kind]: 3, "dropout": 0.2}
    assert LEGACY == {"num_classes": 3, "num_tasks": 3, "dropout": 0.2}  # not mutated
    with torch.no_grad():
        out = build_model(kind, arch, **kwargs).eval()(_input(kind, _shape(kind)))
    assert tuple(out.shape) == (2, 3)


# (kind, saved kwargs, what the helper hands the builder): only the legacy pair is touched.
SAVED = [
    ("dna", {"num_tasks": 2, "dropout": 0.1}, {"num_tasks": 2, "dropout": 0.1}),
    ("image", {"num_classes": 4, "filters": 8}, {"num_classes": 4, "filters": 8}),
    ("dna", {"num_tasks": 2, "num_classes": 2, "filters": 8}, {"num_tasks": 2, "filters": 8}),
    ("image", {"num_classes": 4, "num_tasks": 4}, {"num_classes": 4}),
    ("dna", {"num_classes": 2}, {"num_classes": 2}),  # the other kind's name alone is not the legacy: still an error
    ("image", {"num_tasks": 2, "dropout": 0.1}, {"num_tasks": 2, "dropout": 0.1}),
    ("protein", {"num_tasks": 2, "num_classes": 2}, {"num_tasks": 2, "num_classes": 2}),  # build_model names the kind
]


@pytest.mark.parametrize(("kind", "saved", "expected"), SAVED)
def test_saved_kwargs_drops_only_the_legacy_output_name(kind: str, saved: dict, expected: dict) -> None:
    assert saved_kwargs(kind, saved) == expected


@pytest.mark.parametrize(("kind", "arch", "saved", "name"), [
    ("dna", "deepbind", {**LEGACY, "filtres": 8}, "filtres"),
    ("dna", "danq", {"num_classes": 3}, "num_classes"),
    ("image", "cnn", {**LEGACY, "widht": 8}, "widht"),
    ("image", "resnet", {"num_tasks": 3}, "num_tasks"),
    ("image", "resnet18", {"widths": (8, 16)}, "widths"),
])
def test_saved_kwargs_still_reject_anything_else(kind: str, arch: str, saved: dict, name: str) -> None:
    with pytest.raises(TypeError, match=f"'{name}'"):
        build_model(kind, arch, **saved_kwargs(kind, saved))


def _legacy_run(tmp_path: Path, kind: str, arch: str) -> tuple[Path, torch.nn.Module]:
    """A run folder whose best.pt is shaped like one written before this change (both output names)."""
    import json

    from training.checkpoint import BEST, save_best
    from training.config import TrainConfig

    torch.manual_seed(0)
    model = build_model(kind, arch, **saved_kwargs(kind, LEGACY)).eval()
    config = TrainConfig(kind=kind, data="d", out=str(tmp_path), arch=arch, image_size=(32, 32))
    save_best(tmp_path, model, {"config": json.loads(config.to_json()), "model_kwargs": dict(LEGACY),
                                "labels": ["a", "b", "c"], "multilabel": kind == "dna", "epoch": 1})
    assert torch.load(tmp_path / BEST, weights_only=False)["model_kwargs"] == LEGACY
    return tmp_path, model


@pytest.mark.parametrize(("kind", "arch"), [(k, a) for k in ARCHS for a in ARCHS[k]])
def test_legacy_checkpoint_still_loads(kind: str, arch: str, tmp_path: Path) -> None:
    from training.export import load_run_model

    run, original = _legacy_run(tmp_path, kind, arch)
    model, best = load_run_model(run)
    assert best["model_kwargs"] == LEGACY  # the checkpoint is read as saved, only the builder call is filtered
    x = _input(kind, _shape(kind))
    with torch.no_grad():
        assert torch.equal(model(x), original(x))
