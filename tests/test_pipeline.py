"""End to end: train -> checkpoint -> resume -> predict, and geometry through the whole pipeline."""

from __future__ import annotations

import itertools
import json
import warnings
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import flip_permute, micro_stage
from safetensors.torch import load_file

from kidneyseg import io
from kidneyseg.config import preset
from kidneyseg.errors import InvalidInputError
from kidneyseg.inference import TwoStageModel, load_model_dir, segment
from kidneyseg.postprocess import kidney_boxes
from kidneyseg.training.fit import fit


def test_run_folder_has_everything(trained_model):
    for stage in ("localizer", "segmenter"):
        run = trained_model / stage
        for name in ("config.json", "best.safetensors", "last.safetensors", "last_state.pt", "log.csv",
                     "curves.png"):
            assert (run / name).is_file(), name
        rows = (run / "log.csv").read_text().splitlines()
        assert rows[0].startswith("epoch,train_loss") and len(rows) == 1 + 3
        assert json.loads((run / "config.json").read_text())["stage"]["stage"] == stage
    assert (trained_model / "pipeline.json").is_file()


def test_resume_reproduces_the_uninterrupted_run(phantom_dir, tmp_path):
    pipeline = preset("tiny").pipeline
    full, part = tmp_path / "full", tmp_path / "part"
    fit(phantom_dir, full, micro_stage("segmenter", "epochs=4"), pipeline, progress=False)
    fit(phantom_dir, part, micro_stage("segmenter", "epochs=2"), pipeline, progress=False)
    # continue the same run to 4 epochs, as 'kidneyseg train --resume --epochs 4' does
    fit(phantom_dir, part, micro_stage("segmenter", "epochs=4"), pipeline, resume=True, progress=False)
    a = load_file(str(full / "segmenter" / "last.safetensors"))
    b = load_file(str(part / "segmenter" / "last.safetensors"))
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    loss = [r.split(",")[1] for r in (full / "segmenter" / "log.csv").read_text().splitlines()[1:]]
    loss_resumed = [r.split(",")[1] for r in (part / "segmenter" / "log.csv").read_text().splitlines()[1:]]
    assert loss == loss_resumed


def test_prediction_follows_flips_and_permutations_of_the_file(phantom_dir, trained_model, tmp_path):
    model = load_model_dir(trained_model)
    source = nib.load(phantom_dir / "case_00001" / "imaging.nii.gz")
    data, affine = np.asanyarray(source.dataobj), source.affine
    io.save_nifti(data, affine, tmp_path / "ref.nii.gz")
    reference = nib.load(segment(tmp_path / "ref.nii.gz", model).save(tmp_path / "ref_pred.nii.gz"))
    ref_labels = np.asanyarray(reference.dataobj)
    assert np.allclose(reference.affine, affine) and ref_labels.shape == data.shape
    assert np.count_nonzero(ref_labels) > 0
    cases = list(itertools.product([(0, 1, 2), (2, 0, 1), (1, 0, 2)], [(), (0,), (1, 2)]))
    for n, (perm, flips) in enumerate(cases):
        moved, moved_affine = flip_permute(data, affine, flips, perm)
        path = io.save_nifti(moved, moved_affine, tmp_path / f"moved{n}.nii.gz")
        written = nib.load(segment(path, model).save(tmp_path / f"pred{n}.nii.gz"))
        expected, _ = flip_permute(ref_labels, affine, flips, perm)
        assert np.allclose(written.affine, moved_affine)
        assert np.array_equal(np.asanyarray(written.dataobj), expected), (perm, flips)


def test_array_api_matches_file_api(phantom_dir, trained_model):
    path = phantom_dir / "case_00000" / "imaging.nii.gz"
    image = nib.load(path)
    by_path = segment(path, trained_model)
    by_array = segment(np.asanyarray(image.dataobj), trained_model, affine=image.affine)
    # the file's int16 HU are kept as int16 (io.load_ct's keep_integers) and read in the background (its
    # planes used as they arrive), the array comes as float32: the same labels either way
    assert by_path.volume._arrival is not None
    assert image.get_data_dtype() == np.int16 and by_path.volume.array.dtype == np.int16
    assert by_array.volume.array.dtype == np.float32
    assert np.array_equal(by_path.labels, by_array.labels)
    assert set(np.unique(by_path.labels)) <= {0, 1, 2}


def test_kidney_boxes_for_horseshoe_fragments_and_specks():
    pipeline = preset("paper").pipeline
    mask = np.zeros((200, 200, 120), np.uint8)
    mask[40:160, 80:110, 30:50] = 1  # one fused (horseshoe) kidney across the midline
    assert len(kidney_boxes(mask, pipeline, (1.0, 1.0, 1.0))) == 1
    mask[:] = 0
    mask[20:60, 20:60, 20:60] = 1
    mask[120:160, 20:60, 20:60] = 1
    mask[120:150, 120:150, 80:100] = 1  # a third fragment, 28 % of the largest: kept
    mask[190, 190, 110] = 1  # a speck: dropped
    boxes = kidney_boxes(mask, pipeline, (1.0, 1.0, 1.0))
    assert len(boxes) == 3 and all(b.size_vox == (64, 64, 64) for b in boxes)
    assert boxes[0].lo == (20 - 10 - 2,) * 3  # 40 + 2 * 10 margin = 60, grown by 4 to the 64 minimum


class _AlwaysBackground(torch.nn.Module):
    def forward(self, x):
        return torch.stack([torch.ones_like(x[:, 0]), torch.zeros_like(x[:, 0])], dim=1)


class _FixedKidney(torch.nn.Module):
    """A localizer whose kidney probability is ``probs`` (X, Y, Z) whatever the input."""

    def __init__(self, probs):
        super().__init__()
        self.logit = torch.logit(torch.as_tensor(probs, dtype=torch.float32))

    def forward(self, x):
        return torch.stack([torch.zeros_like(self.logit), self.logit])[None].expand(x.shape[0], -1, -1, -1, -1)


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_box_threshold_grows_a_box_over_an_unsure_bulge_only(threshold):
    """The localizer is sure of a kidney (0.9) and unsure (0.4) of a bulge joined to it and of a far blob:
    at 0.5 the box is the kidney's; at 0.3 it covers the bulge too, never the unjoined blob."""
    from kidneyseg.inference import localize

    size = preset("tiny").localizer.input_size
    probs = np.full(size, 0.01, np.float32)
    probs[10:20, 10:20, 10:20] = 0.9
    probs[20:26, 12:18, 12:18] = 0.4  # the bulge, beside the kidney along X
    probs[40:44, 40:44, 40:44] = 0.4  # a blob on its own
    pipeline = dict(margin_mm=0.0, min_box_mm=0.0, margin_vox=0, min_box_vox=1, tta_flips=False,
                    box_threshold=threshold)
    model = replace(_ramp_model(**pipeline), localizer=_FixedKidney(probs))
    (box,) = localize(torch.zeros(1, *size), size, (1.0, 1.0, 1.0), model, {"network": 0.0}).boxes
    assert box.lo == (10, 10, 10)
    assert box.hi == ((26, 20, 20) if threshold < 0.5 else (20, 20, 20))


def test_locate_gives_the_localizer_mask_on_the_ct_grid_and_segments_boxes():
    """A localizer sure of one block at its input size: on a CT twice that size per axis, ``locate``'s mask
    is that block doubled, placed at its origin on the CT's grid, and its boxes are those ``segment`` crops."""
    from kidneyseg.inference import locate

    size = preset("tiny").localizer.input_size
    probs = np.full(size, 0.01, np.float32)
    probs[10:20, 12:18, 5:9] = 0.9
    pipeline = dict(margin_mm=0.0, min_box_mm=0.0, margin_vox=0, min_box_vox=1, tta_flips=False)
    model = replace(_ramp_model(**pipeline), localizer=_FixedKidney(probs))
    shape = tuple(2 * n for n in size)
    ct = np.full(shape, -1000.0, np.float32)
    ct[:, :, shape[2] // 2:] = 40.0  # air and soft tissue: a CT in HU
    found = locate(ct, model, affine=np.eye(4))
    assert found.origin == (20, 24, 10)
    assert found.mask.shape == (20, 12, 8) and found.mask.all()
    assert [(b.lo, b.hi) for b in found.boxes] == [((20, 24, 10), (40, 36, 18))]
    assert [(b.lo, b.hi) for b in segment(ct, model, affine=np.eye(4)).boxes] == [(b.lo, b.hi) for b in found.boxes]
    nothing = replace(model, localizer=_AlwaysBackground())
    empty = locate(ct, nothing, affine=np.eye(4))
    assert empty.boxes == [] and empty.mask is None


def test_no_kidney_gives_valid_empty_output_and_a_warning(trained_model, tmp_path):
    air = np.full((40, 40, 20), -1000, np.int16)
    air[10:30, 10:30, :] = -100
    path = io.save_nifti(air, np.diag([3.0, 3.0, 5.0, 1.0]), tmp_path / "air.nii.gz")
    model = load_model_dir(trained_model)
    model.localizer = _AlwaysBackground()  # a localizer that finds nothing, whatever the micro model learnt
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = segment(path, model)
    assert result.boxes == [] and not result.labels.any()
    assert any("no kidney found" in str(w.message) for w in caught)
    written = nib.load(result.save(tmp_path / "out.nii.gz"))
    assert written.shape == air.shape and not np.asanyarray(written.dataobj).any()


def test_a_ct_cut_short_is_refused_by_name_while_its_planes_are_being_used(tmp_path, monkeypatch):
    """The localizer's input and the statistics read a background-read CT plane by plane; a file whose data
    stops half way raises the reader's error naming it, from segment, and no output is made."""
    import gzip

    monkeypatch.setattr(io.nifti, "GZ_CHUNK_VOXELS", 4096)
    ct = np.random.default_rng(0).integers(-1000, 1000, (40, 40, 30)).astype(np.int16)
    whole = io.save_nifti(ct, np.diag([2.0, 2.0, 3.0, 1.0]), tmp_path / "ct.nii").read_bytes()
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(whole[: len(whole) // 2]))
    with pytest.raises(InvalidInputError, match="truncated") as info:
        segment(short, _ramp_model())
    assert str(short) in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii", "short.nii.gz"]


class _RampTumour(torch.nn.Module):
    """Ignores the image: P(tumour) = (i + 0.5) / X along the first axis, P(kidney) the rest."""

    def forward(self, x):
        size = x.shape[2]
        p = ((torch.arange(size) + 0.5) / size).view(1, size, 1, 1).expand(1, *x.shape[2:])
        return torch.log(torch.stack([torch.full_like(p, 1e-6), 1 - p, p], dim=1))


def _ramp_model(**pipeline):
    tiny = preset("tiny")
    seg = replace(tiny.segmenter, precision="fp32")
    return TwoStageModel(_AlwaysBackground(), tiny.localizer, _RampTumour(), seg, replace(tiny.pipeline, **pipeline))


def test_flip_averaging_flips_each_prediction_back():
    """Flipped along X the ramp comes back reversed (1 - p); along Y or Z it is unchanged, so the
    average of the four passes is (3p + 1 - p) / 4. Without the flip back it would stay p."""
    from kidneyseg.inference import _predict

    model = _ramp_model(tta_flips=True)
    probs = _predict(model.segmenter, torch.zeros(1, 48, 40, 32), model, model.segmenter_config, {"network": 0.0})
    p = (np.arange(48) + 0.5) / 48
    assert probs[2, :, 7, 3] == pytest.approx((2 * p + 1) / 4, abs=1e-5)
    assert np.allclose(probs[2], probs[2, :, :1, :1])  # nothing moved along Y or Z
    plain = _ramp_model(tta_flips=False)
    single = _predict(plain.segmenter, torch.zeros(1, 48, 40, 32), plain, plain.segmenter_config, {"network": 0.0})
    assert single[2, :, 0, 0] == pytest.approx(p, abs=1e-5)


@pytest.mark.parametrize("resize_probabilities", [True, False])
def test_stage_two_output_returns_to_the_crop_along_the_right_axes(resize_probabilities):
    """The ramp is linear, so the probabilities resized to a 30-voxel axis are (i + 0.5) / 30: tumour
    exactly in the upper half of X, whatever the sizes of Y and Z. Labels resized nearest agree here."""
    from kidneyseg.inference import _segment_patch

    model = _ramp_model(tta_flips=False, resize_probabilities=resize_probabilities)
    labels = _segment_patch(torch.zeros(1, 48, 40, 32), (30, 20, 12), model, {"network": 0.0})
    assert labels.shape == (30, 20, 12)
    assert np.all(labels[15:] == 2) and np.all(labels[:15] == 1)


def test_box_rules_in_millimetres_follow_the_spacing():
    pipeline = replace(preset("paper").pipeline, margin_mm=8.0, min_box_mm=51.2)
    mask = np.zeros((300, 300, 100), np.uint8)
    mask[100:200, 100:130, 40:50] = 1  # 100 x 30 x 10 voxels
    (box,) = kidney_boxes(mask, pipeline, (0.8, 0.8, 2.5))
    # margins ceil(8 / 0.8) = 10 and ceil(8 / 2.5) = 4 voxels; minimum sides 64, 64 and ceil(51.2 / 2.5) = 21
    assert box.size_vox == (120, 64, 21)


def test_shards_together_write_what_one_run_writes(phantom_dir, trained_model, tmp_path):
    from kidneyseg.batch import predict_inputs

    whole = predict_inputs(phantom_dir, tmp_path / "whole", trained_model, progress=False)
    written = []
    for k in (1, 2, 3):
        shard = predict_inputs(phantom_dir, tmp_path / "shards", trained_model, progress=False, shard=(k, 3))
        written += shard.written
    assert sorted(written) == sorted(whole.written) and len(written) == len(set(written)) == 4
    for case in whole.written:
        a = io.load_label_map(tmp_path / "whole" / f"{case}.nii.gz").array
        b = io.load_label_map(tmp_path / "shards" / f"{case}.nii.gz").array
        assert np.array_equal(a, b)
    again = predict_inputs(phantom_dir, tmp_path / "shards", trained_model, progress=False, shard=(2, 3))
    assert again.written == [] and len(again.skipped) == 1  # a rerun skips what exists


def test_prediction_precision_overrides_the_trained_one(trained_model, monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert load_model_dir(trained_model).segmenter_config.precision == "bf16"  # tiny trains in bf16
    model = load_model_dir(trained_model, precision="fp32")
    assert model.localizer_config.precision == model.segmenter_config.precision == "fp32"
    with pytest.warns(UserWarning, match="fp16 is for GPUs"):
        assert load_model_dir(trained_model, precision="fp16").segmenter_config.precision == "fp32"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    for asked in ("bf16", None):  # asked for, or the stage's own: a CPU without bf16 predicts in fp32
        with pytest.warns(UserWarning, match="no bf16 support"):
            fallback = load_model_dir(trained_model, precision=asked)
        assert fallback.segmenter_config.precision == "fp32"


def test_a_model_put_together_by_hand_also_falls_back_to_fp32_without_bf16(monkeypatch):
    """TwoStageModel itself picks a precision the device has, so that benchmarks and library users who build
    one from weights files never run emulated bf16 (100x slower than fp32 on an AVX2 CPU)."""
    from kidneyseg.weights import build_model

    tiny = preset("tiny")
    stages = [replace(tiny.stage(name), precision="bf16") for name in ("localizer", "segmenter")]
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.warns(UserWarning, match="no bf16 support; predicting in fp32"):
        model = TwoStageModel(build_model(stages[0]), stages[0], build_model(stages[1]), stages[1], tiny.pipeline)
    assert model.localizer_config.precision == model.segmenter_config.precision == "fp32"
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    model = TwoStageModel(build_model(stages[0]), stages[0], build_model(stages[1]), stages[1], tiny.pipeline)
    assert model.segmenter_config.precision == "bf16"


def test_prediction_never_imports_the_training_package():
    """Layers point one way: inference, folder prediction and export use kidneyseg.weights, not training."""
    import subprocess
    import sys

    code = ("import sys, kidneyseg.inference, kidneyseg.batch, kidneyseg.export, kidneyseg.cli\n"
            "print(sorted(m for m in sys.modules if m.startswith('kidneyseg.training')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


class _Bright(torch.nn.Module):
    """A stand-in segmenter: kidney where the normalised input is above 0, background elsewhere; counts its calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        k = 20 * x[:, 0]
        return torch.stack([-k, k, torch.full_like(k, -1e4)], dim=1)


def _refine_case(refine_boxes: int, box_hi_x: int):
    """A 100 x 60 x 40 CT (1 mm voxels) of fat with a bright block at X 20-80 and a separate one at X 86-96; stage 2
    (``_Bright``) on a box that covers X 18 to ``box_hi_x``. Returns (final box, labels on it, network calls)."""
    from kidneyseg.geometry import Box
    from kidneyseg.inference import segment_box
    from kidneyseg.preprocess import clipped_stats
    from kidneyseg.stage_input import Source

    ct = np.full((100, 60, 40), -100, np.int16)
    ct[20:80, 20:40, 10:30] = 200
    ct[86:96, 20:40, 10:30] = 200
    pipeline = dict(margin_mm=0.0, min_box_mm=0.0, margin_vox=2, min_box_vox=1, tta_flips=False,
                    resize_probabilities=False, refine_boxes=refine_boxes)
    model = replace(_ramp_model(**pipeline), segmenter=_Bright())
    cfg = model.pipeline
    source = Source(ct, pad=-100.0, window=(cfg.hu_min, cfg.hu_max, *clipped_stats(ct, cfg.hu_min, cfg.hu_max)))
    box, labels = segment_box(source, Box((18, 18, 8), (box_hi_x, 42, 32)), (1.0, 1.0, 1.0), model, {"network": 0.0})
    return box, labels, model.segmenter.calls


def test_a_box_cut_by_its_labels_grows_over_the_rest_of_the_region():
    """The first box ends inside the block (X 50): its labels cover the face at X 50, so the box is widened
    there by half its side (to X 66), still cut, widened again (to X 91) and fitted to the block (X 20-80 with the
    2-voxel margin); the block beyond the gap (X 86), inside the last widened box but not joined, stays out."""
    box, labels, calls = _refine_case(refine_boxes=2, box_hi_x=50)
    assert box.lo == (18, 18, 8) and box.hi == (82, 42, 32)
    assert calls == 5  # the cut box, then twice a widened one and a fitted one
    assert labels.shape == box.size_vox
    assert np.all(labels[2:62, 2:22, 2:22] == 1) and labels[:, :, :1].sum() == 0 and labels[63:].sum() == 0
    box, _, calls = _refine_case(refine_boxes=1, box_hi_x=50)  # one round: fitted to what X 18-66 showed
    assert box.hi == (68, 42, 32) and calls == 3


def test_without_refinement_or_a_cut_the_box_stays():
    box, labels, calls = _refine_case(refine_boxes=0, box_hi_x=50)
    assert box.hi == (50, 42, 32) and calls == 1 and np.all(labels[-1, 2:22, 2:22] == 1)
    box, labels, calls = _refine_case(refine_boxes=2, box_hi_x=82)  # the block's whole box: no face is cut
    assert box.hi == (82, 42, 32) and calls == 1
    # The box ends inside the second, separate block: its face is labelled, but not by the largest region.
    box, labels, calls = _refine_case(refine_boxes=2, box_hi_x=90)
    assert box.hi == (90, 42, 32) and calls == 1 and np.all(labels[-1, 2:22, 2:22] == 1)


def test_cut_faces_ignores_faces_at_the_edge_of_the_ct_and_small_touches():
    from kidneyseg.geometry import Box
    from kidneyseg.postprocess import cut_faces, widen

    labels = np.zeros((10, 10, 10), np.uint8)
    labels[:, 3:7, 3:7] = 1  # runs through both X faces: 16 voxels on each
    inside, at_edge = Box((5, 0, 0), (15, 10, 10)), Box((0, 0, 0), (10, 10, 10))
    assert cut_faces(labels, inside, (40, 10, 10), (1.0, 1.0, 1.0), 16.0) == [(0, 0), (0, 1)]
    assert cut_faces(labels, at_edge, (10, 10, 10), (1.0, 1.0, 1.0), 16.0) == []  # nothing lies beyond the CT
    assert cut_faces(labels, inside, (40, 10, 10), (1.0, 1.0, 1.0), 17.0) == []  # 16 mm² is less than the minimum
    assert cut_faces(labels, inside, (40, 10, 10), (1.0, 2.0, 1.0), 17.0) == [(0, 0), (0, 1)]  # 32 mm² with 2 mm voxels
    assert widen(inside, [(0, 0), (0, 1)], (40, 10, 10)) == Box((0, 0, 0), (20, 10, 10))  # 5 voxels, not past 0


@pytest.mark.parametrize("drop", [False, True])
def test_a_box_whose_labels_run_into_its_faces_is_dropped_only_when_asked(drop):
    """The bright-block CT of ``_refine_case`` through ``segment``: a box that ends inside the block (its labels
    cover the face at X 50) is dropped with a warning under ``drop_open_boxes``, kept without it; the block's
    own box (labels inside, with their margin) is kept either way; refined first, the cut box grows to the
    whole block and is kept."""
    from kidneyseg.geometry import Box

    ct = np.full((100, 60, 40), -100, np.int16)
    ct[20:80, 20:40, 10:30] = 200
    volume = io.ct_from_array(ct, np.eye(4))
    pipeline = dict(margin_mm=0.0, min_box_mm=0.0, margin_vox=2, min_box_vox=1, tta_flips=False,
                    resize_probabilities=False, drop_open_boxes=drop)
    model = replace(_ramp_model(**pipeline), segmenter=_Bright())
    cut, whole = Box((18, 18, 8), (50, 42, 32)), Box((18, 18, 8), (82, 42, 32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = segment(volume, model, boxes=[cut])
    dropped = [w for w in caught if "drop_open_boxes" in str(w.message)]
    if drop:
        assert result.boxes == [] and result.labels.sum() == 0
        assert len(dropped) == 1 and str(dropped[0].message).startswith(f"{volume.name}: dropped the box (18, 18, 8)")
    else:
        assert result.boxes == [cut] and np.all(result.labels[20:50, 20:40, 10:30] == 1) and not dropped
    assert segment(volume, model, boxes=[whole]).boxes == [whole]
    refined = replace(model, pipeline=replace(model.pipeline, refine_boxes=2))
    assert segment(volume, refined, boxes=[cut]).boxes == [whole]


class _Recording(_Bright):
    """``_Bright`` that keeps every input it is given."""

    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return super().forward(x)


@pytest.mark.parametrize("tta_flips", [False, True])
def test_a_level_referenced_segmenter_sees_its_crop_shifted_by_its_first_labels(tta_flips):
    """A block at 150 HU in fat: the first pass (no flips) labels the block; its voxels' 75th percentile is the
    block's 150 HU, so every later pass sees the crop 50 HU (50 / SD normalised units) brighter. Without
    level_reference stage 2 runs once per flip on the crop as it is."""
    from kidneyseg.geometry import Box
    from kidneyseg.inference import segment_box
    from kidneyseg.preprocess import clipped_stats
    from kidneyseg.stage_input import Source

    ct = np.full((100, 60, 40), -100, np.int16)
    ct[20:80, 20:40, 10:30] = 150
    pipeline = dict(margin_mm=0.0, min_box_mm=0.0, margin_vox=2, min_box_vox=1, tta_flips=tta_flips,
                    resize_probabilities=False)
    plain = replace(_ramp_model(**pipeline), segmenter=_Recording())
    cfg = plain.pipeline
    stats = clipped_stats(ct, cfg.hu_min, cfg.hu_max)
    source = Source(ct, pad=-100.0, window=(cfg.hu_min, cfg.hu_max, *stats))
    box = Box((18, 18, 8), (82, 42, 32))
    segment_box(source, box, (1.0, 1.0, 1.0), plain, {"network": 0.0})
    passes = 4 if tta_flips else 1
    assert plain.segmenter.calls == passes
    referenced = replace(plain, segmenter=_Recording(),
                         segmenter_config=replace(plain.segmenter_config, level_reference=True))
    _, labels = segment_box(source, box, (1.0, 1.0, 1.0), referenced, {"network": 0.0})
    first, *later = referenced.segmenter.inputs
    assert len(later) == passes and torch.equal(first, plain.segmenter.inputs[0])
    assert torch.allclose(later[0] - first, torch.full_like(first, 50.0 / stats[1]), atol=1e-5)
    assert np.all(labels[2:62, 2:22, 2:22] == 1)


def test_an_array_given_a_name_is_named_by_it_in_warnings_and_errors():
    air = np.full((40, 40, 20), -100, np.int16)
    volume = io.ct_from_array(air, np.eye(4), name="patient-7 arterial")
    assert volume.name == "patient-7 arterial" and volume.path is None
    assert volume.with_array(np.zeros(volume.shape, np.uint8)).name == "patient-7 arterial"
    assert io.ct_from_array(air, np.eye(4)).name == "<array>"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        segment(volume, _ramp_model())
    assert any(str(w.message).startswith("patient-7 arterial: no kidney found") for w in caught)
    with pytest.raises(InvalidInputError, match="patient-7 arterial"):
        io.ct_from_array(air[..., 0], np.eye(4), name="patient-7 arterial")
