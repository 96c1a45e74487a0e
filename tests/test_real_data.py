"""Real files from ../shared/data (KiTS19 label maps, a real CT and its DICOM series); skipped when absent."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from conftest import SHARED_DATA

from kidneyseg import io
from kidneyseg.inference import segment

KITS = SHARED_DATA / "kits19-labels"
REAL_CT = SHARED_DATA / "real-ct"
pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared reference data not found at {SHARED_DATA}")


def test_kits_label_map_roundtrips_exactly(tmp_path):
    path = KITS / "case_00148" / "segmentation.nii.gz"
    source = nib.load(path)
    vol = io.load_label_map(path)
    assert nib.aff2axcodes(source.affine) == ("I", "P", "L")
    assert vol.array.shape == source.shape[::-1] and nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    assert set(np.unique(vol.array)) == {0, 1, 2}
    out = io.save_label_map(vol.array, vol, tmp_path / "copy.nii.gz")
    copy = nib.load(out)
    assert np.array_equal(np.asanyarray(copy.dataobj), np.asanyarray(source.dataobj))
    assert np.allclose(copy.affine, source.affine)
    assert (int(copy.header["qform_code"]), int(copy.header["sform_code"])) == (0, 2)


def test_real_ct_in_hu_with_kidneys_where_the_reference_masks_are():
    vol = io.load_ct(REAL_CT / "ct.nii.gz")
    assert vol.array.min() <= -900  # air
    left = io.load_label_map(REAL_CT / "masks" / "kidney_left.nii.gz").array > 0
    right = io.load_label_map(REAL_CT / "masks" / "kidney_right.nii.gz").array > 0
    assert -50 < float(np.median(vol.array[left])) < 100  # non-contrast kidney parenchyma
    world_x = lambda m: (vol.affine @ [*np.argwhere(m).mean(axis=0), 1])[0]  # noqa: E731
    assert world_x(right) > world_x(left)  # RAS+: the patient's right has larger x


def test_dicom_series_reads_in_hu_with_the_right_geometry():
    vol = io.load_ct(REAL_CT / "dicom")
    assert vol.array.shape == (512, 512, 20)
    assert vol.spacing_mm == pytest.approx((0.977, 0.977, 2.0), abs=0.01)
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    assert vol.array.min() < -900 and vol.array.max() > 200  # air and bone: rescale slope/intercept applied


def test_dicom_prediction_is_written_as_nifti_on_the_series_grid(trained_model, tmp_path):
    result = segment(REAL_CT / "dicom", trained_model)
    out = nib.load(result.save(tmp_path / "dicom_pred.nii.gz"))
    vol = io.load_ct(REAL_CT / "dicom")
    assert out.shape == vol.file_shape and np.allclose(out.affine, vol.file_affine, atol=1e-4)
    assert out.get_data_dtype() == np.uint8
