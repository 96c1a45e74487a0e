"""The volume report and plausibility flags on hand-made cases with known answers, in several file orientations."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import flip_permute

from kidneyseg import io
from kidneyseg.measure import measure

SPACING = (1.5, 1.5, 3.0)  # mm; one voxel is 6.75 mm³
VOXEL_ML = 1.5 * 1.5 * 3.0 / 1000


def _scene(shape=(240, 200, 60)):
    """A CT in RAS+ voxel order (+x = patient's right): an elliptic body of soft tissue in air, its
    midline at x index 120; and an empty label map."""
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    body = ((x - 120) / 100) ** 2 + ((y - 100) / 70) ** 2 <= 1
    ct = np.where(body[:, :, None], 40, -1000).astype(np.int16) * np.ones(shape, np.int16)
    return ct, np.zeros(shape, np.uint8)


def _kidney(labels, centre_x, centre_y=80, tumour=None):
    """A 27 x 34 x 33 voxel kidney (about 200 mL) centred at (centre_x, centre_y), posterior of the
    body's centre (y = 100); ``tumour`` (x0, x1, y0, y1, z0, z1), offsets inside it, is label 2."""
    lo = (centre_x - 13, centre_y - 17, 12)
    labels[lo[0]:lo[0] + 27, lo[1]:lo[1] + 34, lo[2]:lo[2] + 33] = 1
    if tumour is not None:
        x0, x1, y0, y1, z0, z1 = tumour
        labels[lo[0] + x0:lo[0] + x1, lo[1] + y0:lo[1] + y1, lo[2] + z0:lo[2] + z1] = 2


def _load(tmp_path, ct, labels, flips, perm, name):
    """Write CT and labels in another voxel order (world positions kept) and read them back."""
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = (-180.0, -150.0, -90.0)
    ct_file, file_affine = flip_permute(ct, affine, flips, perm)
    labels_file, _ = flip_permute(labels, affine, flips, perm)
    image = io.load_ct(io.save_nifti(ct_file, file_affine, tmp_path / f"{name}-ct.nii.gz"))
    label = io.load_label_map(io.save_nifti(labels_file, file_affine, tmp_path / f"{name}-labels.nii.gz"))
    return image, label


@pytest.mark.parametrize(("flips", "perm", "name"), [
    ((), (0, 1, 2), "RAS"),
    ((0, 1), (0, 1, 2), "LPS"),
    ((0, 1, 2), (2, 1, 0), "KiTS (IPL)"),
])
def test_volumes_and_sides_in_any_file_orientation(tmp_path, flips, perm, name):
    ct, labels = _scene()
    _kidney(labels, 190)  # +x: the patient's right
    _kidney(labels, 50, tumour=(2, 12, 4, 10, 5, 15))  # the left kidney, with a 10 x 6 x 10 voxel tumour
    image, label = _load(tmp_path, ct, labels, flips, perm, name.split()[0])
    report = measure(label.array, image)
    sides = {s.side: s for s in report.sides}
    assert set(sides) == {"right", "left"}, name
    assert sides["right"].kidney_ml == pytest.approx(27 * 34 * 33 * VOXEL_ML)
    assert sides["right"].tumor_ml == 0 and sides["right"].tumors == 0
    left = sides["left"]
    assert left.tumor_ml == pytest.approx(600 * VOXEL_ML) and left.tumors == 1
    assert left.kidney_ml == pytest.approx((27 * 34 * 33 - 600) * VOXEL_ML)
    # greatest axial diameter: voxel centres 9 and 5 voxels apart (1.5 mm each), plus one voxel
    assert left.largest_tumor_axial_mm == pytest.approx(np.hypot(9 * 1.5, 5 * 1.5) + 1.5)
    assert left.largest_tumor_extent_mm == pytest.approx((15.0, 9.0, 30.0))
    assert report.flags == []


def test_flags_for_cases_built_to_trip_each():
    ct, labels = _scene()
    volume = io.canonical_volume(ct.astype(np.float32), np.diag([*SPACING, 1.0]))
    assert [f.name for f in measure(labels, volume).flags] == ["no_kidney"]

    two_on_the_right = labels.copy()
    _kidney(two_on_the_right, 190)
    _kidney(two_on_the_right, 50)
    two_on_the_right[150:160, 60:70, 5:9] = 1  # a second region on the right, beside the spine
    names = [f.name for f in measure(two_on_the_right, volume).flags]
    assert "several_regions_on_one_side" in names

    small = labels.copy()
    small[185:195, 75:85, 20:30] = 1  # 1,000 voxels: 6.75 mL
    flags = measure(small, volume).flags
    assert [f.name for f in flags] == ["kidney_volume_out_of_range"] and "7 mL" in str(flags[0])

    in_front = labels.copy()
    _kidney(in_front, 190, centre_y=150)  # anterior half of the body: not a kidney
    assert [f.name for f in measure(in_front, volume).flags] == ["kidney_not_beside_spine"]

    far_out = labels.copy()
    _kidney(far_out, 50)
    _kidney(far_out, 120)  # on the midline, but wholly on neither side: a horseshoe kidney is "both" ...
    report = measure(far_out, volume)
    assert {s.side for s in report.sides} == {"left", "both"}
    names = [f.name for f in report.flags]
    assert "kidney_not_beside_spine" not in names and "region_across_midline" in names  # ... flagged as such

    lone_tumour = labels.copy()
    _kidney(lone_tumour, 190)
    _kidney(lone_tumour, 50)
    lone_tumour[60:66, 120:126, 40:44] = 2  # touches no kidney
    assert "tumour_outside_kidney" in [f.name for f in measure(lone_tumour, volume).flags]


def test_specks_and_bulging_tumours_raise_no_flag():
    """Manual label maps hold specks of a few voxels beside a kidney, and a large tumour can bulge
    forward from a kidney in its normal place: neither is a reason to distrust the labels."""
    ct, labels = _scene()
    volume = io.canonical_volume(ct.astype(np.float32), np.diag([*SPACING, 1.0]))
    _kidney(labels, 190)
    _kidney(labels, 50)
    specks = labels.copy()
    specks[150:152, 60:62, 5:8] = 1  # 12 voxels (0.08 mL) apart from the right kidney
    specks[60:62, 120:122, 40:42] = 2  # 8 tumour voxels touching no kidney
    report = measure(specks, volume)
    assert report.flags == []
    right = {s.side: s for s in report.sides}["right"]
    assert right.regions == 1 and right.kidney_ml == pytest.approx((27 * 34 * 33 + 12) * VOXEL_ML)
    assert {s.side: s for s in report.sides}["left"].tumors == 0  # a speck is not a tumour

    one_and_a_speck = labels.copy()
    one_and_a_speck[:120] = 0  # the right kidney alone ...
    one_and_a_speck[60:62, 80:82, 40:42] = 1  # ... and a speck on the left: no 0 mL "left kidney" flagged
    assert measure(one_and_a_speck, volume).flags == []

    bulging = labels.copy()
    bulging[25:80, 97:168, 5:58] = 2  # a 1.4 L tumour growing forward from the left kidney (KiTS19 has such)
    left = np.argwhere(bulging[:120] > 0)
    assert (left[:, 1].mean() - 100) * 1.5 > 210 / 6  # the whole region is centred in the anterior third ...
    report = measure(bulging, volume)
    assert report.flags == [], report.flags  # ... but its kidney tissue is not
    moved = labels.copy()
    moved[moved == 1] = 0
    _kidney(moved, 190)
    _kidney(moved, 50, centre_y=150)  # the kidney tissue itself in the anterior third: flagged
    assert [f.name for f in measure(moved, volume).flags] == ["kidney_not_beside_spine"]


def test_predict_writes_a_report_beside_each_prediction(phantom_dir, trained_model, tmp_path):
    import csv
    import json

    from test_reliability import run_cli

    out = tmp_path / "out"
    proc = run_cli("predict", phantom_dir, out, "--model", trained_model)
    assert proc.returncode == 0, proc.stderr
    cases = sorted(p.name for p in phantom_dir.iterdir())
    for case in cases:
        document = json.loads((out / f"{case}.report.json").read_text())
        labels = io.load_label_map(out / f"{case}.nii.gz")
        total = sum(s["kidney_ml"] + s["tumor_ml"] for s in document["sides"])
        assert total == pytest.approx(np.count_nonzero(labels.array) * np.prod(labels.spacing_mm) / 1000, rel=1e-6)
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert sorted({r["case_id"] for r in rows}) == cases
    assert "kidney mL" in proc.stdout and cases[0] in proc.stdout
