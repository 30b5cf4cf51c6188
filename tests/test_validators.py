"""Every kind of DICOM object the project writes, through the field's own validators: dicom3tools' ``dciodvfy`` and
PixelMed's SR and instance validators (Debian ``dicom3tools``, ``libpixelmed-java``; docs/conformance.md).

The objects: the demo generator's files (CT, CR and DX, both polarities), the SR of a classified instance (a CT
with its image library, one replacing an earlier SR, a multi-frame source, a DX without pixel spacing, a regression
model's), the Parametric
Map over a CT and the Secondary Capture over a CR and a DX. ``dciodvfy`` must find no error and only the warnings
docs/conformance.md lists, each with the part of the standard that allows it. PixelMed's SR validator (the IOD and
TID 1500) must find neither an error nor a warning. PixelMed's instance validator must find no error or warning;
the Debian package's IOD tables know none of these SOP classes, so it answers "IOD (SOP Class) unrecognized" for
exactly the classes the conformance statement lists (a newer package that knows one fails here until its findings
are read). The JVM is started once per file (its XSLT compile is most of the ~5 s), two at a time.
"""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest

from biomed.outputs import Producer, dicom_maps, sr
from biomed.outputs.semantics import Semantics
from tools import REPO, require_file, require_tool
from training.demo.dicom_demo import generate_images

PIXELMED = "/usr/share/java/pixelmed.jar"
INSTALL_PIXELMED = "apt-get install libpixelmed-java default-jre-headless"
JAVA_OPTIONS = ("-XX:TieredStopAtLevel=1", "-Djdk.xml.xpathExprOpLimit=0", "-Djdk.xml.xpathExprGrpLimit=0",
                "-Djdk.xml.xpathTotalOpLimit=0")  # PixelMed's documented limits off (its XPath is large)
PRODUCER = Producer("demo-image", "20250101-000000-abcdef01", "ab" * 32, ("cavity", "nodule", "normal"))
REGRESSION = Producer("demo-volume", "20250101-000000-abcdef02", "cd" * 32, ("volume", "density", "score"),
                      output=Semantics("values", "none", ("mL", "[hnsf'U]", "1")))
# dciodvfy's warnings that remain, as docs/conformance.md explains them (a regular expression each).
ALLOWED_WARNINGS = {
    "private coding scheme": r"CodingSchemeDesignator\(0008,0102\)\[1\]> - Unrecognized defined term = <99BIOMED>$",
    "QUANTITY": r"(ImageType\(0008,0008\)|FrameType\(0008,9007\))\[4\]> - Unrecognized defined term = <QUANTITY>$",
}
CONFORMANCE = REPO / "docs" / "conformance.md"


def _first(folder: Path, **wanted: str) -> Path:
    for path in sorted(folder.rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if all(str(ds.get(k)) == v for k, v in wanted.items()):
            return path
    raise AssertionError(f"the demo has no file with {wanted}")


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> a Part-10 file: every demo file, and every output over demo sources."""
    root = tmp_path_factory.mktemp("validators")
    demo = generate_images(root / "demo", n=24, seed=0)
    files = {f"demo {p.parent.name}/{p.name}": p for p in sorted(demo.rglob("*.dcm"))}
    ct, cr, dx = (pydicom.dcmread(_first(demo, Modality=m), stop_before_pixels=True) for m in ("CT", "CR", "DX"))
    rng = np.random.default_rng(0)
    probs = np.array([[0.2, 0.3, 0.5]])
    multi = pydicom.dcmread(_first(demo, Modality="CT"), stop_before_pixels=True)
    multi.SOPClassUID, multi.NumberOfFrames = pydicom.uid.EnhancedCTImageStorage, 2  # the header is all an SR reads
    earlier = sr.Previous(str(ct.StudyInstanceUID), sr.series_uid(str(ct.StudyInstanceUID), PRODUCER),
                          sr.sr_uid("ct, as first sent", PRODUCER))
    built = {
        "sr ct": sr.sr_bytes(sr.build_sr(ct, probs, PRODUCER, "ct")),
        "sr ct corrected": sr.sr_bytes(sr.build_sr(ct, probs, PRODUCER, "ct, corrected", previous=earlier)),
        "sr multi-frame": sr.sr_bytes(sr.build_sr(multi, np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]]),
                                                  PRODUCER, "multi")),
        "sr dx regression": sr.sr_bytes(sr.build_sr(dx, np.array([[12.5, 40.0, -3.0]]), REGRESSION, "dx")),
    }
    values = rng.normal(0, 0.1, (ct.Rows, ct.Columns)).astype(np.float32)
    built["parametric map ct"], kind = dicom_maps.explanation_dicom(
        ct, values, np.zeros((ct.Rows, ct.Columns, 3), np.uint8), "nodule", "demo-image", "1", 0, 1)
    assert kind == "parametric_map"
    for name, source in (("secondary capture cr", cr), ("secondary capture dx", dx)):
        rgb = rng.integers(0, 255, (source.Rows, source.Columns, 3), dtype=np.uint8)
        built[name], kind = dicom_maps.explanation_dicom(source, np.zeros((1, 1), np.float32), rgb, "nodule",
                                                         "demo-image", "1", 0, 1)
        assert kind == "secondary_capture"
    for name, data in built.items():
        path = root / f"{name.replace(' ', '-')}.dcm"
        path.write_bytes(data)
        files[name] = path
    return files


def _run(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    return done.stdout + done.stderr


def test_dciodvfy_finds_no_error_and_only_the_documented_warnings(objects: dict[str, Path]) -> None:
    dciodvfy = require_tool("dciodvfy", "apt-get install dicom3tools")
    with ThreadPoolExecutor(2) as pool:
        reports = dict(zip(objects, pool.map(lambda p: _run([dciodvfy, "-new", str(p)]), objects.values())))
    kinds = {name.split(" ")[0] for name in reports}
    assert kinds == {"demo", "sr", "parametric", "secondary"}
    findings = []
    for name, report in reports.items():
        for line in report.splitlines():
            if line.startswith("Error") or (line.startswith("Warning") and not any(
                    re.search(pattern, line) for pattern in ALLOWED_WARNINGS.values())):
                findings.append(f"{name}: {line}")
    assert not findings, "\n".join(findings)
    text = CONFORMANCE.read_text()
    for pattern in ("Unrecognized defined term = <99BIOMED>", "Unrecognized defined term = <QUANTITY>"):
        assert pattern in text, f"docs/conformance.md does not explain dciodvfy's {pattern!r}"


def _pixelmed(validator: str, path: Path) -> str:
    return _run([require_tool("java", INSTALL_PIXELMED), *JAVA_OPTIONS, "-cp", PIXELMED,
                 f"com.pixelmed.validate.{validator}", str(path)])


@pytest.mark.slow
def test_pixelmed_finds_nothing(objects: dict[str, Path]) -> None:
    require_file(PIXELMED, INSTALL_PIXELMED)
    require_tool("java", INSTALL_PIXELMED)
    srs = {n: p for n, p in objects.items() if n.startswith("sr ")}
    by_class: dict[str, tuple[str, Path]] = {}  # one file per other SOP class (and the demo's three)
    for name, path in objects.items():
        sop_class = str(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID)
        if name not in srs:
            by_class.setdefault(sop_class, (name, path))
    jobs = [("DicomSRValidator", n, p) for n, p in srs.items()] + \
        [("DicomInstanceValidator", n, p) for n, p in by_class.values()]
    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda job: (job[1], _pixelmed(job[0], job[2])), jobs))
    findings, unrecognized = [], set()
    for name, report in reports:
        lines = report.splitlines()
        findings += [f"{name}: {line}" for line in lines if re.match(r"(Error|Warning)", line, re.I)
                     or "not in template" in line]
        if name.startswith("sr "):
            assert "Root Template Validation Complete" in report and "IOD validation complete" in report, report
        elif lines == ["IOD (SOP Class) unrecognized"]:
            unrecognized.add(pydicom.uid.UID(str(pydicom.dcmread(objects[name], stop_before_pixels=True).SOPClassUID)))
        else:
            assert "IOD validation complete" in report, report
    assert not findings, "\n".join(findings)
    text = CONFORMANCE.read_text()
    assert {u.name for u in unrecognized if u.name not in text} == set(), "docs/conformance.md must list them"


def test_the_conformance_statement_names_every_sop_class_and_transfer_syntax() -> None:
    """docs/conformance.md lists what the receiver accepts and what the service writes, by UID."""
    from biomed.outputs import DICOM_STORAGE
    from service.dicom.pipeline import IMAGE_STORAGE
    from service.dicom.scp import _transfer_syntaxes

    text = CONFORMANCE.read_text()
    missing = [u for u in (*IMAGE_STORAGE, *DICOM_STORAGE, *_transfer_syntaxes()) if f"`{u}`" not in text]
    assert not missing, f"docs/conformance.md does not list {missing}"
