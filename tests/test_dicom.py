"""DICOM series in (chosen, checked slice by slice) and DICOM SEG out (highdicom), on a series written
here and, where ../shared is present, on the real anonymised CT series and edited copies of it."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import SHARED_DATA
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from kidneyseg import io
from kidneyseg.errors import InvalidInputError
from kidneyseg.io.dicom import choose_series, list_series

REAL = SHARED_DATA / "real-ct" / "dicom"


def write_series(folder: Path, slices: int = 12, size: int = 48, spacing=(0.8, 0.8, 2.0), seed: int = 0) -> Path:
    """An uncompressed axial CT series: a body of soft tissue with a bright blob, HU = stored - 1024."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"slice{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.PatientName, ds.SeriesDescription = "CT", "P1", "Test^Patient", "test series"
        ds.SeriesNumber, ds.InstanceNumber, ds.StudyDate, ds.StudyTime = 3, k + 1, "20260101", "120000"
        ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "", "", "1"
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-20.0, -30.0, 100.0 + k * spacing[2]]
        ds.PixelSpacing, ds.SliceThickness = [spacing[1], spacing[0]], spacing[2]
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        pixels = np.full((size, size), 1024 - 1000, np.uint16)  # air
        pixels[8:40, 6:42] = 1024 + 40 + rng.integers(-10, 10, (32, 36))  # body
        pixels[20:28, 10 + k:18 + k] = 1024 + 200  # a blob that moves along the columns from slice to slice
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"slice{k:03d}.dcm", enforce_file_format=True)
    return folder


def _edit(folder: Path, out: Path, change) -> Path:
    """A copy of ``folder`` with ``change(index, dataset)`` applied to each slice (sorted by name)."""
    shutil.copytree(folder, out)
    for k, path in enumerate(sorted(out.iterdir())):
        ds = pydicom.dcmread(path)
        change(k, ds)
        ds.save_as(path)
    return out


@pytest.fixture(params=["written here", "real"])
def series_dir(request, tmp_path) -> Path:
    if request.param == "real":
        if not REAL.is_dir():
            pytest.skip(f"real DICOM series not found at {REAL} (../shared is not part of the project)")
        return REAL
    return write_series(tmp_path / "series")


def test_a_series_reads_in_world_order(series_dir):
    (series,) = list_series(series_dir)
    volume = io.load_ct(series_dir)
    assert volume.array.shape[2] == len(series.files) and volume.array.min() >= -1100
    z = [float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in series.files]
    assert z == sorted(z)
    assert volume.affine[2, 3] == pytest.approx(z[0]) and volume.spacing_mm[2] == pytest.approx(z[1] - z[0])


def _positions(ds):
    return [float(v) for v in ds.ImagePositionPatient]


@pytest.mark.parametrize(("name", "change", "message"), [
    ("missing", lambda k, ds: None, r"1 missing slice\(s\) between positions"),
    ("uneven", lambda k, ds: setattr(ds, "ImagePositionPatient", [*_positions(ds)[:2], _positions(ds)[2] + 0.7])
     if k == 5 else None, "uneven slice spacing"),
    ("tilted", lambda k, ds: setattr(ds, "ImagePositionPatient", [_positions(ds)[0], _positions(ds)[1] + 0.5 * k,
                                                                   _positions(ds)[2]]), "gantry tilt"),
    ("tilt tag", lambda k, ds: setattr(ds, "GantryDetectorTilt", 12.0), "gantry tilt of 12 degrees"),
    ("mixed orientation", lambda k, ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0.8, -0.6])
     if k == 3 else None, "different orientations"),
])
def test_irregular_stacks_are_refused_by_name(series_dir, tmp_path, name, change, message):
    edited = _edit(series_dir, tmp_path / "edited", change)
    if name == "missing":
        (sorted(edited.iterdir(), key=_z)[5]).unlink()
    with pytest.raises(InvalidInputError, match=message):
        io.load_ct(edited)


def _z(path: Path) -> float:
    return float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])


def test_two_series_in_one_folder_are_listed_and_one_can_be_chosen(series_dir, tmp_path):
    files = sorted(series_dir.iterdir(), key=_z)
    half = {p.name for p in files[: len(files) // 2]}
    mixed = _edit(series_dir, tmp_path / "mixed", lambda k, ds: None)
    for path in mixed.iterdir():
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1" if path.name in half else "1.2.826.0.1.3680043.8.498.2"
        ds.save_as(path)
    with pytest.raises(InvalidInputError, match="2 DICOM series found") as caught:
        io.load_ct(mixed)
    assert f"1.2.826.0.1.3680043.8.498.1  '{pydicom.dcmread(files[0]).SeriesDescription}'  {len(half)} slices" in str(
        caught.value)
    chosen = io.load_ct(mixed, series="1.2.826.0.1.3680043.8.498.2")
    assert chosen.array.shape[2] == len(files) - len(half)
    with pytest.raises(InvalidInputError, match="no series 9.9"):
        choose_series(mixed, "9.9")


def test_dicom_seg_frames_match_the_label_map_at_each_source_position(series_dir, tmp_path):
    """Labels -> SEG -> read back with highdicom: each source instance's frame (found by its SOP UID)
    equals the label map's slice at that instance's position, and each frame names its source."""
    import highdicom as hd

    from kidneyseg.io.dicom_seg import write_dicom_seg

    volume = io.load_ct(series_dir)
    labels = np.zeros(volume.array.shape, np.uint8)
    x, y, z = (n // 2 for n in labels.shape)
    labels[x - 10:x + 6, y - 8:y + 9, 1:-1] = 1
    labels[x - 4:x + 2, y - 3:y + 1, 2:-3] = 2
    labels[x + 3, y - 8, 4] = 2  # a single asymmetric voxel: a flip of any axis would move it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the real series has no Study/Series UIDs: a warning says so
        path = write_dicom_seg(labels, volume, choose_series(series_dir), tmp_path / "case.seg.dcm", "test")
    seg = hd.seg.segread(path)
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["Kidney", "Kidney tumor"]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "64033007"
    assert seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"
    series = choose_series(series_dir)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in series.files]
    uids = [str(d.SOPInstanceUID or d.file_meta.MediaStorageSOPInstanceUID) for d in sources]
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    file_order = volume.to_file_order(labels)
    inverse = np.linalg.inv(volume.file_affine)
    for frame, ds in zip(frames, sources, strict=True):
        lps = np.array([float(v) for v in ds.ImagePositionPatient])
        k = int(round((inverse @ np.array([-lps[0], -lps[1], lps[2], 1.0]))[2]))  # that position's slice
        assert np.array_equal(frame, file_order[:, :, k].T)
    # every frame carries its source instance's UID and that instance's position; one segment's frames
    # run through the slices in one direction (highdicom's order), never jumping between them
    by_uid = dict(zip(uids, sources, strict=True))
    referenced = []
    for f in seg.PerFrameFunctionalGroupsSequence:
        uid = f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert [float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient] == pytest.approx(
            [float(v) for v in by_uid[uid].ImagePositionPatient])
        referenced.append(uids.index(uid))
    first = referenced[: len(set(referenced))]
    assert first in (sorted(first), sorted(first, reverse=True))


def test_predict_writes_nifti_and_dicom_seg_that_agree(series_dir, trained_model, tmp_path):
    import highdicom as hd
    from test_reliability import run_cli

    out = tmp_path / "out"
    proc = run_cli("predict", series_dir, out, "--model", trained_model, "--output-format", "both")
    assert proc.returncode == 0, proc.stderr
    case = series_dir.name
    nifti = io.load_label_map(out / f"{case}.nii.gz")
    seg = hd.seg.segread(out / f"{case}.seg.dcm")
    series = choose_series(series_dir)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in series.files]
    uids = [str(d.SOPInstanceUID or d.file_meta.MediaStorageSOPInstanceUID) for d in sources]
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    rebuilt = np.transpose(frames, (2, 1, 0))  # (columns, rows, slices): the NIfTI written from this series
    assert np.array_equal(rebuilt, nifti.to_file_order(nifti.array))
    assert (out / f"{case}.report.json").is_file()


def test_dicom_seg_needs_dicom_inputs(phantom_dir, trained_model, tmp_path):
    from test_reliability import _one_line_error, run_cli

    _one_line_error(run_cli("predict", phantom_dir, tmp_path / "out", "--model", trained_model, "--output-format",
                            "dicom-seg"), 2, "DICOM-SEG output needs DICOM series inputs")
