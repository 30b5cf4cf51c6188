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


def encode_many(sequences: list[str], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Every sequence's codes in one table lookup: (all codes joined, offsets) with ``offsets[i]:offsets[i + 1]``
    the i-th sequence's codes. Errors are :func:`encode`'s, for the first bad sequence in order.

    Raises:
        InvalidSequence: naming the first sequence with a character outside A, C, G, T, N.
    """
    joined = "".join(sequences)
    raw = joined.encode("utf-8", "surrogatepass")
    offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
    np.cumsum([len(q) for q in sequences], out=offsets[1:])
    if len(raw) != len(joined):  # a non-ASCII character somewhere: the first bad sequence raises its own error
        for q, name in zip(sequences, names):
            encode(q, name)
    codes = _LUT[np.frombuffer(raw, dtype=np.uint8)]
    bad = codes == _INVALID
    if bad.any():
        first = int(np.searchsorted(offsets, int(bad.argmax()), side="right")) - 1
        encode(sequences[first], names[first])  # raises, naming the position and the character
    return codes, offsets


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
        reverse_complement: Whether both strands are averaged when a request does not say (an imported
            model's description may say not).
    """

    length: int
    stride: int
    reverse_complement: bool = True

    def __post_init__(self) -> None:
        if self.length < 1 or self.stride < 1:
            raise ValueError(f"length {self.length} and stride {self.stride} must both be >= 1")

    def to_dict(self) -> dict[str, object]:
        return {"type": "dna", "alphabet": ALPHABET, "length": self.length, "stride": self.stride,
                "reverse_complement": self.reverse_complement, "padding": "N, centred"}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> "DnaSpec":
        return cls(int(d["length"]), int(d["stride"]), bool(d.get("reverse_complement", True)))  # type: ignore[call-overload]


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


def tile_many(codes: np.ndarray, offsets: np.ndarray, length: int, stride: int) -> tuple[np.ndarray, list[int],
                                                                                         list[list[int]]]:
    """:func:`tile` for many sequences at once (as :func:`encode_many` returns them), sequences of one length
    tiled together.

    Returns:
        The windows of every sequence in one (R, L) array; per sequence (in input order) the row of its
        first window and its window starts (see :func:`window_starts`).
    """
    lengths = np.diff(offsets).tolist()
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(n, []).append(i)
    blocks, firsts, starts_of, row = [], [0] * len(lengths), [[] for _ in lengths], 0
    for n, members in groups.items():
        starts = window_starts(n, length, stride)
        index = np.asarray(members)
        padded = np.full((len(members), max(n, length) + 2 * length), N_CODE, dtype=np.uint8)
        padded[:, length : length + n] = codes[offsets[index][:, None] + np.arange(n)[None, :]]
        cols = (np.asarray(starts) + length)[:, None] + np.arange(length)[None, :]  # (W, L)
        blocks.append(padded[:, cols].reshape(-1, length))  # (members x W, L), each member's windows together
        for j, i in enumerate(members):
            firsts[i], starts_of[i] = row + j * len(starts), starts
        row += len(members) * len(starts)
    rows = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
    return rows, firsts, starts_of


def tile(codes: np.ndarray, length: int, stride: int) -> Windows:
    """Cut a sequence into model-length windows (see :func:`window_starts`); N outside the sequence."""
    n = codes.shape[-1]
    starts = window_starts(n, length, stride)
    padded = np.full(max(n, length) + 2 * length, N_CODE, dtype=np.uint8)
    padded[length : length + n] = codes
    index = (np.asarray(starts) + length)[:, None] + np.arange(length)[None, :]
    return Windows(padded[index], starts)

