"""Stage 2 given boxes that hold no kidney, as a localizer's false boxes give it: what it labels there, and
what that costs each case.

    .venv/bin/python benchmarks/false_boxes.py SEGMENTER_RUN [SEGMENTER_RUN ...] [--boxes 2] [--cases N]
                                                [--threads N]

Each SEGMENTER_RUN is a run folder of benchmarks/recipe.py (a stage-2 row) or a model directory. For each of
the 30 validation cases of both renderers (WORK/validation and WORK/independent of benchmarks/accuracy.py),
stage 2 is run through ``segment(..., boxes=)`` on the ground-truth crop boxes (the run's box rules; their
scores are read from recipe.py's RUN.json where it has them), and on those boxes together with ``--boxes``
boxes beside them, drawn as the training's empty crops are (``kidneyseg.training.cache.empty_boxes``: a
kidney box's size, centred on a body voxel within one box side of the kidneys, at most 10 % overlap with a
kidney box, fixed per case; these cases are never trained on).
The pipeline's clean-up runs as in prediction. Per run and renderer it prints the mean kidney+tumour and
tumour Dice with the true boxes alone and with the false ones added, the mean volume labelled in the false
boxes outside the true kidneys and tumours, and the share of false boxes with more than 1 mL so labelled.
These boxes lie next to the kidneys; a localizer's false boxes can lie anywhere it mistakes for kidney
(benchmarks/box_refinement.py measures a real localizer's). Results go to WORK/recipe/false-boxes-RUN[-N].json.

Whether a box could be told false from what stage 2 labels in it: each box, true and false, is also segmented
alone (``segment(..., boxes=[box])``) and described by what prediction could see there: the labelled volume
(mL), the share of the box labelled, the largest 26-connected region's share of the labels, the number of
labelled regions over 1 mL, and the faces of the box its labels run into (``postprocess.cut_faces``, the
refinement's rule). For each such feature it prints the threshold that drops the most false boxes while
dropping no true box, over both renderers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from confusion import segmenter_only
from recipe import RENDERERS
from scipy import ndimage

from kidneyseg import io
from kidneyseg.evaluation import case_scores
from kidneyseg.inference import CUT_AREA_MM2, segment
from kidneyseg.postprocess import cut_faces, kidney_boxes
from kidneyseg.training.cache import EMPTY_CROPS, empty_boxes

HERE = Path(__file__).resolve().parent
FALSE_LABEL_ML = 1.0  # a false box "labelled" when it holds more than this outside the true regions


def case_boxes(case_id: str, image: io.Volume, truth: io.Volume, model, count: int) -> tuple[list, list]:
    """The case's true boxes (the run's box rules on the truth) and ``count`` false boxes beside them."""
    true = kidney_boxes(truth.array > 0, model.pipeline, image.spacing_mm)
    return true, empty_boxes(image.array, true, case_id, count)


def score_case(case_id: str, image: io.Volume, truth: io.Volume, model, count: int, alone: dict | None) -> dict:
    """``alone``: the case's scores on the true boxes where the run's recipe.py scoring has them (the same
    model, boxes and inference), else computed here."""
    true, false = case_boxes(case_id, image, truth, model, count)
    alone = alone or case_scores(segment(image, model, boxes=true).labels, truth.array)
    labels = segment(image, model, boxes=true + false).labels
    added = case_scores(labels, truth.array)
    voxel_ml = float(np.prod(image.spacing_mm)) / 1000
    wrong = []
    for box in false:
        where = box.inside(labels.shape).slices
        wrong.append(float(np.count_nonzero((labels[where] > 0) & (truth.array[where] == 0))) * voxel_ml)
    return {"true_boxes": {r: alone[r] for r in ("kidney_tumor", "tumor")},
            "with_false_boxes": {r: added[r] for r in ("kidney_tumor", "tumor")},
            "false_boxes": len(false), "false_ml": wrong, "boxes": box_features(image, model, true, false)}


FEATURES = ("ml", "fill", "largest_share", "regions", "cut_faces")


def box_features(image: io.Volume, model, true: list, false: list) -> list[dict]:
    """Each box segmented alone, described by what prediction sees of its labels (the module's docstring)."""
    voxel_ml = float(np.prod(image.spacing_mm)) / 1000
    out = []
    for is_true, box in [(True, b) for b in true] + [(False, b) for b in false]:
        seg = segment(image, model, boxes=[box])
        inner = seg.boxes[0].inside(seg.labels.shape)  # the box after the pipeline's refinement, if any
        patch = seg.labels[inner.slices] > 0
        regions, count = ndimage.label(patch, np.ones((3, 3, 3), bool))  # 26-connected, as postprocess counts
        sizes = np.bincount(regions.ravel())[1:]  # voxels per region
        out.append({"true": is_true, "ml": float(sizes.sum()) * voxel_ml, "fill": float(patch.mean()),
                    "largest_share": float(sizes.max() / sizes.sum()) if count else 0.0,
                    "regions": int(np.count_nonzero(sizes * voxel_ml > FALSE_LABEL_ML)),
                    "cut_faces": len(cut_faces(patch, inner, seg.labels.shape, image.spacing_mm, CUT_AREA_MM2))})
    return out


def separation(per_renderer: dict) -> list[str]:
    """Per feature: the threshold (above or below) that drops the most false boxes and no true box."""
    boxes = [b for cases in per_renderer.values() for case in cases.values() for b in case.get("boxes", [])]
    if not boxes:
        return []
    true = {f: np.array([b[f] for b in boxes if b["true"]]) for f in FEATURES}
    false = {f: np.array([b[f] for b in boxes if not b["true"]]) for f in FEATURES}
    lines = [f"{len(true['ml'])} true boxes, {len(false['ml'])} false boxes"]
    for f in FEATURES:
        above = float(np.mean(false[f] > true[f].max()))  # drop a box whose value exceeds every true box's
        below = float(np.mean(false[f] < true[f].min()))
        lines.append(f"  {f}: true {np.percentile(true[f], 5):.3g}-{np.percentile(true[f], 95):.3g} (5-95 %), "
                     f"false {np.percentile(false[f], 5):.3g}-{np.percentile(false[f], 95):.3g}; "
                     f"dropped with no true box lost: {above:.0%} above {true[f].max():.3g}, "
                     f"{below:.0%} below {true[f].min():.3g}")
    return lines


def summary(per_case: dict) -> dict:
    wrong = [ml for case in per_case.values() for ml in case["false_ml"]]
    return {f"{key} {region}": float(np.mean([c[key][region] for c in per_case.values()]))
            for key in ("true_boxes", "with_false_boxes") for region in ("kidney_tumor", "tumor")} | {
        "false boxes": len(wrong), "mean mL labelled per false box": float(np.mean(wrong)) if wrong else 0.0,
        f"false boxes with > {FALSE_LABEL_ML:g} mL": float(np.mean([ml > FALSE_LABEL_ML for ml in wrong]))
        if wrong else 0.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--boxes", type=int, default=EMPTY_CROPS, help="false boxes per case")
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "accuracy")
    parser.add_argument("--cases", type=int, default=0, help="only the first N cases of each renderer (0: all)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for run in args.runs:
        suffix = f"-{args.cases}" if args.cases else ""
        out = args.work / "recipe" / f"false-boxes-{run.name}{suffix}.json"
        results = json.loads(out.read_text()) if out.exists() else {}
        model, known = None, None
        for folder in RENDERERS:
            results.setdefault(folder, {})
            for case in io.layout.kits_cases(args.work / folder)[: args.cases or None]:
                done = results[folder].get(case.case_id)
                if done and "boxes" in done:
                    continue
                if model is None:
                    model = segmenter_only(run)
                    scored = run.parent / f"{run.name}.json"  # recipe.py's scores of this run on the true boxes
                    known = json.loads(scored.read_text())["per_case"] if scored.exists() else {}
                image, truth = io.load_case(case)
                if done:  # scored before the box features were measured: add them
                    done["boxes"] = box_features(image, model, *case_boxes(case.case_id, image, truth, model,
                                                                           args.boxes))
                else:
                    results[folder][case.case_id] = score_case(case.case_id, image, truth, model, args.boxes,
                                                               known.get(folder, {}).get(case.case_id))
                io.atomic_write_text(out, json.dumps(results, indent=1))  # after each case: a rerun goes on from here
        for folder, renderer in RENDERERS.items():
            numbers = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                for k, v in summary(results[folder]).items())
            print(f"{run.name}, {renderer}: {numbers}")
        print("\n".join(separation(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
