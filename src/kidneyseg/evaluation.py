"""KiTS19 evaluation: Dice per region, per case, and summaries over cases. Pure numpy.

Label maps are integer arrays of any shape (usually (X, Y, Z) voxels in RAS+ order) holding
0 background, 1 kidney, 2 tumour (see :mod:`kidneyseg.labels`). Each case is scored on every
region of ``labels.REGIONS``: ``kidney_tumor`` (labels 1 and 2, the KiTS19 "kidney" score),
``tumor`` (label 2) and ``kidney_only`` (label 1). Dice is a unitless fraction in [0, 1];
voxel spacing does not enter it.

Empty rule: when a region is empty in both the prediction and the truth, Dice is 1.0 (the
KiTS21/KiTS23 convention: nothing to find and nothing found is a perfect answer; the KiTS19
reference code divides 0 by 0 and would give NaN). When it is empty in exactly one of them,
Dice is 0.0. So summaries never contain NaN from empty regions.

The only file output is :func:`write_results`, which writes a CSV and a JSON file atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np

from kidneyseg.io.atomic import atomic_write_text
from kidneyseg.labels import REGIONS, region_mask

SURFACE_TOLERANCE_MM = 2.0  # surface Dice: a boundary voxel counts when within 2 mm of the other boundary

EMPTY_RULE = (
    "Dice is 1.0 when a region is empty in both prediction and truth (KiTS21/23 convention; "
    "KiTS19's reference code gives NaN), and 0.0 when it is empty in only one of them."
)

# Column headers used by format_table; regions not listed here are shown by their key.
_TABLE_HEADERS = {"kidney_tumor": "kidney+tumour", "tumor": "tumour", "kidney_only": "kidney"}

Scores = dict[str, float]


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient 2|P & T| / (|P| + |T|) of two boolean masks of the same shape.

    Non-boolean arrays are read as "non-zero is inside". Both masks empty gives 1.0, exactly
    one empty gives 0.0 (see the module docstring). Voxel counts are Python integers
    (``np.count_nonzero``), so volumes of any size neither overflow nor need float copies.

    Raises:
        ValueError: if the shapes differ (the message names both).
    """
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"dice needs masks of the same shape, got pred {pred.shape} and truth {truth.shape}")
    pred = pred.astype(bool, copy=False)
    truth = truth.astype(bool, copy=False)
    n_pred = int(np.count_nonzero(pred))
    n_truth = int(np.count_nonzero(truth))
    overlap = int(np.count_nonzero(np.logical_and(pred, truth))) if n_pred and n_truth else 0
    return dice_from_counts(overlap, n_pred, n_truth)


def dice_from_counts(overlap: int, n_pred: int, n_truth: int) -> float:
    """Dice from voxel counts (e.g. summed over several crops of one case), with the empty rule."""
    if n_pred == 0 and n_truth == 0:
        return 1.0
    return 2.0 * overlap / (n_pred + n_truth)


def case_scores(pred_labels: np.ndarray, true_labels: np.ndarray) -> Scores:
    """Dice of every region in ``labels.REGIONS`` for one case, keyed by region name.

    Both arguments are integer label maps (0/1/2) of the same shape, e.g. (X, Y, Z).
    Values other than the known labels belong to no region and are ignored.

    Raises:
        ValueError: if the shapes differ.
    """
    pred_labels = np.asarray(pred_labels)
    true_labels = np.asarray(true_labels)
    if pred_labels.shape != true_labels.shape:
        raise ValueError(
            f"prediction and truth label maps differ in shape: pred {pred_labels.shape}, "
            f"truth {true_labels.shape}"
        )
    return {
        region: dice(region_mask(pred_labels, region), region_mask(true_labels, region)) for region in REGIONS
    }


def surface_scores(pred_labels: np.ndarray, true_labels: np.ndarray, spacing_mm: tuple[float, float, float],
                   tolerance_mm: float = SURFACE_TOLERANCE_MM) -> Scores:
    """Surface Dice at ``tolerance_mm`` and the 95th-percentile Hausdorff distance (mm) of every
    region, keyed ``<region>_surface_dice`` and ``<region>_hd95``, on the voxel spacing of the file.

    Both come from MONAI (``compute_surface_dice``, ``compute_hausdorff_distance``) on the masks
    cropped to the bounding box of both, with a margin of one voxel (surfaces and distances are
    unchanged by it). Empty rule, as for Dice: a region empty in both scores surface Dice 1.0 and
    HD95 0.0; empty in only one, surface Dice 0.0 and HD95 NaN (no distance exists; NaN is left out
    of the summaries, which count the cases they use, and written as null in JSON).
    """
    scores: Scores = {}
    for region in REGIONS:
        pred, truth = region_mask(pred_labels, region), region_mask(true_labels, region)
        n_pred, n_truth = np.count_nonzero(pred), np.count_nonzero(truth)
        if not n_pred or not n_truth:
            both_empty = not n_pred and not n_truth
            scores[f"{region}_surface_dice"] = 1.0 if both_empty else 0.0
            scores[f"{region}_hd95"] = 0.0 if both_empty else math.nan
            continue
        pred, truth = _crop_to_both(pred, truth)
        scores[f"{region}_surface_dice"], scores[f"{region}_hd95"] = _monai_surface(pred, truth, spacing_mm,
                                                                                   tolerance_mm)
    return scores


def _crop_to_both(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to their joint bounding box plus one empty voxel on every side."""
    where = np.argwhere(pred | truth)
    lo, hi = where.min(0), where.max(0) + 1
    window = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    return np.pad(pred[window], 1), np.pad(truth[window], 1)


def _monai_surface(pred: np.ndarray, truth: np.ndarray, spacing_mm, tolerance_mm: float) -> tuple[float, float]:
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    def onehot(mask: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([~mask, mask])[None])

    spacing = [float(s) for s in spacing_mm]
    with warnings.catch_warnings():  # MONAI 1.5 warns about a deprecated argument its own code passes
        warnings.simplefilter("ignore", FutureWarning)
        surface = compute_surface_dice(onehot(pred), onehot(truth), [tolerance_mm], spacing=spacing)
        hd95 = compute_hausdorff_distance(onehot(pred), onehot(truth), percentile=95, spacing=spacing)
    return float(surface.item()), float(hd95.item())


def summarize(per_case: dict[str, Scores]) -> dict[str, dict[str, float]]:
    """Mean, std (population, ddof=0), median, min, max and n of each score over cases.

    ``per_case`` maps case id -> scores (:func:`case_scores`, optionally with :func:`surface_scores`).
    Returns score name -> statistic -> value, for every score the cases have (Dice of each region
    first). NaN values (HD95 where only one mask is empty) are left out; ``n`` counts the values used.

    Raises:
        ValueError: if there are no cases, or a case lacks a region's Dice.
    """
    _check_per_case(per_case)
    summary: dict[str, dict[str, float]] = {}
    for key in _score_names(per_case):
        values = np.array([float(scores.get(key, math.nan)) for scores in per_case.values()], dtype=np.float64)
        values = values[np.isfinite(values)]
        stats = (np.mean, np.std, np.median, np.min, np.max)
        summary[key] = {name: float(f(values)) if len(values) else math.nan
                        for name, f in zip(("mean", "std", "median", "min", "max"), stats, strict=True)}
        summary[key]["n"] = len(values)
    return summary


def _score_names(per_case: dict[str, Scores]) -> list[str]:
    """The regions' Dice first, then every other score in the order the cases have them."""
    return list(dict.fromkeys([*REGIONS, *(key for scores in per_case.values() for key in scores)]))


def write_results(per_case: dict[str, Scores], out_dir: Path, stem: str = "scores") -> tuple[Path, Path]:
    """Write ``<stem>.csv`` and ``<stem>.json`` into ``out_dir`` (created if missing), atomically.

    The CSV has a header ``case_id,<score>,...`` (each region's Dice, then surface Dice and HD95
    where scored), one row per case (sorted by case id) and a final row ``mean``. The JSON holds
    ``{"per_case": ..., "summary": ..., "empty_rule": ..., "surface_tolerance_mm": ...}``.
    Each file is written to a hidden temp file in ``out_dir`` and renamed over the target, so a
    crash never leaves a partial file. Returns ``(csv_path, json_path)``.

    Raises:
        ValueError: as :func:`summarize`.
        kidneyseg.errors.ResourceError: if a file cannot be written.
    """
    summary = summarize(per_case)
    out_dir = Path(out_dir)
    regions = _score_names(per_case)
    case_ids = sorted(per_case)

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case_id", *regions])
    for case_id in case_ids:
        writer.writerow([case_id, *(repr(float(per_case[case_id].get(r, math.nan))) for r in regions)])
    writer.writerow(["mean", *(repr(summary[r]["mean"]) for r in regions)])
    csv_path = atomic_write_text(out_dir / f"{stem}.csv", buffer.getvalue())

    document = {
        "per_case": {case_id: {r: float(per_case[case_id].get(r, math.nan)) for r in regions} for case_id in case_ids},
        "summary": summary,
        "empty_rule": EMPTY_RULE,
        "surface_tolerance_mm": SURFACE_TOLERANCE_MM,
    }
    text = json.dumps(_nan_to_none(document), indent=2, allow_nan=False) + "\n"
    json_path = atomic_write_text(out_dir / f"{stem}.json", text)
    return csv_path, json_path


def format_table(per_case: dict[str, Scores]) -> str:
    """A plain-text table for the terminal: case id, kidney+tumour, tumour and kidney Dice.

    Values have 3 decimals, columns are right-aligned, cases are sorted by id and the last row
    is the mean over cases. With no cases the table says so instead of a mean row.
    """
    regions = list(REGIONS)
    headers = [_TABLE_HEADERS.get(r, r) for r in regions]
    case_ids = sorted(per_case)
    id_width = max([len("case"), len("mean"), *(len(c) for c in case_ids)])
    widths = [max(len(h), 6) for h in headers]

    def line(first: str, cells: list[str]) -> str:
        return "  ".join([first.ljust(id_width), *(c.rjust(w) for c, w in zip(cells, widths, strict=True))])

    rows = [line("case", headers), "-" * len(line("", headers))]
    if not case_ids:
        rows.append("(no cases)")
        return "\n".join(rows)
    summary = summarize(per_case)
    for case_id in case_ids:
        rows.append(line(case_id, [f"{float(per_case[case_id][r]):.3f}" for r in regions]))
    rows.append(rows[1])
    rows.append(line("mean", [f"{summary[r]['mean']:.3f}" for r in regions]))
    return "\n".join(rows)


def _check_per_case(per_case: dict[str, Scores]) -> None:
    if not per_case:
        raise ValueError("no cases to summarize")
    for case_id, scores in per_case.items():
        missing = [r for r in REGIONS if r not in scores]
        if missing:
            raise ValueError(f"case {case_id!r} has no score for region(s) {', '.join(missing)}")


def _nan_to_none(value: object) -> object:
    """Replace non-finite floats by None so the JSON stays standard (NaN is not valid JSON)."""
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
