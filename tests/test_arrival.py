"""Reading a CT in the background (io.arrival): the same values and errors as a plain read, planes handed
over only once they are in, and prediction's inputs unchanged."""

import gzip
import itertools
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import flip_permute

from kidneyseg import io
from kidneyseg.errors import InvalidInputError
from kidneyseg.geometry import Box
from kidneyseg.io.arrival import Arrival, ReadStopped, start
from kidneyseg.preprocess import clipped_stats
from kidneyseg.stage_input import Source, stage_image


def _ct(shape=(11, 9, 13), seed=0):
    return np.random.default_rng(seed).integers(-1000, 1000, shape).astype(np.int16)


def _save(path, data, affine, slope=None, inter=None):
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    if slope is not None:
        image.header.set_slope_inter(slope, inter)
    nib.save(image, path)
    return path


@pytest.mark.parametrize(("keep", "slope", "inter"), [(True, None, None), (False, None, None), (True, 0.5, -1024.0)])
def test_background_read_gives_the_plain_reads_volume_for_every_axis_order(tmp_path, monkeypatch, keep, slope, inter):
    """Whatever the file's axis order and directions, and with 7-voxel chunks (a plane arrives over several),
    the background read's canonical array equals the plain read's in values and type."""
    monkeypatch.setattr(io.nifti, "GZ_CHUNK_VOXELS", 7)
    data = _ct()
    for n, (perm, flips) in enumerate(itertools.product(itertools.permutations(range(3)), [(), (2,), (0, 1, 2)])):
        path = _save(tmp_path / f"m{n}.nii.gz", *flip_permute(data, np.diag([0.8, 0.9, 2.0, 1.0]), flips, perm),
                     slope=slope, inter=inter)
        plain = io.load_ct(path, keep_integers=keep)
        later = io.load_ct(path, keep_integers=keep, background=True)
        assert later._arrival is not None, (perm, flips)
        assert later.array.dtype == plain.array.dtype and np.array_equal(later.array, plain.array), (perm, flips)
        assert later.shape == plain.array.shape and np.allclose(later.affine, plain.affine)


def test_only_compressed_integer_planes_are_read_in_the_background(tmp_path):
    data = _ct()
    plain = _save(tmp_path / "ct.nii", data, np.eye(4))
    floats = _save(tmp_path / "f.nii.gz", data.astype(np.float32), np.eye(4))
    for path in (plain, floats):
        volume = io.load_ct(path, background=True)
        assert volume._arrival is None and np.array_equal(volume.array, data)


def test_a_truncated_file_raises_the_plain_reads_error_naming_it(tmp_path):
    whole = _save(tmp_path / "whole.nii", _ct((20, 20, 20)), np.eye(4)).read_bytes()
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(whole[:-1000]))
    volume = io.load_ct(short, keep_integers=True, background=True)  # the header is fine: no error yet
    for _ in range(2):  # the same error on every access
        with pytest.raises(InvalidInputError, match="truncated") as info:
            _ = volume.array
        assert str(short) in str(info.value) and "7,500 of 8,000 voxels" in str(info.value)
    _, wait = volume.arriving()
    with pytest.raises(InvalidInputError, match="truncated"):
        wait(2, 0, 1)


def test_the_hu_check_runs_once_every_voxel_is_in(tmp_path):
    path = _save(tmp_path / "raw.nii.gz", np.abs(_ct()), np.eye(4))  # nothing below 0: not HU
    volume = io.load_ct(path, keep_integers=True, background=True)
    with pytest.raises(InvalidInputError, match="not Hounsfield"):
        _ = volume.array
    assert np.array_equal(io.load_ct(path, check_hu=False, background=True).array, np.abs(_ct()))


class _Reader:
    """An Arrival over a (2, 3, planes) file whose reading thread hands over one plane per ``give()``."""

    def __init__(self, planes: int, axis: int = 2, flipped: bool = False):
        self.gate, self.handed, self.planes = threading.Semaphore(0), [], planes
        self.arrival = start(self._read, Arrival(Path("x.nii.gz"), (2, 3, planes), axis, flipped))

    def _read(self, arrival: Arrival) -> None:
        for k in range(1, self.planes + 1):
            self.gate.acquire(timeout=10)
            arrival.advance(k * 6)
            self.handed.append(k)

    def give(self) -> None:
        """Let one more plane in and wait until the reader has handed it over."""
        before, waited = len(self.handed), 0.0
        self.gate.release()
        while len(self.handed) == before:
            assert waited < 10, "the reader did not hand the plane over"
            time.sleep(0.001)
            waited += 0.001


def _waiting(arrival: Arrival, axis: int, lo: int, hi: int) -> tuple[threading.Thread, list]:
    returned = []
    waiter = threading.Thread(target=lambda: (arrival.wait(axis, lo, hi), returned.append(True)))
    waiter.start()
    return waiter, returned


@pytest.mark.parametrize(("axis", "lo", "hi", "flipped", "needed"), [
    (2, 1, 3, False, 3),  # planes 1-2 of the planes' own axis: the file's first three
    (2, 0, 1, True, 5),  # canonical plane 0 of a reversed axis is the file's last plane
    (2, 3, 5, True, 2),  # and canonical planes 3-4 its first two
    (0, 0, 1, False, 5),  # another axis than the planes' needs every plane
])
def test_wait_returns_once_the_planes_asked_for_are_in_and_not_before(axis, lo, hi, flipped, needed):
    reader = _Reader(5, axis=2, flipped=flipped)
    waiter, returned = _waiting(reader.arrival, axis, lo, hi)
    for k in range(1, 6):
        reader.give()
        if k < needed:
            time.sleep(0.02)  # time to return early, which it must not
            assert not returned, k
        else:
            waiter.join(10)
            assert returned, k
    reader.arrival.finish()
    assert reader.arrival.complete


def test_close_stops_the_reading_thread_and_waiters_learn_it():
    reader = _Reader(4)
    reader.give()
    reader.arrival.close()
    reader.gate.release()
    with pytest.raises(ReadStopped):
        reader.arrival.wait(2, 0, 4)
    assert reader.handed == [1]


def test_statistics_and_localizer_input_read_as_the_planes_arrive_equal_the_complete_ct(tmp_path, monkeypatch):
    """clipped_stats and the localizer's zoom through ``ready`` give bitwise the values of the complete CT,
    the window given as a function resolved after the voxels are read."""
    monkeypatch.setattr(io.nifti, "GZ_CHUNK_VOXELS", 50)
    data = _ct((40, 30, 50))
    for flips in ((), (2,)):
        path = _save(tmp_path / f"ct{len(flips)}.nii.gz", *flip_permute(data, np.diag([0.8, 0.8, 1.5, 1.0]), flips,
                                                                          (0, 1, 2)))
        plain = io.load_ct(path, keep_integers=True)
        stats = clipped_stats(plain.array, -79.0, 304.0)
        want = stage_image(Source(plain.array, window=(-79.0, 304.0, *stats)), Box((0, 0, 0), plain.shape),
                           (16, 16, 16))
        later = io.load_ct(path, keep_integers=True, background=True)
        array, ready = later.arriving()
        assert clipped_stats(array, -79.0, 304.0, ready) == stats
        later = io.load_ct(path, keep_integers=True, background=True)
        array, ready = later.arriving()
        got = stage_image(Source(array, window=lambda s=stats: (-79.0, 304.0, *s), ready=ready),
                          Box((0, 0, 0), later.shape), (16, 16, 16))
        assert torch_equal(got, want)


def torch_equal(a, b) -> bool:
    return bool((a == b).all()) and a.shape == b.shape
