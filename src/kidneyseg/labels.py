"""Label ids of KiTS19 label maps and the regions that are evaluated. No torch here.

A label map is an integer array with 0 background, 1 kidney, 2 tumour. The KiTS19 scores
use nested regions: "kidney" in KiTS19 means kidney *and* tumour (labels > 0).
"""

from __future__ import annotations

import numpy as np

BACKGROUND = 0
KIDNEY = 1
TUMOR = 2
LABEL_NAMES = {BACKGROUND: "background", KIDNEY: "kidney", TUMOR: "tumor"}
VALID_LABELS = frozenset(LABEL_NAMES)

# Evaluation regions: name -> label ids that belong to the region.
REGIONS: dict[str, tuple[int, ...]] = {
    "kidney_tumor": (KIDNEY, TUMOR),  # the KiTS19 "kidney" score
    "tumor": (TUMOR,),
    "kidney_only": (KIDNEY,),
}


def region_mask(labels: np.ndarray, region: str) -> np.ndarray:
    """Boolean mask of ``region`` (a key of REGIONS) in an integer label map of any shape."""
    return np.isin(labels, REGIONS[region])


def foreground(labels: np.ndarray) -> np.ndarray:
    """Boolean mask of kidney or tumour (the localizer's target)."""
    return labels > BACKGROUND


def tumor_ml(labels: np.ndarray, spacing_mm: tuple[float, float, float]) -> float:
    """Volume of the tumour (TUMOR) in millilitres in a label map on a grid of ``spacing_mm``."""
    return float(np.count_nonzero(labels == TUMOR) * np.prod(spacing_mm) / 1000)
