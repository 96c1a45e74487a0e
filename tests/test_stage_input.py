"""Stage inputs: one function for the cache, training and inference, and training inputs prepared in
worker processes that change nothing."""

from __future__ import annotations

import itertools
import os
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import micro_stage
from safetensors.torch import load_file

from kidneyseg import inference, io, stage_input
from kidneyseg.config import preset
from kidneyseg.errors import InvalidInputError, ResourceError, UsageError
from kidneyseg.geometry import Box, crop, resize_labels
from kidneyseg.inference import load_model_dir, segment
from kidneyseg.stage_input import Source, Warp, positions, stage_image, stage_labels
from kidneyseg.training import data as data_module
from kidneyseg.training.augment import draw_warp
from kidneyseg.training.cache import build_cache
from kidneyseg.training.checkpoint import load_state
from kidneyseg.training.data import load_sample
from kidneyseg.training.fit import fit


def test_without_a_warp_the_zoom_is_torchs_trilinear_resize():
    """The paper's zoom: voxel centres aligned (align_corners=False), as F.interpolate does it."""
    image = np.random.default_rng(0).normal(size=(37, 23, 19)).astype(np.float32)
    box = Box((0, 0, 0), image.shape)
    for size in ((16, 16, 16), (48, 40, 24)):  # down and up
        ours = stage_image(Source(image), box, size)
        theirs = F.interpolate(torch.from_numpy(image)[None, None], size=size, mode="trilinear", align_corners=False)[0]
        assert torch.allclose(ours, theirs, atol=1e-4), size  # float rounding; half a voxel off gives ~0.5
    labels = (image > 0.5).astype(np.uint8)
    assert np.array_equal(stage_labels(Source(labels), box, (16, 16, 16))[0].numpy(), resize_labels(labels, (16,) * 3))


def test_unrotated_inputs_interpolate_axis_by_axis_as_grid_sample_does():
    """Without a rotation the positions vary along one axis each, and the input is built by three 1D
    interpolations of only the voxels needed; it must match grid_sample on the whole block (padded
    where the box overhangs the CT), whatever the zoom, shift, scale and flips."""
    hu = np.random.default_rng(2).integers(-1000, 1500, size=(40, 36, 30)).astype(np.int16)
    source = Source(hu, pad=-1000.0, window=(-79.0, 304.0, 50.0, 120.0))
    cases = [(Box((0, 0, 0), hu.shape), (16, 16, 16), Warp()),  # the localizer's zoom, down
             (Box((5, 4, 3), (15, 12, 9)), (24, 20, 16), Warp()),  # a small crop, up
             (Box((5, 4, 3), (21, 12, 9)), (16, 20, 16), Warp()),  # whole voxels along X only
             (Box((-6, 10, 2), (30, 44, 28)), (20, 24, 18), Warp((1.3, -2.7, 0.4), 0.0, (True, False, True), 1.15))]
    for box, size, warp in cases:
        pos = positions(box, size, (0.8, 0.8, 1.5), warp)
        reference = stage_input._grid_sample(source, pos, size)
        ours = stage_image(source, box, size, (0.8, 0.8, 1.5), warp)
        assert torch.allclose(stage_input._flip(reference, warp), ours, atol=1e-4), (box, size)
        assert float((reference - torch.flip(reference, [1])).abs().max()) > 0.1  # not a constant image


@pytest.mark.parametrize(("order", "planes"), [("C", 2), ("F", 2), ("C", 8), ("F", 8)])
def test_gathering_axis_by_axis_gives_each_voxel_or_the_pad(order, planes, monkeypatch):
    """One index vector per axis (ranges, gaps, repeats, unsorted, outside the array), read a few planes
    at a time, gives exactly the voxels that indexing a padded copy gives, and a whole-array read is a
    copy, never a view."""
    monkeypatch.setattr(stage_input, "GATHER_PLANES", planes)
    rng = np.random.default_rng(3)
    array = np.asarray(rng.normal(size=(9, 7, 5)).astype(np.float32), order=order)
    padded = np.pad(array, 4, constant_values=-7.0)
    vectors = [np.arange(9), np.arange(2, 6), np.array([0, 0, 3, 8, 8]), np.array([5, 1, 4]),
               np.array([-3, -1, 0, 1]), np.array([6, 8, 9, 11])]
    for ix, iy, iz in itertools.product(vectors, repeat=3):
        iy, iz = np.clip(iy, -4, 10), np.clip(iz, -4, 8)
        got = stage_input._gather(Source(array, pad=-7.0), (ix[:, None, None], iy[None, :, None], iz[None, None, :]))
        want = padded[np.ix_(ix + 4, iy + 4, iz + 4)]
        assert np.array_equal(got, want), (ix, iy, iz)
    whole = stage_input._gather(Source(array), (np.arange(9)[:, None, None], np.arange(7)[None, :, None],
                                                np.arange(5)[None, None, :]))
    assert np.array_equal(whole, array) and not np.shares_memory(whole, array)


def test_a_part_of_the_ct_gives_the_same_input_as_the_whole_bitwise():
    hu = np.random.default_rng(1).integers(-1000, 1500, size=(60, 50, 40)).astype(np.int16)
    window = (-79.0, 304.0, 50.0, 120.0)
    whole = Source(hu, pad=-1000.0, window=window)
    box = Box((-4, 10, 5), (40, 46, 45))  # overhangs the CT on two axes: padded
    region = Box((-10, 4, 0), (46, 50, 50))
    part = Source(crop(hu, region, -1000), origin=region.lo, pad=-1000.0, window=window)
    for warp in (Warp(), Warp((1.0, -2.0, 0.0), 0.2, (True, False, True))):
        assert torch.equal(stage_image(whole, box, (24, 24, 24), (0.8, 0.8, 1.5), warp),
                           stage_image(part, box, (24, 24, 24), (0.8, 0.8, 1.5), warp))


def test_cached_training_input_equals_what_inference_feeds_the_segmenter(phantom_dir, trained_model, tmp_path,
                                                                         monkeypatch):
    """For one ground-truth box: the un-augmented training draw (from the cache) and the input that
    ``segment`` builds from the CT file are the same tensor, bit for bit; the labels are the crop's
    labels resized nearest."""
    stage, pipeline = micro_stage("segmenter"), preset("tiny").pipeline
    case = io.layout.kits_cases(phantom_dir)[0]
    sample = next(s for s in build_cache([case], tmp_path / "cache", stage, pipeline, progress=False))
    fed = []
    real = inference._segment_patch
    monkeypatch.setattr(inference, "_segment_patch", lambda x, *args: fed.append(x.clone()) or real(x, *args))
    image, truth = io.load_case(case)
    segment(image, load_model_dir(trained_model), boxes=[sample.box])
    train_image, train_label = load_sample(sample, stage, None)
    assert torch.equal(train_image, fed[0])
    expected = resize_labels(crop(truth.array, sample.box, 0), stage.input_size)
    assert np.array_equal(train_label[0].numpy(), expected)


def test_cached_zoom_equals_what_inference_feeds_the_localizer(phantom_dir, trained_model, tmp_path, monkeypatch):
    stage, pipeline = micro_stage("localizer"), preset("tiny").pipeline
    case = io.layout.kits_cases(phantom_dir)[0]
    sample = build_cache([case], tmp_path / "cache", stage, pipeline, progress=False)[0]
    fed = []
    real = inference.localize
    monkeypatch.setattr(inference, "localize", lambda zoomed, *args: fed.append(zoomed.clone()) or real(zoomed, *args))
    segment(io.load_case(case)[0], load_model_dir(trained_model))
    assert torch.equal(load_sample(sample, stage, None)[0], fed[0])


def test_every_training_draw_stays_inside_the_cached_region(phantom_dir, tmp_path):
    """The stored spare voxels cover the largest shift, scale and rotation: no draw reads padding."""
    stage = micro_stage("segmenter", "rotate_deg=30", "translate_vox=6", "scale_range=0.25", "empty_fraction=0.5")
    samples = build_cache(io.layout.kits_cases(phantom_dir), tmp_path / "cache", stage, preset("tiny").pipeline,
                          progress=False)
    extremes = [Warp(tuple(6.0 * np.array(signs)), angle, scale=1.25)
                for signs in itertools.product((-1, 1), repeat=3) for angle in (-np.pi / 6, np.pi / 6)]
    assert any(s.empty for s in samples), "the empty crops' stored regions too"
    for sample in samples:
        stored = np.load(sample.image, mmap_mode="r").shape
        drawn = [draw_warp(stage, np.random.RandomState(seed)) for seed in range(20)]
        for warp in extremes + drawn:
            pos = positions(sample.box, stage.input_size, sample.spacing_mm, warp)
            for axis, p in enumerate(pos):
                assert p.min() >= sample.origin[axis] and p.max() + 1 < sample.origin[axis] + stored[axis]


def _weights(run_dir):
    return load_file(str(run_dir / "last.safetensors"))


def test_workers_give_bitwise_the_same_weights(phantom_dir, tmp_path):
    stage = micro_stage("segmenter", "epochs=1", "intensity_prob=1.0")
    runs = {}
    for workers in (0, 2):
        fit(phantom_dir, tmp_path / f"w{workers}", stage, preset("tiny").pipeline, progress=False, workers=workers)
        runs[workers] = _weights(tmp_path / f"w{workers}" / "segmenter")
    assert all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_a_failing_draw_in_a_worker_names_the_case_and_keeps_the_checkpoint(phantom_dir, tmp_path):
    stage, pipeline = micro_stage("localizer", "epochs=1"), preset("tiny").pipeline
    fit(phantom_dir, tmp_path, stage, pipeline, progress=False, workers=2)
    state = (tmp_path / "localizer" / "last_state.pt").read_bytes()
    for victim in (tmp_path / "cache" / "localizer").glob("*_image.npy"):
        victim.write_bytes(b"broken")
    with pytest.raises(InvalidInputError, match=r"epoch 2 \(case case_\d+\).*unreadable"):
        fit(phantom_dir, tmp_path, micro_stage("localizer", "epochs=2"), pipeline, resume=True, progress=False,
            workers=2)
    assert (tmp_path / "localizer" / "last_state.pt").read_bytes() == state
    assert load_state(tmp_path / "localizer" / "last_state.pt")["epoch"] == 1


def test_a_worker_process_that_dies_stops_training_with_one_line(phantom_dir, tmp_path, monkeypatch):
    stage, pipeline = micro_stage("localizer", "epochs=1"), preset("tiny").pipeline
    fit(phantom_dir, tmp_path, stage, pipeline, progress=False, workers=0)
    state = (tmp_path / "localizer" / "last_state.pt").read_bytes()
    monkeypatch.setattr(data_module.Draws, "__getitem__", lambda self, k: os.kill(os.getpid(), signal.SIGKILL))
    with pytest.raises(ResourceError, match="input worker process stopped during epoch 2"):
        fit(phantom_dir, tmp_path, micro_stage("localizer", "epochs=2"), pipeline, resume=True, progress=False,
            workers=2)
    assert (tmp_path / "localizer" / "last_state.pt").read_bytes() == state


def test_default_workers_leave_a_cpus_cores_to_the_network(monkeypatch):
    from kidneyseg.training import fit as fit_module

    monkeypatch.setattr(fit_module.os, "sched_getaffinity", lambda pid: set(range(16)))
    assert fit_module.default_workers("cpu") == 0
    assert fit_module.default_workers("cuda") == 8
    monkeypatch.setattr(fit_module.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert fit_module.default_workers("cuda:0") == 2


def test_a_draw_inside_a_read_only_cache_makes_no_tensor_on_its_memory(tmp_path):
    """A box shrunk a little by the warp's scale can need exactly the whole cached array, which is then read as
    it is: a read-only memory map. torch warns (once per process, hence a process of its own) on a tensor made
    on such memory."""
    import subprocess
    import sys

    np.save(tmp_path / "cache.npy", np.random.default_rng(0).standard_normal((16, 16, 16)).astype(np.float32))
    script = ("import sys, numpy as np; from kidneyseg.stage_input import Source, Warp, stage_image; "
              "from kidneyseg.geometry import Box; a = np.load(sys.argv[1], mmap_mode='r'); "
              "out = stage_image(Source(a), Box((0, 0, 0), (16, 16, 16)), (8, 8, 8), "
              "warp=Warp(rotate_rad=0.001, scale=0.95)); print(tuple(out.shape))")
    done = subprocess.run([sys.executable, "-W", "error", "-c", script, str(tmp_path / "cache.npy")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-800:]
    assert done.stdout.strip() == "(1, 8, 8, 8)"


def test_level_shift_moves_the_foregrounds_percentile_to_the_reference():
    """Foreground HU evenly from 100 to 180: its 75th percentile is 160, 40 HU below the reference (200), which is
    0.8 normalised units at an SD of 50; the voxels outside the foreground do not count. Fewer than the minimum of
    foreground voxels: no shift; a foreground far below the reference: at most REFERENCE_MAX_HU."""
    from kidneyseg.stage_input import REFERENCE_HU, REFERENCE_MAX_HU, REFERENCE_MIN_VOXELS, level_shift

    assert REFERENCE_HU == 200.0
    window = (-79.0, 304.0, 20.0, 50.0)
    hu = np.full(4000, 300.0, np.float32)
    hu[:2001] = np.linspace(100.0, 180.0, 2001)
    image = torch.from_numpy((hu - 20.0) / 50.0)
    foreground = np.arange(4000) < 2001
    assert level_shift(image, foreground, window) == pytest.approx(0.8, abs=1e-5)
    assert level_shift(image, torch.from_numpy(foreground), window) == pytest.approx(0.8, abs=1e-5)
    assert level_shift(image, np.arange(4000) < REFERENCE_MIN_VOXELS - 1, window) == 0.0
    dark = torch.full((2000,), (-60.0 - 20.0) / 50.0)  # 260 HU below: clamped
    assert level_shift(dark, np.ones(2000, bool), window) == pytest.approx(REFERENCE_MAX_HU / 50.0, abs=1e-5)


def test_training_shifts_each_crop_by_its_true_kidney_and_tumour(phantom_dir, tmp_path):
    """With level_reference a cached crop comes out shifted by one constant, so that the 75th percentile of its
    labelled voxels reads 200 HU in the CT's normalisation; without it, as it is."""
    stage = micro_stage("segmenter")
    samples = build_cache(io.layout.kits_cases(phantom_dir), tmp_path / "cache", stage, preset("tiny").pipeline,
                          progress=False)
    referenced = micro_stage("segmenter", "level_reference=true")
    for sample in samples[:3]:
        plain, label = load_sample(sample, stage, None)
        shifted, same_label = load_sample(sample, referenced, None)
        assert torch.equal(label, same_label)
        offset = (shifted - plain).flatten()
        assert torch.allclose(offset, offset[0].expand_as(offset), atol=1e-5) and abs(float(offset[0])) > 1e-3
        _, _, mean, std = sample.image_source.window
        level = np.percentile(shifted[label > 0].numpy(), 75) * std + mean
        assert level == pytest.approx(200.0, abs=0.05)
    with pytest.raises(UsageError, match="level_reference is a segmenter setting"):
        micro_stage("localizer", "level_reference=true")
