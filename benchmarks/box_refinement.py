"""Box refinement (``pipeline.refine_boxes``) measured on the whole pipeline, with and without it.

    .venv/bin/python benchmarks/box_refinement.py LOCALIZER_RUN SEGMENTER_RUN [--rounds 2] [--flips] [--out JSON]

LOCALIZER_RUN and SEGMENTER_RUN are run folders of benchmarks/recipe.py (``--stage localizer`` and a stage-2
row; a whole model directory serves as either): the localizer of one and the segmenter of the other make one
model, with the localizer run's pipeline settings and no test-time flips (``--flips``: both networks
averaged over the three axis flips, as the presets predict). For each renderer's 30 validation
cases (WORK/validation and WORK/independent of benchmarks/accuracy.py) it predicts every case through
``segment`` without refinement and with ``--rounds`` rounds, and prints the mean kidney+tumour and tumour
Dice, the localization recall and the median volume labelled outside the true kidney+tumour of each, then the
cases where the two differ by more than 0.01 (the JSON has, per case, also the number of boxes and the volumes).
``--rounds 0`` scores the pipeline without refinement alone: the whole pipeline of any localizer run with any
stage 2. ``--drop-open-boxes`` adds a third pipeline: ``--rounds`` rounds and ``pipeline.drop_open_boxes`` (a box
whose labels still run into one of its faces is dropped), compared with the first in the same way.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from accuracy import box_recall
from recipe import RENDERERS

from kidneyseg import io
from kidneyseg.config import pipeline_from_dict
from kidneyseg.evaluation import case_scores
from kidneyseg.inference import TwoStageModel, segment
from kidneyseg.weights import load_model

HERE = Path(__file__).resolve().parent


def combined(localizer_run: Path, segmenter_run: Path, flips: bool = False) -> TwoStageModel:
    pipeline = pipeline_from_dict(json.loads((localizer_run / "pipeline.json").read_text()))
    loc_net, loc_stage, _ = load_model(localizer_run / "localizer" / "best.safetensors")
    seg_net, seg_stage, _ = load_model(segmenter_run / "segmenter" / "best.safetensors")
    return TwoStageModel(loc_net, loc_stage, seg_net, seg_stage, replace(pipeline, tta_flips=flips))


def labelled_ml(labels: np.ndarray, truth: np.ndarray, spacing_mm) -> dict[str, float]:
    """The volume (mL) labelled kidney or tumour, and the part of it outside the true kidney+tumour: what a
    localizer's false or overgrown boxes cost once stage 2 has labelled them."""
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    found = labels > 0
    return {"labelled_ml": float(np.count_nonzero(found)) * voxel_ml,
            "false_ml": float(np.count_nonzero(found & (truth == 0))) * voxel_ml}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("localizer_run", type=Path)
    parser.add_argument("segmenter_run", type=Path)
    parser.add_argument("--rounds", type=int, default=2, help="refinement rounds to compare with none (0: none only)")
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "accuracy")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--drop-open-boxes", action="store_true",
                        help="also score --rounds rounds with pipeline.drop_open_boxes")
    parser.add_argument("--flips", action="store_true",
                        help="average both networks over the three axis flips (pipeline.tta_flips, as the presets "
                        "predict); without it, none")
    parser.add_argument("--out", type=Path, help="write the per-case scores here (JSON)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = combined(args.localizer_run, args.segmenter_run, args.flips)  # both networks loaded once, shared by the two
    models = {f"refine_boxes={n}": replace(model, pipeline=replace(model.pipeline, refine_boxes=n))
              for n in (0, args.rounds)}
    if args.drop_open_boxes:
        models[f"refine_boxes={args.rounds}, drop_open_boxes"] = replace(
            model, pipeline=replace(model.pipeline, refine_boxes=args.rounds, drop_open_boxes=True))
    results = {}
    for folder, renderer in RENDERERS.items():
        scores = {name: {} for name in models}
        for case in io.layout.kits_cases(args.work / folder):
            image, truth = io.load_case(case)
            for name, model in models.items():
                result = segment(image, model)
                scores[name][case.case_id] = {**case_scores(result.labels, truth.array),
                                              "recall": box_recall(truth.array > 0, result.boxes),
                                              "boxes": len(result.boxes),
                                              **labelled_ml(result.labels, truth.array, image.spacing_mm)}
        results[folder] = scores
        print(f"{renderer}:")
        for name, per_case in scores.items():
            means = [np.mean([s[key] for s in per_case.values()]) for key in ("kidney_tumor", "tumor", "recall")]
            spill = np.median([s["false_ml"] for s in per_case.values()])
            print(f"  {name}: kidney+tumour {means[0]:.3f}, tumour {means[1]:.3f}, recall {means[2]:.3f}, "
                  f"labelled outside the truth: median {spill:.0f} mL per case")
        plain, *others = scores.items()
        for name, per_case in others:
            for case_id, a in plain[1].items():
                b = per_case[case_id]
                if abs(a["kidney_tumor"] - b["kidney_tumor"]) > 0.01:
                    print(f"  {name}, {case_id}: {a['kidney_tumor']:.3f} -> {b['kidney_tumor']:.3f} "
                          f"(recall {a['recall']:.3f} -> {b['recall']:.3f})")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
