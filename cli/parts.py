"""Resumable chunked output: finished chunks in ``OUT.parts/``, put together into ``OUT`` at the end.

Each chunk's output is written to a temporary file and renamed into place, so a chunk file
that exists is complete; its counts sit beside it. ``manifest.json`` names what the run is
(inputs, model, settings): a rerun with the same manifest skips the finished chunks, one with
another starts afresh. At the end the header and the chunks are concatenated in order into
``OUT`` (bgzip-compressed when ``OUT`` ends in ``.gz`` or ``.bgz``, then tabix-indexed for a
VCF), and ``OUT.parts/`` is removed. For a compressed ``OUT`` each chunk is compressed as it
is written (BGZF blocks are independent), so the end is a byte copy, not a compression of the
whole output.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

MANIFEST = "manifest.json"
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")  # the empty last block
_PART = "chunk-{:07d}.part"
_COUNTS = "chunk-{:07d}.json"


def file_identity(path: str | Path) -> dict:
    """Path, size and modification time: enough to notice that an input changed between runs."""
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def compressed(out: Path) -> bool:
    return out.name.endswith((".gz", ".bgz"))


class Parts:
    """The finished chunks of one output."""

    def __init__(self, out: Path, identity: dict, restart: bool = False) -> None:
        self.out = out
        self.compressed = compressed(out)
        self.dir = out.with_name(out.name + ".parts")
        self.identity = identity
        self.resumed = 0
        manifest = self.dir / MANIFEST
        previous = None
        if manifest.is_file() and not restart:
            try:
                previous = json.loads(manifest.read_text())
            except (OSError, ValueError):
                previous = None
        self.changed = previous is not None and previous != identity
        if previous != identity:
            self._clear()
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = manifest.with_suffix(".tmp")
            tmp.write_text(json.dumps(identity, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, manifest)

    def _clear(self) -> None:
        """Remove what a previous run of ours left (only our own files; the folder if it is then empty)."""
        if not self.dir.is_dir():
            return
        for p in self.dir.iterdir():
            if p.name == MANIFEST or (p.name.startswith("chunk-") and p.suffix in {".part", ".json", ".tmp"}):
                p.unlink()
        try:
            self.dir.rmdir()
        except OSError:
            pass

    def done(self, index: int) -> dict | None:
        """The counts of chunk ``index`` when it is finished, else None."""
        part = self.dir / _PART.format(index)
        counts = self.dir / _COUNTS.format(index)
        if not (part.is_file() and counts.is_file()):
            return None
        try:
            found = json.loads(counts.read_text())
        except (OSError, ValueError):
            return None
        self.resumed += 1
        return found

    def write(self, index: int, lines: list[str], counts: dict) -> None:
        """Chunk ``index``: its counts, then its lines, renamed into place (the part file is the mark of done)."""
        counts_path = self.dir / _COUNTS.format(index)
        tmp = counts_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(counts, sort_keys=True))
        os.replace(tmp, counts_path)
        part = self.dir / _PART.format(index)
        tmp = part.with_suffix(".tmp")
        data = ("\n".join(lines) + "\n").encode("utf-8") if lines else b""
        if self.compressed:
            from pysam import BGZFile

            sink = BGZFile(str(tmp), "wb")
            try:
                sink.write(data)
            finally:
                sink.close()
        else:
            tmp.write_bytes(data)
        os.replace(tmp, part)

    def finish(self, header: Iterable[str], chunks: int, index_vcf: bool, keep: bool = False) -> str | None:
        """Write ``OUT`` from the header and chunks ``0..chunks-1`` (then remove ``OUT.parts/`` unless ``keep``);
        returns a warning when indexing failed."""
        missing = [i for i in range(chunks) if not (self.dir / _PART.format(i)).is_file()]
        if missing:
            raise RuntimeError(f"{self.dir}: chunk {missing[0]} is missing; run the command again to finish it")
        tmp = self.out.with_name(self.out.name + ".tmp")
        head = "".join(f"{h}\n" for h in header).encode("utf-8")
        if self.compressed:  # the header's blocks, then each chunk's, each without its end marker, then one
            from pysam import BGZFile

            sink = BGZFile(str(tmp), "wb")
            try:
                sink.write(head)
            finally:
                sink.close()
            _strip_eof(tmp)
        with tmp.open("ab" if self.compressed else "wb") as sink:
            if not self.compressed:
                sink.write(head)
            for i in range(chunks):
                path = self.dir / _PART.format(i)
                with path.open("rb") as part:
                    left = path.stat().st_size - (len(BGZF_EOF) if self.compressed and _ends_with_eof(path) else 0)
                    while left > 0 and (block := part.read(min(left, 1 << 20))):
                        sink.write(block)
                        left -= len(block)
            if self.compressed:
                sink.write(BGZF_EOF)
        Path(f"{self.out}.tbi").unlink(missing_ok=True)  # an index of an earlier OUT must not outlive it
        os.replace(tmp, self.out)
        warning = None
        if index_vcf and compressed(self.out):
            import pysam

            try:
                pysam.tabix_index(str(self.out), preset="vcf", force=True, keep_original=True)
            except (OSError, ValueError) as err:  # unsorted input: the file is fine, only not indexed
                warning = f"{self.out.name} is written but not indexed ({str(err).splitlines()[0]}); sort the VCF " \
                          "(bcftools sort) to index it"
        if not keep:
            self._clear()
        return warning


def _ends_with_eof(path: Path) -> bool:
    size = path.stat().st_size
    if size < len(BGZF_EOF):
        return False
    with path.open("rb") as f:
        f.seek(size - len(BGZF_EOF))
        return f.read() == BGZF_EOF


def _strip_eof(path: Path) -> None:
    if _ends_with_eof(path):
        with path.open("r+b") as f:
            f.truncate(path.stat().st_size - len(BGZF_EOF))
