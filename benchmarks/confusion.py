"""Where do a model's stage-2 errors go? Stage 2 alone on the true boxes of a KiTS-layout folder.

For every case, the segmenter runs on the boxes drawn around the true kidney+tumour voxels (no
localizer), and each true class is split by what it was labelled: the share of the true kidney
voxels labelled background, kidney and tumour, and the same for the true tumour voxels. The last
line pools the voxels of all cases. A model that reads a renderer's kidney pattern as "kidney"
shows it here: on a renderer with homogeneous kidneys a large share of the kidney goes to tumour.

    .venv/bin/python benchmarks/confusion.py MODEL_DIR DATA_DIR

MODEL_DIR may hold the segmenter alone (a run of benchmarks/recipe.py): the localizer is never used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from kidneyseg import io
from kidneyseg.config import pipeline_from_dict, preset
from kidneyseg.inference import TwoStageModel, load_model_dir, segment
from kidneyseg.labels import BACKGROUND, KIDNEY, TUMOR
from kidneyseg.postprocess import kidney_boxes
from kidneyseg.weights import build_model, load_model

CLASSES = (BACKGROUND, KIDNEY, TUMOR)


def confusion(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Voxel counts (3, 3): row the true class, column the predicted one."""
    pairs = truth.astype(np.int64).ravel() * 3 + predicted.astype(np.int64).ravel()
    return np.bincount(pairs, minlength=9)[:9].reshape(3, 3)


def shares(row: np.ndarray) -> str:
    return " ".join(f"{v:.3f}" for v in row / max(int(row.sum()), 1))


def segmenter_only(model_dir: Path) -> TwoStageModel:
    """A model directory's segmenter and pipeline settings, with an untrained stand-in localizer."""
    pipeline = pipeline_from_dict(json.loads((model_dir / "pipeline.json").read_text()))
    net, stage, _ = load_model(model_dir / "segmenter" / "best.safetensors")
    localizer = preset("small").localizer
    return TwoStageModel(build_model(localizer), localizer, net, stage, pipeline)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("data_dir", type=Path, help="KiTS layout: case_*/imaging.nii.gz + segmentation.nii.gz")
    args = parser.parse_args(argv)
    whole = (args.model_dir / "localizer").is_dir()
    model = load_model_dir(args.model_dir) if whole else segmenter_only(args.model_dir)
    total = np.zeros((3, 3), np.int64)
    print("case: true kidney -> background kidney tumour | true tumour -> background kidney tumour")
    for case in io.layout.kits_cases(args.data_dir):
        image, truth = io.load_case(case)
        boxes = kidney_boxes(truth.array > 0, model.pipeline, image.spacing_mm)
        counts = confusion(truth.array, segment(image, model, boxes=boxes).labels)
        total += counts
        print(f"{case.case_id}: {shares(counts[KIDNEY])} | {shares(counts[TUMOR])}", flush=True)
    print(f"all voxels: {shares(total[KIDNEY])} | {shares(total[TUMOR])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
