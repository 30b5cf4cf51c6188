"""Extract JASPAR CORE vertebrates from the SQLite database in the pyjaspar wheel.

A one-off tool: its output, ``biomed/data/jaspar_core_vertebrates.json``, is
committed, so neither serving nor training needs pyjaspar at run time.

    python scripts/extract_jaspar.py [--release JASPAR2026] [--out biomed/data]

Keeps the latest version of every CORE matrix whose taxonomic group is
vertebrates; counts are rounded to two decimals (almost all are integers).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from importlib.metadata import version
from pathlib import Path

import pyjaspar

# Papers to cite per release; JASPAR data are CC BY 4.0.
CITATIONS = {
    "JASPAR2024": (
        "Rauluseviciute I, Riudavets-Puig R, Blanc-Mathieu R, et al. JASPAR 2024: 20th "
        "anniversary of the open-access database of transcription factor binding profiles. "
        "Nucleic Acids Res. 2024;52(D1):D174-D182. doi:10.1093/nar/gkad1059"
    ),
    "JASPAR2026": (
        "Ovek Baydar D, Rauluseviciute I, Aronsen DR, et al. JASPAR 2026: expansion of "
        "transcription factor binding profiles and integration of deep learning models. "
        "Nucleic Acids Res. 2026;54(D1):D184-D193. doi:10.1093/nar/gkaf1209"
    ),
}
LICENSE = (
    "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/); JASPAR, https://jaspar.elixir.no/"
)
LATEST_QUERY = """
SELECT m.ID, m.BASE_ID, m.VERSION, m.NAME
FROM MATRIX m JOIN MATRIX_ANNOTATION a ON a.ID = m.ID AND a.TAG = 'tax_group'
WHERE m.COLLECTION = 'CORE' AND a.VAL = 'vertebrates'
  AND m.VERSION = (SELECT MAX(v.VERSION) FROM MATRIX v
                   WHERE v.BASE_ID = m.BASE_ID AND v.COLLECTION = 'CORE')
ORDER BY m.BASE_ID
"""


def newest_release(data_dir: Path) -> str:
    """Return the newest ``JASPARyyyy`` release with a SQLite file in ``data_dir``."""
    return max(p.stem for p in data_dir.glob("JASPAR*.sqlite"))


def _number(value: float) -> float | int:
    rounded = round(float(value), 2)
    return int(rounded) if rounded.is_integer() else rounded


def read_matrices(db: Path) -> list[dict]:
    """Read the latest CORE vertebrate matrices as ``{id, name, counts}`` dicts."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(LATEST_QUERY).fetchall()
        matrices = []
        for local_id, base_id, ver, name in rows:
            cells = conn.execute(
                "SELECT row, col, val FROM MATRIX_DATA WHERE ID = ? ORDER BY col", (local_id,)
            ).fetchall()
            counts = {base: [] for base in "ACGT"}
            for base, _, val in cells:
                counts[base.upper()].append(_number(val))
            if len({len(c) for c in counts.values()}) != 1:
                raise ValueError(f"matrix {base_id}.{ver} has ragged rows")
            matrices.append(
                {"id": f"{base_id}.{ver}", "name": name, "counts": [counts[b] for b in "ACGT"]}
            )
    return matrices


def main(argv: list[str] | None = None) -> None:
    """Write the JSON bundle and the citation note."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data_dir = Path(pyjaspar.__file__).parent / "data"
    parser.add_argument("--release", default=newest_release(data_dir), choices=sorted(CITATIONS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "biomed" / "data")
    args = parser.parse_args(argv)

    matrices = read_matrices(data_dir / f"{args.release}.sqlite")
    bundle = {
        "release": args.release,
        "collection": "CORE",
        "tax_group": "vertebrates",
        "alphabet": "ACGT",
        "source": f"pyjaspar {version('pyjaspar')} wheel",
        "citation": CITATIONS[args.release],
        "license": LICENSE,
        "motifs": matrices,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "jaspar_core_vertebrates.json"
    body = ",\n".join(json.dumps(m, separators=(",", ":")) for m in matrices)
    head = json.dumps({k: v for k, v in bundle.items() if k != "motifs"}, indent=1)[:-2]
    out.write_text(f'{head},\n "motifs": [\n{body}\n]}}\n', encoding="utf-8")
    json.loads(out.read_text(encoding="utf-8"))  # the hand-joined file must parse
    (args.out / "JASPAR_CITATION.md").write_text(_citation_md(bundle), encoding="utf-8")
    print(f"{out}: {len(matrices)} matrices, {out.stat().st_size / 1e6:.2f} MB")


def _citation_md(bundle: dict) -> str:
    return (
        "# JASPAR motifs\n\n"
        f"`jaspar_core_vertebrates.json` holds the {bundle['collection']} collection, taxonomic "
        f"group {bundle['tax_group']}, of {bundle['release']} (latest version of each matrix, "
        f"{len(bundle['motifs'])} matrices), extracted from the {bundle['source']} by "
        "`scripts/extract_jaspar.py`.\n\n"
        f"License: {bundle['license']}.\n\n"
        f"Please cite:\n\n> {bundle['citation']}\n"
    )


if __name__ == "__main__":
    main()
