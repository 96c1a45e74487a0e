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
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from confusion import segmenter_only
from recipe import RENDERERS

from kidneyseg import io
from kidneyseg.evaluation import case_scores
from kidneyseg.inference import segment
from kidneyseg.postprocess import kidney_boxes
from kidneyseg.training.cache import EMPTY_CROPS, empty_boxes

HERE = Path(__file__).resolve().parent
FALSE_LABEL_ML = 1.0  # a false box "labelled" when it holds more than this outside the true regions


def score_case(case_id: str, image: io.Volume, truth: io.Volume, model, count: int, alone: dict | None) -> dict:
    """``alone``: the case's scores on the true boxes where the run's recipe.py scoring has them (the same
    model, boxes and inference), else computed here."""
    true = kidney_boxes(truth.array > 0, model.pipeline, image.spacing_mm)
    false = empty_boxes(image.array, true, case_id, count)
    alone = alone or case_scores(segment(image, model, boxes=true).labels, truth.array)
    labels = segment(image, model, boxes=true + false).labels
    added = case_scores(labels, truth.array)
    voxel_ml = float(np.prod(image.spacing_mm)) / 1000
    wrong = []
    for box in false:
        inner = box.inside(labels.shape)
        where = tuple(slice(lo, hi) for lo, hi in zip(inner.lo, inner.hi, strict=True))
        wrong.append(float(np.count_nonzero((labels[where] > 0) & (truth.array[where] == 0))) * voxel_ml)
    return {"true_boxes": {r: alone[r] for r in ("kidney_tumor", "tumor")},
            "with_false_boxes": {r: added[r] for r in ("kidney_tumor", "tumor")},
            "false_boxes": len(false), "false_ml": wrong}


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
        if out.exists():
            results = json.loads(out.read_text())
        else:
            model = segmenter_only(run)
            scored = run.parent / f"{run.name}.json"  # recipe.py's scores of this run on the true boxes
            known = json.loads(scored.read_text())["per_case"] if scored.exists() else {}
            results = {}
            for folder in RENDERERS:
                results[folder] = {}
                for case in io.layout.kits_cases(args.work / folder)[: args.cases or None]:
                    image, truth = io.load_case(case)
                    results[folder][case.case_id] = score_case(case.case_id, image, truth, model, args.boxes,
                                                               known.get(folder, {}).get(case.case_id))
            out.write_text(json.dumps(results, indent=1))
        for folder, renderer in RENDERERS.items():
            numbers = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                for k, v in summary(results[folder]).items())
            print(f"{run.name}, {renderer}: {numbers}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
