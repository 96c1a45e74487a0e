"""Tests of kidneyseg.evaluation: Dice, per-case scores, summaries and result files."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from kidneyseg.evaluation import EMPTY_RULE, case_scores, dice, format_table, summarize, write_results
from kidneyseg.labels import REGIONS


def _mask(shape: tuple[int, ...], flat_indices: list[int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask.flat[flat_indices] = True
    return mask


def test_dice_hand_computed() -> None:
    pred = _mask((3, 4, 5), [0, 1, 2, 3])  # 4 voxels
    truth = _mask((3, 4, 5), [1, 2, 3, 10, 11, 12])  # 6 voxels, 3 shared
    assert dice(pred, truth) == pytest.approx(2 * 3 / 10)
    assert dice(truth, pred) == pytest.approx(0.6)


def test_dice_identical_and_disjoint() -> None:
    a = _mask((4, 4, 4), [5, 6, 7])
    b = _mask((4, 4, 4), [20, 21])
    assert dice(a, a) == 1.0
    assert dice(a, b) == 0.0


def test_dice_empty_rules() -> None:
    empty = np.zeros((2, 3, 4), dtype=bool)
    some = _mask((2, 3, 4), [7])
    assert dice(empty, empty) == 1.0
    assert dice(empty, some) == 0.0
    assert dice(some, empty) == 0.0


def test_dice_reads_nonzero_as_inside() -> None:
    pred = np.array([0, 2, 2, 0], dtype=np.uint8)
    truth = np.array([0, 1, 0, 0], dtype=np.int16)
    assert dice(pred, truth) == pytest.approx(2 / 3)


def test_dice_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(2, 3, 5\)"):
        dice(np.zeros((2, 3, 4), bool), np.zeros((2, 3, 5), bool))


def test_case_scores_regions_differ() -> None:
    truth = np.zeros((4, 4, 4), dtype=np.uint8)
    pred = np.zeros_like(truth)
    truth.flat[0:4] = 1  # kidney: 4 voxels
    truth.flat[4:6] = 2  # tumour: 2 voxels
    pred.flat[0:3] = 1  # 3 kidney voxels correct
    pred.flat[3] = 2  # a kidney voxel called tumour
    pred.flat[4] = 2  # one tumour voxel correct, one missed (flat 5)
    scores = case_scores(pred, truth)
    assert list(scores) == list(REGIONS)
    # kidney+tumour: pred {0..4} (5), truth {0..5} (6), overlap 5 -> 10/11
    assert scores["kidney_tumor"] == pytest.approx(10 / 11)
    # tumour: pred {3, 4}, truth {4, 5}, overlap 1 -> 2/4
    assert scores["tumor"] == pytest.approx(0.5)
    # kidney only: pred {0, 1, 2}, truth {0..3}, overlap 3 -> 6/7
    assert scores["kidney_only"] == pytest.approx(6 / 7)


def test_case_scores_no_tumour_anywhere_counts_as_perfect() -> None:
    truth = np.zeros((3, 3, 3), dtype=np.uint8)
    truth[1, 1, 1] = 1
    scores = case_scores(truth.copy(), truth)
    assert scores == {"kidney_tumor": 1.0, "tumor": 1.0, "kidney_only": 1.0}


def test_case_scores_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        case_scores(np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 3), np.uint8))


PER_CASE = {
    "case_00002": {"kidney_tumor": 0.9, "tumor": 0.5, "kidney_only": 0.8},
    "case_00000": {"kidney_tumor": 0.7, "tumor": 0.0, "kidney_only": 0.6},
    "case_00001": {"kidney_tumor": 0.8, "tumor": 1.0, "kidney_only": 1.0},
}


def test_summarize_numbers() -> None:
    summary = summarize(PER_CASE)
    assert set(summary) == set(REGIONS)
    kt = summary["kidney_tumor"]
    assert kt["mean"] == pytest.approx(0.8)
    assert kt["std"] == pytest.approx(math.sqrt((0.01 + 0.0 + 0.01) / 3))
    assert kt["median"] == pytest.approx(0.8)
    assert (kt["min"], kt["max"], kt["n"]) == (pytest.approx(0.7), pytest.approx(0.9), 3)
    assert summary["tumor"]["mean"] == pytest.approx(0.5)
    assert summary["tumor"]["median"] == pytest.approx(0.5)
    assert summary["kidney_only"]["mean"] == pytest.approx(0.8)


def test_summarize_rejects_empty_and_incomplete() -> None:
    with pytest.raises(ValueError, match="no cases"):
        summarize({})
    with pytest.raises(ValueError, match="case_x.*tumor"):
        summarize({"case_x": {"kidney_tumor": 1.0, "kidney_only": 1.0}})


def test_write_results_contents(tmp_path) -> None:
    out = tmp_path / "eval"
    csv_path, json_path = write_results(PER_CASE, out, stem="val")
    assert (csv_path, json_path) == (out / "val.csv", out / "val.json")
    assert sorted(p.name for p in out.iterdir()) == ["val.csv", "val.json"]  # no temp files left

    with csv_path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["case_id", *REGIONS]
    assert [r[0] for r in rows[1:]] == ["case_00000", "case_00001", "case_00002", "mean"]
    for row in rows[1:4]:
        assert [float(v) for v in row[1:]] == pytest.approx([PER_CASE[row[0]][r] for r in REGIONS])
    assert [float(v) for v in rows[4][1:]] == pytest.approx([0.8, 0.5, 0.8])

    document = json.loads(json_path.read_text())
    assert set(document) == {"per_case", "summary", "empty_rule", "surface_tolerance_mm"}
    assert document["per_case"] == PER_CASE
    assert document["summary"] == summarize(PER_CASE)
    assert document["empty_rule"] == EMPTY_RULE


def test_write_results_overwrites(tmp_path) -> None:
    write_results(PER_CASE, tmp_path)
    one = {"case_00000": PER_CASE["case_00000"]}
    csv_path, json_path = write_results(one, tmp_path)
    assert len(csv_path.read_text().splitlines()) == 3
    assert list(json.loads(json_path.read_text())["per_case"]) == ["case_00000"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.csv", "scores.json"]


def test_format_table() -> None:
    table = format_table(PER_CASE)
    lines = table.splitlines()
    assert "kidney+tumour" in lines[0] and "tumour" in lines[0] and "kidney" in lines[0]
    body = [line for line in lines if line.startswith("case_")]
    assert [line.split()[0] for line in body] == ["case_00000", "case_00001", "case_00002"]
    assert body[0].split()[1:] == ["0.700", "0.000", "0.600"]
    assert lines[-1].split() == ["mean", "0.800", "0.500", "0.800"]
    data_lines = [line for line in lines if not line.startswith("-")]
    assert len({len(line) for line in data_lines}) == 1  # aligned columns


def test_format_table_no_cases() -> None:
    assert "no cases" in format_table({})


def _cube(shape=(20, 20, 20), at=(5, 5, 5), size=5) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[tuple(slice(a, a + size) for a in at)] = 1
    return labels


def test_surface_scores_use_the_spacing_of_each_axis() -> None:
    """A cube and the same cube one voxel further along an axis: the 95th-percentile distance is one
    voxel of that axis in mm (a quarter of the surface lies in the shifted faces, far above 5 %)."""
    from kidneyseg.evaluation import surface_scores

    truth = _cube()
    along_x, along_y = _cube(at=(6, 5, 5)), _cube(at=(5, 6, 5))
    spacing = (2.0, 0.5, 1.0)
    assert surface_scores(along_x, truth, spacing)["kidney_tumor_hd95"] == pytest.approx(2.0)
    assert surface_scores(along_y, truth, spacing)["kidney_tumor_hd95"] == pytest.approx(0.5)
    # every boundary voxel within 2 mm of the other boundary: surface Dice 1 at 2 mm, less at 1 mm
    assert surface_scores(along_x, truth, spacing, tolerance_mm=2.0)["kidney_tumor_surface_dice"] == pytest.approx(1)
    assert surface_scores(along_x, truth, spacing, tolerance_mm=1.0)["kidney_tumor_surface_dice"] < 0.9
    same = surface_scores(truth, truth, spacing)
    assert same["kidney_tumor_surface_dice"] == 1.0 and same["kidney_tumor_hd95"] == 0.0


def test_surface_scores_are_unchanged_by_the_crop_and_follow_the_empty_rule() -> None:
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    from kidneyseg.evaluation import surface_scores

    rng = np.random.default_rng(0)
    pred, truth = np.zeros((30, 30, 30), np.uint8), np.zeros((30, 30, 30), np.uint8)
    pred[8:20, 9:22, 10:18] = 1
    truth[10:21, 8:20, 10:19] = 1
    pred[rng.random(pred.shape) < 0.02] = 0
    spacing = (0.8, 0.8, 2.5)
    onehot = [torch.from_numpy(np.stack([m == 0, m == 1])[None]) for m in (pred, truth)]
    full_surface = compute_surface_dice(*onehot, [2.0], spacing=list(spacing)).item()
    full_hd = compute_hausdorff_distance(*onehot, percentile=95, spacing=list(spacing)).item()
    scores = surface_scores(pred, truth, spacing)
    assert scores["kidney_tumor_surface_dice"] == pytest.approx(full_surface)
    assert scores["kidney_tumor_hd95"] == pytest.approx(full_hd)
    # no tumour in either: perfect; tumour in the truth only: surface Dice 0 and no distance
    assert scores["tumor_surface_dice"] == 1.0 and scores["tumor_hd95"] == 0.0
    truth[12:14, 12:14, 12:14] = 2
    missed = surface_scores(pred, truth, spacing)
    assert missed["tumor_surface_dice"] == 0.0 and math.isnan(missed["tumor_hd95"])
    summary = summarize({"a": {**case_scores(pred, truth), **missed}, "b": {**case_scores(truth, truth),
                                                                            **surface_scores(truth, truth, spacing)}})
    assert summary["tumor_hd95"]["n"] == 1 and summary["tumor_hd95"]["mean"] == 0.0
    assert summary["tumor_surface_dice"]["n"] == 2 and summary["tumor_surface_dice"]["mean"] == 0.5


def test_evaluate_command_end_to_end(tmp_path) -> None:
    """kidneyseg evaluate on files: a 10-voxel cube with a 4-voxel tumour cube, predicted one voxel
    further along X (2 mm voxels there): Dice 2 * 900 / 2000 for kidney+tumour and 2 * 48 / 128 for
    the tumour, HD95 2 mm for both."""
    import subprocess
    import sys

    from kidneyseg import io

    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    truth = np.zeros((20, 20, 20), np.uint8)
    truth[5:15, 5:15, 5:15] = 1
    truth[6:10, 6:10, 6:10] = 2
    pred = np.roll(truth, 1, axis=0)
    io.save_nifti(truth, affine, tmp_path / "gt" / "case_00001" / "segmentation.nii.gz")
    io.save_nifti(pred, affine, tmp_path / "pred" / "case_00001.nii.gz")
    proc = subprocess.run([sys.executable, "-m", "kidneyseg", "evaluate", str(tmp_path / "pred"), str(tmp_path / "gt"),
                           "--out", str(tmp_path / "scores")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = {r["case_id"]: r for r in csv.DictReader((tmp_path / "scores" / "scores.csv").open())}
    case = rows["case_00001"]
    assert float(case["kidney_tumor"]) == pytest.approx(2 * 900 / 2000)
    assert float(case["tumor"]) == pytest.approx(2 * 48 / 128)
    assert float(case["kidney_tumor_hd95"]) == pytest.approx(2.0)
    assert float(case["tumor_hd95"]) == pytest.approx(2.0)
    assert float(case["kidney_tumor_surface_dice"]) == pytest.approx(1.0)  # every surface voxel within 2 mm
    document = json.loads((tmp_path / "scores" / "scores.json").read_text())
    assert document["summary"]["tumor"]["mean"] == pytest.approx(0.75)
    assert "0.900" in proc.stdout  # the terminal table
