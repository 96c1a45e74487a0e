"""What in a CT does stage 2 go by? Change one property of the true kidney or tumour, segment again.

For every case of a KiTS-layout folder, the segmenter runs on the true boxes (as ``confusion.py``) on the
CT as it is and on copies with one change each:

* ``kidney+D`` / ``kidney-D``: the kidney's voxels (label 1) D HU brighter or darker;
* ``kidney smooth``: the kidney's slow variation (a Gaussian of 2 mm, normalised over the kidney's voxels
  alone) replaced by its mean, its voxel noise kept;
* ``tumour smooth``: the same for the tumour (label 2).

Per case and pooled over all voxels: the share of true kidney voxels labelled tumour and the tumour Dice,
for each version. A change that moves the errors shows what the model reads.

    .venv/bin/python benchmarks/counterfactual.py MODEL_DIR DATA_DIR [--shift 40]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
from confusion import confusion, segmenter_only
from scipy import ndimage

from kidneyseg import io
from kidneyseg.evaluation import dice
from kidneyseg.inference import load_model_dir, segment
from kidneyseg.labels import KIDNEY, TUMOR
from kidneyseg.postprocess import kidney_boxes

SMOOTH_MM = 2.0


def smoothed(x: np.ndarray, region: np.ndarray, spacing_mm) -> np.ndarray:
    """``x`` with the slow variation inside ``region`` replaced by the region's mean."""
    if not region.any():
        return x
    sigma = [SMOOTH_MM / s for s in spacing_mm]
    weight = region.astype(np.float32)
    slow = ndimage.gaussian_filter(x * weight, sigma) / np.maximum(ndimage.gaussian_filter(weight, sigma), 1e-3)
    out = x.copy()
    out[region] -= slow[region] - x[region].mean()
    return out


def versions(x: np.ndarray, labels: np.ndarray, spacing_mm, shift: float) -> dict[str, np.ndarray]:
    kidney, tumour = labels == KIDNEY, labels == TUMOR
    brighter, darker = x.copy(), x.copy()
    brighter[kidney] += shift
    darker[kidney] -= shift
    return {"as rendered": x, f"kidney+{shift:g}": brighter, f"kidney-{shift:g}": darker,
            "kidney smooth": smoothed(x, kidney, spacing_mm), "tumour smooth": smoothed(x, tumour, spacing_mm)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("data_dir", type=Path, help="KiTS layout: case_*/imaging.nii.gz + segmentation.nii.gz")
    parser.add_argument("--shift", type=float, default=40.0, help="HU added to or taken from the kidney")
    args = parser.parse_args(argv)
    whole = (args.model_dir / "localizer").is_dir()
    model = load_model_dir(args.model_dir) if whole else segmenter_only(args.model_dir)
    totals, dices = {}, {}
    print("case (kidney / tumour median HU): kidney labelled tumour, tumour Dice per version")
    for case in io.layout.kits_cases(args.data_dir):
        image, truth = io.load_case(case)
        labels = truth.array
        x = image.array.astype(np.float32)
        boxes = kidney_boxes(labels > 0, model.pipeline, image.spacing_mm)
        tumour_hu = f"{np.median(x[labels == TUMOR]):.0f}" if (labels == TUMOR).any() else "-"
        row = [f"{case.case_id} ({np.median(x[labels == KIDNEY]):.0f} / {tumour_hu})"]
        for name, ct in versions(x, labels, image.spacing_mm, args.shift).items():
            predicted = segment(dataclasses.replace(image, _array=ct), model, boxes=boxes).labels
            counts = confusion(labels, predicted)
            totals[name] = totals.get(name, 0) + counts
            dices.setdefault(name, []).append(dice(predicted == TUMOR, labels == TUMOR))
            row.append(f"{name} {counts[KIDNEY, TUMOR] / max(counts[KIDNEY].sum(), 1):.2f} {dices[name][-1]:.2f}")
        print(" | ".join(row), flush=True)
    for name, counts in totals.items():
        print(f"{name}: kidney labelled tumour {counts[KIDNEY, TUMOR] / counts[KIDNEY].sum():.3f}, tumour found "
              f"{counts[TUMOR, TUMOR] / counts[TUMOR].sum():.3f}, mean tumour Dice {np.mean(dices[name]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
