"""The measures the benchmarks report (benchmarks/*.py): each on small arrays with answers counted by hand,
so that a wrong count in a benchmark cannot pass for a result."""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from kidneyseg.config import preset, to_dict
from kidneyseg.geometry import Box
from kidneyseg.inference import Localization
from kidneyseg.labels import KIDNEY, TUMOR


@pytest.fixture(scope="module")
def bench():
    """The benchmark scripts as modules (they import one another by name, as they do when run)."""
    folder = str(Path(__file__).resolve().parents[1] / "benchmarks")
    sys.path.insert(0, folder)
    try:
        yield SimpleNamespace(**{name: importlib.import_module(name)
                                 for name in ("accuracy", "confusion", "box_refinement", "recipe")})
    finally:
        sys.path.remove(folder)


def test_confusion_counts_each_true_class_by_its_predicted_class(bench):
    truth = np.array([0, 1, 1, 2, 2, 2]).reshape(1, 2, 3)
    predicted = np.array([0, 2, 1, 2, 0, 2]).reshape(1, 2, 3)
    assert bench.confusion.confusion(truth, predicted).tolist() == [[1, 0, 0], [0, 1, 1], [1, 0, 2]]


def test_labelled_ml_counts_the_labelled_volume_and_its_part_outside_the_truth(bench):
    truth = np.zeros((4, 4, 4), np.uint8)
    truth[:2] = KIDNEY  # 32 voxels
    labels = np.zeros_like(truth)
    labels[1, :2, :3] = TUMOR  # 6 voxels inside the truth
    labels[3, 0, :4] = KIDNEY  # 4 voxels outside it
    found = bench.box_refinement.labelled_ml(labels, truth, (1.0, 2.0, 0.5))  # 1 mm³ per voxel
    assert found == pytest.approx({"labelled_ml": 0.010, "false_ml": 0.004})


def test_box_recall_is_the_share_of_true_voxels_inside_the_boxes_clipped_to_the_volume(bench):
    truth = np.zeros((6, 6, 6), bool)
    truth[0:2, 0:2, 0:2] = True  # 8 voxels
    # A box reaching past the volume's start: a negative lo must not count from the array's end.
    assert bench.accuracy.box_recall(truth, [Box((-3, 0, 0), (1, 2, 2))]) == pytest.approx(4 / 8)
    assert bench.accuracy.box_recall(truth, [Box((-3, 0, 0), (1, 2, 2)), Box((1, 0, 0), (2, 1, 2))]) == 6 / 8
    assert bench.accuracy.box_recall(truth, []) == 0.0
    assert bench.accuracy.box_recall(np.zeros_like(truth), []) == 1.0


def test_mask_precision_reads_the_mask_at_its_origin(bench):
    truth = np.zeros((8, 8, 8), np.uint8)
    truth[3, 3, 3:6] = KIDNEY
    mask = np.zeros((2, 2, 4), np.uint8)
    mask[0, 0, :] = 1  # claims (3, 3, 3..6): three of the four are kidney
    found = Localization(boxes=[], mask=mask, origin=(3, 3, 3))
    assert bench.recipe.mask_precision(found, truth) == pytest.approx(3 / 4)
    assert bench.recipe.mask_precision(Localization(boxes=[], mask=mask, origin=(0, 0, 0)), truth) == 0.0
    assert bench.recipe.mask_precision(Localization(boxes=[], mask=None, origin=(0, 0, 0)), truth) == 1.0


def test_boxes_ml_counts_overlaps_once_and_only_inside_the_ct(bench):
    image = SimpleNamespace(shape=(10, 10, 10), spacing_mm=(2.0, 1.0, 1.0))
    a, b = Box((0, 0, 0), (2, 2, 2)), Box((1, 0, 0), (3, 2, 2))  # 8 + 8 voxels, 4 shared
    assert bench.recipe.boxes_ml([a, b], image) == pytest.approx(12 * 2.0 / 1000)
    assert bench.recipe.boxes_ml([Box((8, 8, 8), (12, 12, 12))], image) == pytest.approx(8 * 2.0 / 1000)
    assert bench.recipe.boxes_ml([], image) == 0.0


def test_summarize_row_gives_the_seed_means_spread_and_an_interval_over_cases(bench):
    runs = [{"per_case": {"validation": {"a": {"tumor": 0.2}, "b": {"tumor": 0.4}, "c": {"tumor": 0.6}}}},
            {"per_case": {"validation": {"a": {"tumor": 0.4}, "b": {"tumor": 0.6}, "c": {"tumor": 0.8}}}}]
    row = bench.recipe.summarize_row(runs, "validation", "tumor")
    assert row["mean"] == pytest.approx(0.5)
    assert (row["seed_min"], row["seed_max"]) == pytest.approx((0.4, 0.6))
    # The cases' seed-averaged Dice are 0.3, 0.5, 0.7: the interval of their mean lies within them.
    assert 0.3 <= row["ci_low"] < 0.5 < row["ci_high"] <= 0.7


def test_rim_tells_false_tumour_at_the_outline_from_false_tumour_deep_inside(bench):
    truth = np.zeros((40, 40, 40), np.uint8)
    truth[10:30, 10:30, 10:30] = KIDNEY
    ct = np.full(truth.shape, -80, np.int16)  # fat around the kidney ...
    ct[:10] = 60  # ... except soft tissue against its low-x face
    ct[truth > 0] = 150
    deep = np.zeros_like(truth)
    deep[18:22, 18:22, 18:22] = TUMOR  # 64 voxels, 8 mm from the outline
    found = bench.confusion.rim(ct, truth, deep, (1.0, 1.0, 1.0))
    # Three 1 mm layers of the 20³ kidney lie within 3 mm of its outline.
    assert (found["kidney"], found["kidney_rim"]) == (20**3, 20**3 - 14**3)
    assert (found["false"], found["false_rim"]) == (64, 0)
    assert found["kidney_rim_hu"] == pytest.approx(-80, abs=0.01)
    at_face = np.zeros_like(truth)
    at_face[10:12, 15:25, 15:25] = TUMOR  # the two outer layers of the middle of the low-x face
    found = bench.confusion.rim(ct, truth, at_face, (1.0, 1.0, 1.0))
    assert (found["false"], found["false_rim"]) == (200, 200)
    assert found["false_rim_hu"] == pytest.approx(60, abs=0.01)


def test_recipe_resumes_only_a_run_of_the_same_settings_and_reuses_only_a_finished_one(bench, tmp_path):
    stage = replace(preset("tiny").segmenter, epochs=3)
    run_dir = tmp_path / "segmenter"
    run_dir.mkdir()
    assert not bench.recipe.same_settings(run_dir, stage)  # nothing there: a fresh start
    (run_dir / "config.json").write_text(json.dumps({"stage": to_dict(stage)}))
    assert bench.recipe.same_settings(run_dir, stage)
    assert not bench.recipe.same_settings(run_dir, replace(stage, seed=stage.seed + 1))
    (run_dir / "best.safetensors").write_bytes(b"")
    (run_dir / "log.csv").write_text("epoch,loss\n1,0.9\n2,0.8\n")
    assert not bench.recipe.trained_already(run_dir, stage)  # two of three epochs: to be continued
    (run_dir / "log.csv").write_text("epoch,loss\n1,0.9\n2,0.8\n3,0.7\n")
    assert bench.recipe.trained_already(run_dir, stage)
    assert not bench.recipe.trained_already(run_dir, replace(stage, seed=stage.seed + 1))
