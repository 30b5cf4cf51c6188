"""What ``biomed score-variants`` writes: an annotated VCF (kipoi-veff style INFO tags) or a TSV.

INFO tags follow kipoi-veff's ``KV:<source>:<model>:<score>`` in an ID that VCF 4.3 allows
(``[A-Za-z_][0-9A-Za-z_.]*``, so ``bcftools query -f '%INFO/KV_biomed_demo_dna_DIFF'`` works):

- ``KV_biomed_<model>_REF``, ``_ALT``: p(ref), p(alt) per task;
- ``KV_biomed_<model>_DIFF``: p(alt) - p(ref);
- ``KV_biomed_<model>_LOGIT_DIFF``: logit(p(alt)) - logit(p(ref));
- for a regression model (``biomed.outputs.semantics``): ``_REF``, ``_ALT`` (the values), ``_DIFF``
  (alt - ref) and ``_LOG2FC`` (log2(alt / ref), ``.`` where a value is <= 0) instead;
- ``KV_biomed_<model>_REF_MISMATCH``: a flag, REF disagrees with the reference (the record is kept, not scored).

Score tags are ``Number=A``: one value per ALT allele, comma-separated, each the task values
``|``-joined in the header's task order; ``.`` for an ALT that is not scored (indels, symbolic
alleles, a contig the reference lacks...). ``bcftools norm -m-`` therefore splits them with the
record. Each value is written as the shortest decimal that reads back as the same float32 (the
model's precision: no float32 noise in the last digits).

The header says which reference the scores are relative to: ``##reference=<FASTA file name>``
(the name only, never a local path), and declares every contig the records
use (the reference's, named as the input names them, and those the reference lacks, without a length).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from biomed.outputs import Producer
from biomed.outputs.semantics import Semantics
from biomed.variant_stream import Chunk, VcfRecord

SCORES = (("REF", "p(ref)", "probability with the reference allele"),
          ("ALT", "p(alt)", "probability with the alternative allele"),
          ("DIFF", "p(alt) - p(ref)", "change in probability"),
          ("LOGIT_DIFF", "logit(p(alt)) - logit(p(ref))", "change in log-odds"))
VALUE_SCORES = (("REF", "value(ref)", "value with the reference allele"),
                ("ALT", "value(alt)", "value with the alternative allele"),
                ("DIFF", "value(alt) - value(ref)", "change in value"),
                ("LOG2FC", "log2(value(alt) / value(ref))", "log2 fold change; . where a value is <= 0"))


def scores(semantics: Semantics) -> tuple[tuple[str, str, str], ...]:
    """The score tags (key, what, description) of a model's output."""
    return VALUE_SCORES if semantics.regression else SCORES


def texts(values: np.ndarray) -> list[list[str]]:
    """Each row of ``values`` (n, k) as decimals: the shortest that reads back as the same float32 (numpy's), ``.``
    for a value that does not exist (NaN: a fold change of <= 0)."""
    rows = np.asarray(values, dtype=np.float32).reshape(len(values), -1)
    return [[str(v) if v == v else "." for v in row] for row in rows]


_NOT_ID = re.compile(r"[^0-9A-Za-z_.]")


def sanitise(name: str) -> str:
    """A model name as a VCF 4.3 ID part: characters outside ``[0-9A-Za-z_.]`` become ``_``."""
    return _NOT_ID.sub("_", name) or "_"


def _quote(text: str) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Effects:
    """Scores of a chunk's alleles, each (n, T) in task order: ref, alt and the two effects of the model's
    output (``Semantics.effect_names``: diff and log-odds difference, or diff and log2 fold change)."""

    ref: np.ndarray
    alt: np.ndarray
    diff: np.ndarray
    logit_diff: np.ndarray  # the log-scale effect: log-odds difference, or log2 fold change for values

    def by_tag(self) -> tuple[np.ndarray, ...]:
        return self.ref, self.alt, self.diff, self.logit_diff


class VcfAnnotator:
    """The output header and each annotated record of one model's scores."""

    def __init__(self, model: Producer, reference: str, contigs: dict[str, int], reverse_complement: bool) -> None:
        """``reference``: the FASTA's file name (no path); ``contigs``: its lengths under the input's names (the
        caller may update them, and ``missing``, the contigs the reference lacks, before the final ``header``)."""
        self.model, self.reference, self.contigs, self.rc = model, reference, contigs, reverse_complement
        self.missing: list[str] = []
        self.prefix = f"KV_biomed_{sanitise(model.name)}"
        self.scores = scores(model.output)
        self.tags = [f"{self.prefix}_{key}" for key, _, _ in self.scores]
        self.flag = f"{self.prefix}_REF_MISMATCH"
        self.owned = {*self.tags, self.flag}
        self._strip = False  # set when the input already carries these tags (re-annotation)

    def header(self, lines: Sequence[str]) -> list[str]:
        """The input's header lines with ours added before ``#CHROM`` (earlier copies of ours replaced)."""
        meta = [h.rstrip("\r\n") for h in lines if h.startswith("##")]
        column = next((h.rstrip("\r\n") for h in lines if h.startswith("#CHROM")), None)
        if column is None:
            column = "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"
        columns = column.split("\t")
        if len(columns) < 8:
            column = "\t".join(columns + ["QUAL", "FILTER", "INFO"][len(columns) - 5 :])
        kept, declared, reference = [], set(), False
        for h in meta:
            found = re.match(r"##(\w+)=<ID=([^,>]+)", h)
            if found and found.group(1) == "INFO" and found.group(2) in self.owned:
                self._strip = True
                continue
            if found and found.group(1) == "biomed_model" and found.group(2) == self.prefix:
                continue
            if found and found.group(1) == "contig":
                declared.add(found.group(2))
            reference = reference or h.startswith("##reference=")
            kept.append(h)
        if not kept or not kept[0].startswith("##fileformat="):
            kept.insert(0, "##fileformat=VCFv4.2")
        tasks = "|".join(self.model.labels)
        ours = [] if reference else [f"##reference={self.reference}"]  # the input's own stays when it has one
        ours += [f"##contig=<ID={name},length={size}>" for name, size in self.contigs.items() if name not in declared]
        ours += [f"##contig=<ID={name}>" for name in self.missing if name not in declared]
        for (key, what, long), tag in zip(self.scores, self.tags):
            ours.append(f"##INFO=<ID={tag},Number=A,Type=String,Description="
                        f"{_quote(f'biomed {self.model.name} {what} ({long}) per ALT allele; task values |-joined in the order {tasks}')}>")
        ours.append(f"##INFO=<ID={self.flag},Number=0,Type=Flag,Description="
                    f"{_quote('REF does not match the reference FASTA at this position; the record is not scored')}>")
        ours.append(f"##biomed_model=<ID={self.prefix},Model={_quote(self.model.name)},Version={_quote(self.model.version)},"
                    f"ONNX_sha256={_quote(self.model.sha256)},Tasks={_quote(tasks)},Window={self.model.length},"
                    f"ReverseComplement={'true' if self.rc else 'false'},Reference={_quote(self.reference)},"
                    f"Tags={_quote(','.join(self.tags))}>")
        return kept + ours + [column]

    def lines(self, chunk: Chunk, effects: Effects | None) -> list[str]:
        """The chunk's records with their INFO annotated, in input order.

        A record with one ALT gets its four tags from one format of its row (the common case, and
        most of the time a chunk takes); others are put together ALT by ALT.
        """
        n = len(chunk.record)
        rows: list[list[str]] = []
        whole: list[str] = []
        if effects is not None and n:
            t = effects.ref.shape[1]
            rows = texts(np.concatenate(effects.by_tag(), axis=1))  # (n, 4T): the tags' task values side by side
            template = ";".join(f"{tag}=" + "|".join(["%s"] * t) for tag in self.tags)
            whole = [template % tuple(row) for row in rows]
        record_of, alt_of = chunk.record.tolist(), chunk.alt_index.tolist()
        out, at = [], 0
        for i, record in enumerate(chunk.records):
            first = at
            while at < n and record_of[at] == i:  # the scored alleles, in record then ALT order
                at += 1
            if chunk.mismatch[i]:
                added = [self.flag]
            elif at == first or not whole:
                added = []
            elif len(record.alts) == 1:
                added = [whole[first]]
            else:
                added = self._per_alt(record, {alt_of[r]: rows[r] for r in range(first, at)})
            out.append(self._annotate(record, added))
        return out

    def _per_alt(self, record: VcfRecord, scored: dict[int, list[str]]) -> list[str]:
        """Number=A values of a multi-allelic record: one value per ALT, '.' where an ALT is not scored."""
        t = len(self.model.labels)
        return [f"{tag}=" + ",".join("|".join(scored[a][k * t : (k + 1) * t]) if a in scored else "."
                                     for a in range(len(record.alts)))
                for k, tag in enumerate(self.tags)]

    def _annotate(self, record: VcfRecord, added: list[str]) -> str:
        fields = record.line.split("\t", 8)  # FORMAT and the samples stay one string
        if len(fields) < 8:
            fields += ["."] * (8 - len(fields))
        info = fields[7]
        parts = [] if info in ("", ".") else info.split(";")
        if self._strip:
            parts = [p for p in parts if p.split("=", 1)[0] not in self.owned]
        parts += added
        fields[7] = ";".join(parts) if parts else "."
        return "\t".join(fields)


class TsvWriter:
    """One row per SNV allele: chrom, pos (1-based), id, ref, alt, per task p_ref/p_alt/diff/log_odds_diff (for a
    regression model ref/alt/diff/log2_fold_change, ``NA`` where no fold change exists), status."""

    def __init__(self, labels: Sequence[str], semantics: Semantics = Semantics()) -> None:
        self.labels = list(labels)
        self.columns = ("ref", "alt", *semantics.effect_names) if semantics.regression else \
            ("p_ref", "p_alt", "diff", "log_odds_diff")

    def header(self, lines: Sequence[str] = ()) -> list[str]:
        per_task = [f"{t}_{c}" for t in self.labels for c in self.columns]
        return ["\t".join(["chrom", "pos", "id", "ref", "alt", *per_task, "status"])]

    def lines(self, chunk: Chunk, effects: Effects | None) -> list[str]:
        rows = {(r, a): row for row, (r, a) in enumerate(zip(chunk.record.tolist(), chunk.alt_index.tolist()))}
        t = len(self.labels)
        if effects is not None and rows:
            stacked = np.stack(effects.by_tag(), axis=2).reshape(len(rows), 4 * t)  # per task: ref, alt, diff, lod
            values = ["\t".join(c if c != "." else "NA" for c in row) for row in texts(stacked)]
        else:
            values = []
        missing = "\t".join(["NA"] * (4 * t))
        out = []
        for i, record in enumerate(chunk.records):
            name = record.name
            for a, (alt, status) in enumerate(zip(record.alts, chunk.status[i])):
                if status not in ("snv", "ref_mismatch"):
                    continue
                vid = name if len(record.alts) == 1 else f"{name}_{alt}"
                cells = values[rows[(i, a)]] if status == "snv" else missing
                out.append("\t".join([record.chrom, str(record.pos), vid, record.ref, alt, cells,
                                      "ok" if status == "snv" else "ref_mismatch"]))
        return out
