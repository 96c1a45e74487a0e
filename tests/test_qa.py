"""The QA page: its content on a hand-made case, and what a real browser shows of it (headless Chromium)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from test_measure import SPACING, _kidney, _scene

from kidneyseg import io
from kidneyseg.measure import measure
from kidneyseg.qa import write_qa_page

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The flags Chromium needs here as root, without network, in a fresh profile (see .ci/run, which installs it).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--hide-scrollbars"]


def _case(tmp_path):
    """Two kidneys, the left with a tumour, and a stray region in front of the right one (flagged)."""
    ct, labels = _scene()
    _kidney(labels, 190)
    _kidney(labels, 50, tumour=(2, 20, 4, 26, 5, 25))
    labels[150:170, 140:160, 20:30] = 1  # 27 mL, anterior: two flags
    ct = np.where(labels == 1, 150, ct).astype(np.float32)
    ct[labels == 2] = 60
    volume = io.canonical_volume(ct, np.diag([*SPACING, 1.0]), path=tmp_path / "ct.nii.gz")
    report = measure(labels, volume)
    warnings = ["ct.nii.gz: <slope> & intercept were missing; HU assumed"]
    path = write_qa_page(tmp_path / "case.qa.html", "case_x", volume, labels, report, warnings)
    return path, report


def test_page_holds_numbers_flags_warnings_and_inline_images(tmp_path):
    path, report = _case(tmp_path)
    page = path.read_text()
    assert [f.name for f in report.flags] == ["kidney_not_beside_spine", "several_regions_on_one_side"]
    assert "several_regions_on_one_side" in page and "2 separate regions on the right" in page
    assert "&lt;slope&gt; &amp; intercept were missing" in page  # escaped, not markup
    left = {s.side: s for s in report.sides}["left"]
    assert f"{left.kidney_ml:.1f}" in page and f"{left.largest_tumor_axial_mm:.1f}" in page
    sources = re.findall(r"src='([^']*)'", page)
    assert len(sources) == 3  # right kidney; left kidney; left tumour
    assert all(s.startswith("data:image/png;base64,") for s in sources)  # self-contained
    assert "http" not in page.replace("http-equiv", "")  # nothing fetched from anywhere


def test_chromium_shows_the_outlines_and_the_table(tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed: .ci/run installs the Debian package 'chromium'")
        pytest.skip("Chromium is not installed (apt-get install chromium); CI installs it")
    path, report = _case(tmp_path)
    shot = tmp_path / "shot.png"
    common = [CHROMIUM, *CHROMIUM_ARGS, f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run([*common, "--window-size=1300,2400", f"--screenshot={shot}", path.as_uri()],
                   check=True, capture_output=True, timeout=120)
    dom = subprocess.run([*common, "--dump-dom", path.as_uri()], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    import matplotlib.image

    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).round().astype(int)
    assert pixels.std() > 30  # not a blank page
    # The outlines' pure colours (kidney + tumour green, tumour red) are drawn in the image areas.
    green = np.all(np.abs(pixels - (0, 255, 0)) <= 40, axis=-1).sum()
    red = np.all(np.abs(pixels - (255, 0, 0)) <= 40, axis=-1).sum()
    assert green > 500 and red > 200, (green, red)
    rows_with_green = np.flatnonzero(np.all(np.abs(pixels - (0, 255, 0)) <= 40, axis=-1).any(axis=1))
    assert rows_with_green.max() - rows_with_green.min() > 600  # outlines in several figures down the page
    text = re.sub(r"<[^>]+>", " ", dom)
    left = {s.side: s for s in report.sides}["left"]
    assert "kidney mL" in text and f"{left.kidney_ml:.1f}" in text and "several_regions_on_one_side" in text


def test_predict_writes_a_qa_page_unless_told_not_to(phantom_dir, trained_model, tmp_path):
    from test_reliability import run_cli

    image = phantom_dir / "case_00000" / "imaging.nii.gz"
    assert run_cli("predict", str(image), str(tmp_path / "a"), "--model", str(trained_model)).returncode == 0
    page = (tmp_path / "a" / "imaging.qa.html").read_text()
    assert "kidneyseg QA: imaging" in page and "data:image/png;base64," in page
    assert run_cli("predict", str(image), str(tmp_path / "b"), "--model", str(trained_model),
                   "--no-qa").returncode == 0
    assert (tmp_path / "b" / "imaging.nii.gz").exists() and not (tmp_path / "b" / "imaging.qa.html").exists()


def test_a_cases_warnings_reach_its_report_and_qa_page_and_are_printed_once(phantom_dir, trained_model, tmp_path):
    import json

    import nibabel as nib
    from test_reliability import run_cli

    image = nib.load(phantom_dir / "case_00000" / "imaging.nii.gz")
    bare = nib.Nifti1Image(np.asarray(image.dataobj), image.affine)
    bare.set_qform(None, code=0)
    bare.set_sform(None, code=0)  # orientation unknown: io warns
    nib.save(bare, tmp_path / "bare.nii.gz")
    proc = run_cli("predict", str(tmp_path / "bare.nii.gz"), str(tmp_path / "out"), "--model", str(trained_model))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("neither a qform nor an sform is set") == 1
    report = json.loads((tmp_path / "out" / "bare.report.json").read_text())
    assert len(report["warnings"]) == 1 and "neither a qform nor an sform" in report["warnings"][0]
    assert "neither a qform nor an sform is set" in (tmp_path / "out" / "bare.qa.html").read_text()
