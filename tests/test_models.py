"""Model builders: output shapes for every (kind, arch), error messages, parameter counts."""

from __future__ import annotations

import pytest
import torch

from models import ARCHS, DEFAULT_ARCH, build_model

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
]

# Sane sizes for the default builders: big enough to learn, small enough for two CPU cores.
PARAMS = {("dna", "deepbind"): (1_000, 100_000), ("dna", "danq"): (5_000, 200_000),
          ("image", "cnn"): (10_000, 500_000), ("image", "resnet"): (50_000, 2_000_000)}


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
    model = build_model(kind, arch, num_tasks=3, num_classes=3)
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
