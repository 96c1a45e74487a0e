"""Where do a model's stage-2 errors go? Stage 2 alone on the true boxes of a KiTS-layout folder.

For every case, the segmenter runs on the boxes drawn around the true kidney+tumour voxels (no
localizer), and each true class is split by what it was labelled: the share of the true kidney
voxels labelled background, kidney and tumour, and the same for the true tumour voxels. The last
line pools the voxels of all cases. A model that reads a renderer's kidney pattern as "kidney"
shows it here: on a renderer with homogeneous kidneys a large share of the kidney goes to tumour.

``--rim`` adds where that false tumour lies: the share of the true kidney's voxels labelled tumour that
lie within RIM_MM of the kidney+tumour outline, against the share of all kidney voxels that do, and the
median HU of the tissue just outside the outline (the mean of the outside voxels within NEAR_MM) next to
those rim voxels, against next to the whole rim: false tumour that gathers where soft tissue, not fat,
meets the kidney shows as a higher HU there.

    .venv/bin/python benchmarks/confusion.py MODEL_DIR DATA_DIR [--rim]

MODEL_DIR may hold the segmenter alone (a run of benchmarks/recipe.py): the localizer is never used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from kidneyseg import io
from kidneyseg.config import pipeline_from_dict, preset
from kidneyseg.geometry import bounding_box, expand_box
from kidneyseg.inference import TwoStageModel, load_model_dir, segment
from kidneyseg.labels import BACKGROUND, KIDNEY, TUMOR
from kidneyseg.postprocess import kidney_boxes
from kidneyseg.weights import build_model, load_model

CLASSES = (BACKGROUND, KIDNEY, TUMOR)
RIM_MM = 3.0  # a kidney voxel this close to the kidney+tumour outline is on its rim
NEAR_MM = 5.0  # the outside tissue next to a voxel: the outside voxels within this distance per axis


def confusion(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Voxel counts (3, 3): row the true class, column the predicted one."""
    pairs = truth.astype(np.int64).ravel() * 3 + predicted.astype(np.int64).ravel()
    return np.bincount(pairs, minlength=9)[:9].reshape(3, 3)


def shares(row: np.ndarray) -> str:
    return " ".join(f"{v:.3f}" for v in row / max(int(row.sum()), 1))


def rim(ct: np.ndarray, truth: np.ndarray, predicted: np.ndarray,
        spacing_mm: tuple[float, float, float]) -> dict[str, float]:
    """Where the kidney voxels labelled tumour lie (see the module docstring): counts of false-tumour and
    kidney voxels, each's count on the rim, and the median HU outside the outline next to each's rim voxels."""
    region = truth > 0
    if not region.any():
        return {}
    pad = [int(np.ceil(NEAR_MM / s)) + 1 for s in spacing_mm]
    window = expand_box(bounding_box(region), pad, 0, region.shape).inside(region.shape).slices
    region, labels, hu = region[window], truth[window], ct[window].astype(np.float32)
    depth = ndimage.distance_transform_edt(region, sampling=spacing_mm)
    outside = ~region
    size = [2 * int(round(NEAR_MM / s)) + 1 for s in spacing_mm]
    near_sum = ndimage.uniform_filter(np.where(outside, hu, 0.0).astype(np.float32), size)
    near_count = ndimage.uniform_filter(outside.astype(np.float32), size)
    kidney = labels == KIDNEY
    false = kidney & (predicted[window] == TUMOR)
    on_rim = (depth <= RIM_MM) & (near_count > 0.5 / np.prod(size))
    near_hu = near_sum / np.maximum(near_count, 1e-6)

    def median(mask: np.ndarray) -> float:
        return float(np.median(near_hu[mask])) if mask.any() else float("nan")

    return {"false": int(false.sum()), "false_rim": int((false & on_rim).sum()), "kidney": int(kidney.sum()),
            "kidney_rim": int((kidney & on_rim).sum()), "false_rim_hu": median(false & on_rim),
            "kidney_rim_hu": median(kidney & on_rim)}


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
    parser.add_argument("--rim", action="store_true",
                        help="also where the kidney voxels labelled tumour lie (see the module docstring)")
    args = parser.parse_args(argv)
    whole = (args.model_dir / "localizer").is_dir()
    model = load_model_dir(args.model_dir) if whole else segmenter_only(args.model_dir)
    total = np.zeros((3, 3), np.int64)
    rims: list[dict[str, float]] = []
    print("case: true kidney -> background kidney tumour | true tumour -> background kidney tumour"
          + (f" | kidney labelled tumour, share within {RIM_MM:g} mm of the outline (all kidney's); median HU "
             "outside next to it (next to the whole rim)" if args.rim else ""))
    for case in io.layout.kits_cases(args.data_dir):
        image, truth = io.load_case(case)
        boxes = kidney_boxes(truth.array > 0, model.pipeline, image.spacing_mm)
        predicted = segment(image, model, boxes=boxes).labels
        counts = confusion(truth.array, predicted)
        total += counts
        line = f"{case.case_id}: {shares(counts[KIDNEY])} | {shares(counts[TUMOR])}"
        if args.rim:
            found = rim(image.array, truth.array, predicted, image.spacing_mm)
            if found:
                rims.append(found)
                line += (f" | {found['false_rim'] / max(found['false'], 1):.2f} "
                         f"({found['kidney_rim'] / max(found['kidney'], 1):.2f}); {found['false_rim_hu']:.0f} HU "
                         f"({found['kidney_rim_hu']:.0f})")
        print(line, flush=True)
    line = f"all voxels: {shares(total[KIDNEY])} | {shares(total[TUMOR])}"
    if rims:
        pooled = {key: sum(r[key] for r in rims) for key in ("false", "false_rim", "kidney", "kidney_rim")}
        line += (f" | {pooled['false_rim'] / max(pooled['false'], 1):.2f} "
                 f"({pooled['kidney_rim'] / max(pooled['kidney'], 1):.2f}); median over cases "
                 f"{np.nanmedian([r['false_rim_hu'] for r in rims]):.0f} HU "
                 f"({np.nanmedian([r['kidney_rim_hu'] for r in rims]):.0f})")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
