"""A reader of a bigWig file's zoom records, straight from the bytes (the UCSC format, as Kent's bbiFile.h lays it
out), for the tests: what a genome browser zoomed out draws, independent of any bigWig library.

Each zoom level is a list of records ``(chrom, start, end, valid, minimum, maximum, sum, sum_of_squares)``: the
summary of the bases ``[start, end)`` that carry a value (``valid`` of them).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

MAGIC = 0x888FFC26
TREE_MAGIC = 0x2468ACE0  # the R-tree index of data or zoom blocks
BPT_MAGIC = 0x78CA8C91  # the chromosome B+ tree
RECORD = struct.Struct("<IIIIffff")


def _chroms(data: bytes, offset: int) -> dict[int, str]:
    magic, _block, key_size, _val_size, _count, _ = struct.unpack_from("<IIIIQQ", data, offset)
    if magic != BPT_MAGIC:
        raise ValueError("not a bigWig chromosome tree")
    names: dict[int, str] = {}

    def node(at: int) -> None:
        leaf, _, count = struct.unpack_from("<BBH", data, at)
        at += 4
        for _ in range(count):
            key = data[at : at + key_size].rstrip(b"\0").decode()
            at += key_size
            if leaf:
                ident, _size = struct.unpack_from("<II", data, at)
                names[ident] = key
                at += 8
            else:
                (child,) = struct.unpack_from("<Q", data, at)
                node(child)
                at += 8

    node(offset + 32)
    return names


def _blocks(data: bytes, offset: int) -> list[tuple[int, int]]:
    """(offset, size) of every data block the R-tree at ``offset`` indexes, in file order."""
    if struct.unpack_from("<I", data, offset)[0] != TREE_MAGIC:
        raise ValueError("not a bigWig R-tree index")
    found: list[tuple[int, int]] = []

    def node(at: int) -> None:
        leaf, _, count = struct.unpack_from("<BBH", data, at)
        at += 4
        for _ in range(count):
            if leaf:
                found.append(struct.unpack_from("<QQ", data, at + 16))
                at += 32
            else:
                node(struct.unpack_from("<Q", data, at + 16)[0])
                at += 24

    node(offset + 48)
    return sorted(found)


def zoom_levels(path: str | Path) -> list[tuple[int, list[tuple]]]:
    """Every zoom level of the file: (reduction in bases, its records in file order)."""
    data = Path(path).read_bytes()
    magic, _version, zooms, chrom_tree, _full, _index, _f, _d, _auto, _total, buffer = struct.unpack_from(
        "<IHHQQQHHQQI", data, 0)
    if magic != MAGIC:
        raise ValueError(f"{path} is not a bigWig file")
    names = _chroms(data, chrom_tree)
    levels = []
    for z in range(zooms):
        reduction, _, _data_offset, index_offset = struct.unpack_from("<IIQQ", data, 64 + 24 * z)
        records = []
        for at, size in _blocks(data, index_offset):
            block = data[at : at + size]
            block = zlib.decompress(block) if buffer else block
            for fields in RECORD.iter_unpack(block):
                records.append((names[fields[0]], *fields[1:]))
        levels.append((reduction, records))
    return levels
