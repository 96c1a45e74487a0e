import gzip
import itertools
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import flip_permute

from kidneyseg import io
from kidneyseg.errors import InvalidInputError, ResourceError


def _ct(shape=(12, 10, 8), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 1000, shape).astype(np.int16)


def _write(path, data, affine, qcode=1, scode=1, slope=None, inter=None):
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=qcode)
    image.set_sform(affine, code=scode)
    if slope is not None:
        image.header.set_slope_inter(slope, inter)
    nib.save(image, path)
    return path


KITS_AFFINE = np.array([[0, 0, -0.8, 10], [0, -0.8, 0, -20], [-2.5, 0, 0, 30], [0, 0, 0, 1.0]])


def test_canonical_order_is_ras_and_world_positions_survive(tmp_path):
    data = _ct()
    path = _write(tmp_path / "ct.nii.gz", data, KITS_AFFINE, qcode=0, scode=2)
    vol = io.load_ct(path)
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    assert vol.array.shape == (8, 10, 12) and vol.spacing_mm == pytest.approx((0.8, 0.8, 2.5))
    # the world point of file voxel (i, j, k) equals the canonical voxel that holds the same value
    i, j, k = 3, 4, 5
    world = KITS_AFFINE @ [i, j, k, 1]
    canon = np.round(np.linalg.inv(vol.affine) @ world).astype(int)[:3]
    assert vol.array[tuple(canon)] == data[i, j, k]


@pytest.mark.parametrize("name", ["ct.nii", "ct.nii.gz"])
def test_scl_slope_and_inter_are_applied(tmp_path, name):
    raw = np.array(np.arange(2 * 3 * 4).reshape(2, 3, 4) * 10, dtype=np.int16)
    path = _write(tmp_path / name, raw, np.eye(4), slope=2.0, inter=-1024.0)
    vol = io.load_ct(path)
    assert vol.array.min() == -1024.0 and vol.array.max() == -1024 + 2 * 230


@pytest.mark.parametrize(("dtype", "slope", "inter"), [
    ("<i2", None, None), ("<i2", 0.5, -1024.25), (">i2", 1.0, -1024.0), ("<u2", 1.0, -1024.0), ("<i4", 0.37, 3.0),
    ("<u1", 3.0, -900.0)])
def test_compressed_integers_read_in_chunks_as_nibabel_scales_them(tmp_path, monkeypatch, dtype, slope, inter):
    """The chunked float32 read of a .nii.gz equals nibabel's scaled array converted to float32, bitwise,
    whatever the chunk size (here 7 voxels: chunks that split rows, planes and the last chunk short)."""
    monkeypatch.setattr(io.nifti, "GZ_CHUNK_VOXELS", 7)
    raw = _ct((9, 6, 5)).astype(dtype) if dtype[1] != "u" else np.abs(_ct((9, 6, 5))).astype(dtype)
    path = _write(tmp_path / "ct.nii.gz", raw, np.eye(4), slope=slope, inter=inter)
    want = np.asanyarray(nib.load(path).dataobj).astype(np.float32)
    data, _, _ = io.nifti.read_nifti(path, float32=True)
    assert data.dtype == np.float32 and data.flags.f_contiguous and np.array_equal(data, want)


@pytest.mark.parametrize("name", ["ct.nii", "ct.nii.gz"])
@pytest.mark.parametrize(("dtype", "slope", "inter", "kept"), [
    ("<i2", None, None, True), (">i2", 1.0, 0.0, True), ("<u1", None, None, True), ("<i2", 1.0, -1024.0, False),
    ("<i2", 2.0, 0.0, False), ("<i4", None, None, False), ("<f4", None, None, False)])
def test_keep_integers_keeps_only_exact_unscaled_small_integers(tmp_path, monkeypatch, name, dtype, slope, inter,
                                                                kept):
    """keep_integers leaves HU stored as integers of at most 16 bits without scaling in their own type;
    anything scaled, wider or floating comes as float32. Either way the values equal nibabel's, whatever
    the chunk size of a compressed read (here 7 voxels)."""
    monkeypatch.setattr(io.nifti, "GZ_CHUNK_VOXELS", 7)
    raw = _ct((9, 6, 5)).astype(dtype) if dtype[1] != "u" else np.abs(_ct((9, 6, 5))).astype(dtype)
    raw[0, 0, 0] = -1000 if dtype[1] != "u" else 0
    path = _write(tmp_path / name, raw, np.eye(4), slope=slope, inter=inter)
    want = np.asanyarray(nib.load(path).dataobj)
    data, _, _ = io.nifti.read_nifti(path, float32=True, keep_integers=True)
    assert data.dtype == (np.dtype(dtype).newbyteorder("=") if kept else np.float32)
    assert np.array_equal(data, want.astype(np.float32))
    if kept:  # load_ct: the same type, the same canonical values as the float32 read
        vol, ref = io.load_ct(path, check_hu=False, keep_integers=True), io.load_ct(path, check_hu=False)
        assert vol.array.dtype == data.dtype and ref.array.dtype == np.float32
        assert np.array_equal(vol.array, ref.array)


def test_an_uncompressed_ct_read_does_not_depend_on_its_file_afterwards(tmp_path):
    """The int16 array of a .nii CT is read into memory, not mapped from the file: cut to its header after
    the read, the file cannot take the data away (a mapped array would kill the process with SIGBUS)."""
    path = _write(tmp_path / "ct.nii", _ct((64, 64, 64)), np.eye(4))
    script = ("import os, sys; from kidneyseg import io; "
              "v = io.load_ct(sys.argv[1], keep_integers=True); os.truncate(sys.argv[1], 352); "
              "print(v.array.dtype, int(v.array.astype('int64').sum()))")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-500:])
    assert done.stdout.split() == ["int16", str(int(_ct((64, 64, 64)).astype(np.int64).sum()))]


def test_keep_integers_still_refuses_truncated_data(tmp_path):
    whole = _write(tmp_path / "whole.nii", _ct((20, 20, 20)), np.eye(4)).read_bytes()
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(whole[:-1000]))
    with pytest.raises(InvalidInputError, match="truncated") as info:
        io.load_ct(short, keep_integers=True)
    assert str(short) in str(info.value) and "7,500 of 8,000 voxels" in str(info.value)


def test_compressed_data_shorter_than_its_header_is_refused(tmp_path):
    """A complete gzip stream whose image stops early is named as truncated, not read as zeros."""
    whole = _write(tmp_path / "whole.nii", _ct((20, 20, 20)), np.eye(4)).read_bytes()
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(whole[:-1000]))
    with pytest.raises(InvalidInputError, match="truncated") as info:
        io.load_ct(short)
    assert str(short) in str(info.value) and "7,500 of 8,000 voxels" in str(info.value)


def test_integers_scaled_beyond_float32_are_refused_not_read_as_inf(tmp_path):
    """Stored integers skip the NaN/Inf scan only when their type cannot overflow float32 once scaled."""
    path = _write(tmp_path / "ct.nii.gz", _ct(), np.eye(4), slope=1e36, inter=0.0)
    with pytest.raises(InvalidInputError, match="NaN or Inf"):
        io.load_ct(path)


AFFINES = [np.diag([1.5, 0.7, 3.0, 1.0]), KITS_AFFINE, np.array([[0, -1.0, 0, 5], [0, 0, 2.0, 1], [-0.9, 0, 0, 3],
                                                                 [0, 0, 0, 1]])]


@pytest.mark.parametrize("affine", AFFINES)
def test_label_map_written_on_the_input_grid(tmp_path, affine):
    data = _ct()
    path = _write(tmp_path / "ct.nii.gz", data, affine, qcode=0, scode=2)
    vol = io.load_ct(path)
    labels = (vol.array > 500).astype(np.uint8) + (vol.array > 800)
    out = io.save_label_map(labels, vol, tmp_path / "out" / "seg.nii.gz")
    written = nib.load(out)
    assert written.shape == data.shape and written.get_data_dtype() == np.uint8
    assert np.allclose(written.affine, affine)
    assert int(written.header["qform_code"]) == 0 and int(written.header["sform_code"]) == 2
    expected = (data > 500).astype(np.uint8) + (data > 800)
    assert np.array_equal(np.asanyarray(written.dataobj), expected)
    assert sorted(p.name for p in out.parent.iterdir()) == ["seg.nii.gz"]


def test_never_writes_over_the_input(tmp_path):
    path = _write(tmp_path / "ct.nii.gz", _ct(), np.eye(4))
    before = path.read_bytes()
    vol = io.load_ct(path)
    with pytest.raises(InvalidInputError, match="over an input"):
        io.save_label_map(np.zeros(vol.array.shape, np.uint8), vol, path)
    assert path.read_bytes() == before


def test_flipped_and_permuted_files_give_the_same_canonical_volume(tmp_path):
    data = _ct()
    base = io.load_ct(_write(tmp_path / "a.nii.gz", data, np.diag([0.8, 0.9, 2.0, 1.0])))
    for n, (perm, flips) in enumerate(itertools.product(itertools.permutations(range(3)),
                                                        [(), (0,), (1, 2), (0, 1, 2)])):
        moved = nib.Nifti1Image(*flip_permute(data, np.diag([0.8, 0.9, 2.0, 1.0]), flips, perm))
        path = tmp_path / f"m{n}.nii.gz"
        nib.save(moved, path)
        vol = io.load_ct(path)
        assert np.array_equal(vol.array, base.array) and np.allclose(vol.affine, base.affine, atol=1e-5)
        # Labels made on the canonical grid go back to the file's order as NIfTI stores it (Fortran).
        labels = vol.zeros(np.uint8)
        labels[...] = base.array > 0
        in_file = vol.to_file_order(labels)
        assert in_file.flags.f_contiguous, (perm, flips)
        assert np.array_equal(in_file, vol.to_file_order((base.array > 0).astype(np.uint8)))


def test_bad_files_are_refused_with_the_file_named(tmp_path):
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not a gzip file at all")
    good = _write(tmp_path / "good.nii.gz", _ct((40, 40, 40)), np.eye(4))
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for path, message in [(empty, "empty"), (junk, "not a readable NIfTI"), (truncated, "truncated"),
                          (text, "unsupported file type"), (tmp_path / "missing.nii", "not found")]:
        with pytest.raises(InvalidInputError, match=message) as info:
            io.load_ct(path)
        assert str(path) in str(info.value)


def test_gz_written_here_is_standard_gzip_and_reads_back(tmp_path):
    """Compressed output (through ISA-L when installed) is what nibabel and the standard library read; a
    nibabel-written file reads back the same voxels."""
    labels = (_ct() > 0).astype(np.uint8)
    ours = io.save_nifti(labels, KITS_AFFINE, tmp_path / "ours.nii.gz")
    assert gzip.decompress(ours.read_bytes())[344:348] == b"n+1\x00"  # NIfTI-1 magic, single file
    assert np.array_equal(np.asanyarray(nib.load(ours).dataobj), labels)
    theirs = tmp_path / "theirs.nii.gz"
    nib.save(nib.Nifti1Image(_ct(), KITS_AFFINE), theirs)
    assert np.array_equal(io.load_ct(theirs).to_file_order(io.load_ct(theirs).array), _ct().astype(np.float32))


def test_corrupt_gzip_stream_is_refused(tmp_path):
    good = _write(tmp_path / "good.nii.gz", _ct((40, 40, 40)), np.eye(4))
    data = bytearray(good.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)  # damage inside the deflate stream
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises(InvalidInputError, match="bad.nii.gz"):
        io.load_ct(bad)


def test_gzip_magic_with_garbage_inside(tmp_path):
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(gzip.compress(b"\x00" * 100))
    with pytest.raises(InvalidInputError):
        io.load_ct(path)


@pytest.mark.parametrize("shape, message", [((10, 10), "2D"), ((10, 10, 1), "single slice"),
                                            ((6, 6, 6, 3), "4D")])
def test_wrong_dimensionality(tmp_path, shape, message):
    path = _write(tmp_path / "x.nii.gz", np.full(shape, -500, np.int16), np.eye(4))
    with pytest.raises(InvalidInputError, match=message):
        io.load_ct(path)


def test_4d_only_with_explicit_option(tmp_path):
    data = np.stack([_ct(), _ct(seed=1)], axis=-1)
    path = _write(tmp_path / "x.nii.gz", data, np.eye(4))
    assert np.array_equal(io.load_ct(path, allow_4d=True).array, _ct().astype(np.float32))


def test_nan_voxels_and_non_hu_ranges(tmp_path):
    data = _ct().astype(np.float32)
    data[1, 2, 3] = np.nan
    with pytest.raises(InvalidInputError, match="1 voxels are NaN"):
        io.load_ct(_write(tmp_path / "nan.nii.gz", data, np.eye(4)))
    with pytest.raises(InvalidInputError, match="normalised"):
        io.load_ct(_write(tmp_path / "unit.nii.gz", np.random.rand(5, 5, 5).astype(np.float32), np.eye(4)))
    with pytest.raises(InvalidInputError, match="nothing below 0"):
        io.load_ct(_write(tmp_path / "raw.nii.gz", np.full((5, 5, 5), 1024, np.int16), np.eye(4)))


def test_singular_and_sheared_affines(tmp_path):
    singular = np.diag([1.0, 1.0, 0.0, 1.0])
    sheared = np.array([[1.0, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    for name, affine, message in [("s.nii.gz", singular, "singular"), ("h.nii.gz", sheared, "sheared")]:
        image = nib.Nifti1Image(_ct(), np.eye(4))
        image.header["qform_code"] = 0
        image.header["sform_code"] = 2
        for row, key in enumerate(("srow_x", "srow_y", "srow_z")):
            image.header[key] = affine[row]
        image.update_header = lambda: None  # keep the crafted rows exactly as written
        nib.save(image, tmp_path / name)
        with pytest.raises(InvalidInputError, match=message):
            io.load_ct(tmp_path / name)


def test_qform_sform_disagreement_warns_and_names_the_one_used(tmp_path):
    image = nib.Nifti1Image(_ct(), np.eye(4))
    image.set_qform(np.diag([2.0, 2.0, 2.0, 1.0]), code=1)
    image.set_sform(np.eye(4), code=2)
    nib.save(image, tmp_path / "x.nii.gz")
    with pytest.warns(UserWarning, match="using the sform"):
        vol = io.load_ct(tmp_path / "x.nii.gz")
    assert vol.spacing_mm == pytest.approx((1, 1, 1))


def test_huge_header_is_refused_before_reading(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((4096, 4096, 4096))
    header.set_data_dtype(np.int16)
    path = tmp_path / "huge.nii"
    with open(path, "wb") as handle:
        handle.write(header.binaryblock + b"\x00" * 4 + b"\x00" * 64)
    with pytest.raises(InvalidInputError, match="more than"):
        io.load_ct(path)


def test_label_values_are_checked(tmp_path):
    good = np.zeros((4, 4, 4), np.uint8)
    good[1, 1, 1] = 2
    assert io.load_label_map(_write(tmp_path / "ok.nii.gz", good, np.eye(4))).array.max() == 2
    bad = good.copy()
    bad[2, 2, 2] = 7
    with pytest.raises(InvalidInputError, match=r"values \[7\] outside"):
        io.load_label_map(_write(tmp_path / "bad.nii.gz", bad, np.eye(4)))
    frac = good.astype(np.float32)
    frac[0, 0, 0] = 0.5
    with pytest.raises(InvalidInputError, match="non-integer"):
        io.load_label_map(_write(tmp_path / "frac.nii.gz", frac, np.eye(4)))


def test_image_and_label_on_different_grids(tmp_path):
    a = io.load_ct(_write(tmp_path / "a.nii.gz", _ct(), np.eye(4)))
    b = io.load_label_map(_write(tmp_path / "b.nii.gz", np.zeros((12, 10, 9), np.uint8), np.diag([1, 1, 2.0, 1])))
    with pytest.raises(InvalidInputError, match=r"shape \(12, 10, 8\) vs \(12, 10, 9\).*spacing"):
        io.check_same_grid(a.file_affine, a.file_shape, b.file_affine, b.file_shape, a.path, b.path)


def test_disk_full_keeps_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "out.nii.gz"
    io.save_nifti(np.zeros((3, 3, 3), np.uint8), np.eye(4), target)
    before = target.read_bytes()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nib.Nifti1Image, "to_file_map", full)  # where every NIfTI write ends
    with pytest.raises(ResourceError, match="no space left") as info:
        io.save_nifti(np.ones((3, 3, 3), np.uint8), np.eye(4), target)
    assert info.value.exit_code == 5
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz"]
