"""DNA sequence encoding: strings to uint8 codes, padding, tiling, strands.

Codes: A=0, C=1, G=2, T=3, N=4. Models take a (N, L) uint8 tensor and one-hot
encode inside the graph, so the host-to-device copy is one byte per base.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from biomed.errors import InputError

ALPHABET = "ACGTN"
N_CODE = 4
_INVALID = 255

# 256-entry lookup table from ASCII byte to code; everything else is invalid.
_LUT = np.full(256, _INVALID, dtype=np.uint8)
for _code, _base in enumerate(ALPHABET):
    _LUT[ord(_base)] = _code
    _LUT[ord(_base.lower())] = _code

# Complement of each code: A<->T, C<->G, N->N.
COMPLEMENT = np.array([3, 2, 1, 0, 4], dtype=np.uint8)


class InvalidSequence(InputError):
    """A sequence holds a character outside A, C, G, T, N (any case)."""

    code = "invalid_sequence"

    def __init__(self, name: str, position: int, char: str) -> None:
        super().__init__(
            f"sequence {name!r} has invalid character {char!r} at position {position}; "
            "accepted: A, C, G, T, N (any case)"
        )
        self.position = position


def encode(sequence: str, name: str = "0") -> np.ndarray:
    """Encode one sequence to uint8 codes with a vectorised table lookup.

    Args:
        sequence: bases, case-insensitive.
        name: how to refer to the sequence in an error message.

    Returns:
        (L,) uint8 codes.

    Raises:
        InvalidSequence: on the first character that is not A, C, G, T or N.
    """
    raw = np.frombuffer(sequence.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    codes = _LUT[raw]
    bad = np.flatnonzero(codes == _INVALID)
    if bad.size:
        if len(raw) != len(sequence):  # non-ASCII: report the character position
            position = next(i for i, ch in enumerate(sequence) if ch.upper() not in ALPHABET)
        else:
            position = int(bad[0])
        raise InvalidSequence(name, position, sequence[position])
    return codes


def decode(codes: np.ndarray) -> str:
    """Turn codes back into an upper-case string."""
    return np.frombuffer(b"ACGTN", dtype=np.uint8)[codes].tobytes().decode("ascii")


def reverse_complement(codes: np.ndarray) -> np.ndarray:
    """Reverse complement along the last axis; works on (L,) and (N, L)."""
    return COMPLEMENT[codes[..., ::-1]]


def pad_centre(codes: np.ndarray, length: int) -> np.ndarray:
    """Pad a sequence shorter than ``length`` with N on both sides, centred."""
    missing = length - codes.shape[-1]
    if missing < 0:
        raise ValueError(f"sequence of length {codes.shape[-1]} is longer than {length}")
    left = missing // 2
    out = np.full(length, N_CODE, dtype=np.uint8)
    out[left : left + codes.shape[-1]] = codes
    return out


@dataclass(frozen=True)
class DnaSpec:
    """What a DNA model takes; stored as JSON in the ONNX metadata (``preprocess``).

    Attributes:
        length: The model's window in bases (shorter sequences are N-padded, longer ones tiled).
        stride: The largest step between tiled windows of a long sequence.
    """

    length: int
    stride: int

    def __post_init__(self) -> None:
        if self.length < 1 or self.stride < 1:
            raise ValueError(f"length {self.length} and stride {self.stride} must both be >= 1")

    def to_dict(self) -> dict[str, object]:
        return {"type": "dna", "alphabet": ALPHABET, "length": self.length, "stride": self.stride,
                "reverse_complement": True, "padding": "N, centred"}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> "DnaSpec":
        return cls(int(d["length"]), int(d["stride"]))  # type: ignore[call-overload]


@dataclass(frozen=True)
class Windows:
    """Model-length windows cut from one sequence."""

    codes: np.ndarray  # (W, L) uint8
    starts: list[int]  # start of each window in the original sequence (negative when padded)


def window_starts(n: int, length: int, stride: int) -> list[int]:
    """Window starts covering ``n`` bases, symmetric under reverse complement.

    Shorter sequences get one window, N-padded and centred; when the padding is odd
    there is no exact centre, so both placements are used. Longer sequences get
    evenly spaced windows at most ``stride`` apart, the first at 0 and the last at
    the end. The set of windows of a sequence's reverse complement is exactly the
    reverse complement of its windows, so reverse-complement averaging gives a
    sequence and its reverse complement identical predictions.
    """
    span = n - length
    if span <= 0:
        left = -((-span) // 2)
        return [left] if (-span) % 2 == 0 else [left - 1, left]
    steps = -(-span // stride)  # ceil
    starts = {(i * span) // steps for i in range(steps + 1)}
    starts |= {span - s for s in starts}  # mirror: what the reverse strand's grid would be
    return sorted(starts)


def tile(codes: np.ndarray, length: int, stride: int) -> Windows:
    """Cut a sequence into model-length windows (see :func:`window_starts`); N outside the sequence."""
    n = codes.shape[-1]
    starts = window_starts(n, length, stride)
    padded = np.full(max(n, length) + 2 * length, N_CODE, dtype=np.uint8)
    padded[length : length + n] = codes
    index = (np.asarray(starts) + length)[:, None] + np.arange(length)[None, :]
    return Windows(padded[index], starts)

