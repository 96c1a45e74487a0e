"""Dice of bf16 prediction against fp32 prediction of the same model on the same cases.

    .venv/bin/python benchmarks/precision.py MODEL_DIR DATA_DIR [--oracle-boxes]

MODEL_DIR is a model directory (``kidneyseg train`` / ``demo`` / ``accuracy.py``); DATA_DIR a
KiTS-layout folder with ground truth (e.g. a demo's ``heldout`` folder, or
benchmarks/.work/accuracy/validation). Every case is segmented twice through ``segment``, once with
the networks in fp32 and once in bf16 (``load_model_dir(precision=...)``, as ``predict
--precision`` does), and scored against the truth. With ``--oracle-boxes`` only MODEL_DIR/segmenter
is needed (a recipe.py run): stage 2 runs on the ground-truth boxes. Prints each precision's mean
kidney+tumour and tumour Dice, their difference, and the largest per-case difference.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from kidneyseg import io
from kidneyseg.config import pipeline_from_dict
from kidneyseg.evaluation import case_scores
from kidneyseg.inference import TwoStageModel, load_model_dir, segment
from kidneyseg.postprocess import kidney_boxes
from kidneyseg.weights import build_model, load_model

REGIONS = ("kidney_tumor", "tumor")


def oracle_model(model_dir: Path, precision: str) -> TwoStageModel:
    """The segmenter of ``model_dir`` with an unused localizer (boxes come from the truth)."""
    seg, seg_cfg, _ = load_model(model_dir / "segmenter" / "best.safetensors")
    pipeline = pipeline_from_dict(json.loads((model_dir / "pipeline.json").read_text()))
    seg_cfg = replace(seg_cfg, precision=precision)  # TwoStageModel falls back to fp32 where bf16 is missing
    loc_cfg = replace(seg_cfg, stage="localizer")
    return TwoStageModel(build_model(loc_cfg), loc_cfg, seg, seg_cfg, pipeline)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--oracle-boxes", action="store_true", help="stage 2 alone on the ground-truth boxes")
    args = parser.parse_args()
    scores: dict[str, list[dict[str, float]]] = {}
    for precision in ("fp32", "bf16"):
        model = (oracle_model(args.model_dir, precision) if args.oracle_boxes
                 else load_model_dir(args.model_dir, precision=precision))
        rows = []
        for case in io.layout.kits_cases(args.data_dir):
            image, truth = io.load_case(case)
            boxes = kidney_boxes(truth.array > 0, model.pipeline, image.spacing_mm) if args.oracle_boxes else None
            rows.append(case_scores(segment(image, model, boxes=boxes).labels, truth.array))
        scores[precision] = rows
    print(f"{args.model_dir} on {args.data_dir} ({len(scores['fp32'])} cases"
          f"{', ground-truth boxes' if args.oracle_boxes else ''}):")
    for region in REGIONS:
        a = np.array([r[region] for r in scores["fp32"]])
        b = np.array([r[region] for r in scores["bf16"]])
        print(f"  {region}: fp32 {a.mean():.4f}, bf16 {b.mean():.4f}, difference {b.mean() - a.mean():+.4f}, "
              f"largest per-case difference {np.abs(b - a).max():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
