"""Connected components and small-region removal on label maps (cc3d, 26-connectivity)."""

from __future__ import annotations

import cc3d
import numpy as np

from kidneyseg.config import PipelineConfig
from kidneyseg.geometry import Box, bounding_box, expand_box
from kidneyseg.labels import KIDNEY, TUMOR


def large_components(mask: np.ndarray, min_fraction: float) -> tuple[np.ndarray, list[Box]]:
    """Find the 26-connected components of a 3D mask (any dtype; nonzero is foreground) and keep
    those with at least ``min_fraction`` of the largest one's voxels.

    Returns (boolean mask of the kept components, their tight boxes ordered by decreasing size).
    cc3d is used over scipy.ndimage.label: it is several times faster and its statistics give
    sizes and boxes in one pass. Labelling runs on the mask's bounding box only (kidneys fill a
    few percent of a CT: about ten times faster at full resolution), and the only full-volume
    array made is the boolean result (1 byte a voxel, not a 4-byte component map).
    """
    kept_mask = np.zeros(mask.shape, dtype=bool)
    found = _large_components(mask, min_fraction)
    if found is None:
        return kept_mask, []
    window, kept_local, boxes = found
    kept_mask[window] = kept_local
    return kept_mask, boxes


def _large_components(mask: np.ndarray, min_fraction: float) -> tuple[tuple[slice, ...], np.ndarray, list[Box]] | None:
    """``large_components`` on the mask's bounding box: (the box as slices, the kept components
    inside it, their boxes in the whole mask's coordinates), or None for an empty mask. Nothing of
    the whole mask's size is allocated (the window is the only copy, as booleans)."""
    if not mask.any():
        return None
    region = bounding_box(mask)
    window = region.slices
    local = cc3d.connected_components(mask[window].astype(bool, copy=False), connectivity=26)
    stats = cc3d.statistics(local)
    sizes = np.asarray(stats["voxel_counts"])[1:]
    keep = np.flatnonzero(sizes >= min_fraction * sizes.max()) + 1
    keep = keep[np.argsort(-sizes[keep - 1], kind="stable")]
    kept = np.zeros(sizes.size + 1, dtype=bool)
    kept[keep] = True
    boxes = []
    for comp in keep:
        sx, sy, sz = stats["bounding_boxes"][comp]
        lo = (sx.start + region.lo[0], sy.start + region.lo[1], sz.start + region.lo[2])
        boxes.append(Box(lo, (sx.stop + region.lo[0], sy.stop + region.lo[1], sz.stop + region.lo[2])))
    return window, kept[local], boxes


def hysteresis(core: np.ndarray, weak: np.ndarray) -> np.ndarray:
    """The 26-connected components of ``core | weak`` that contain a ``core`` voxel (boolean masks of one
    shape): the weak voxels joined to a core, as in hysteresis thresholding."""
    joined = core | weak
    components = cc3d.connected_components(joined, connectivity=26)
    touched = np.unique(components[core])
    return np.isin(components, touched[touched > 0])


def clean_labels(labels: np.ndarray, min_fraction: float) -> np.ndarray:
    """Drop kidney+tumour regions smaller than ``min_fraction`` of the largest one (to background),
    then tumour regions smaller than ``min_fraction`` of the largest tumour (to kidney). Works on
    the labels' bounding box: besides the copy it returns, no temporary of the whole volume's size."""
    out = labels.copy()
    found = _large_components(out, min_fraction)
    if found is None:
        return out
    window, kept, _ = found
    local = out[window]  # a view: edits land in out
    local[~kept] = 0
    tumor = local == TUMOR
    found = _large_components(tumor, min_fraction)
    if found is not None:
        tumour_window, kept_tumour, _ = found
        tumor[tumour_window] &= ~kept_tumour
        local[tumor] = KIDNEY
    return out


def kidney_boxes(mask: np.ndarray, cfg: PipelineConfig, spacing_mm: tuple[float, float, float],
                 origin: tuple[int, int, int] = (0, 0, 0), shape: tuple[int, int, int] | None = None) -> list[Box]:
    """One crop box per kidney region of a full-resolution mask (X, Y, Z), largest first.

    Regions smaller than ``min_region_fraction`` of the largest are dropped; a fused
    (horseshoe) kidney is one region and gets one box; extra fragments get their own boxes.
    Box rules are the paper's voxel counts, or millimetres per axis where ``margin_mm`` /
    ``min_box_mm`` are set. Used for ground-truth boxes in training and predicted ones in inference.
    ``mask`` may be a window of the CT's grid: its voxels [origin, origin + mask.shape) of a grid of
    ``shape`` (default: the mask's own), the mask being empty everywhere else; the boxes are the same.
    """
    found = _large_components(mask, cfg.min_region_fraction)
    tight = [b.shifted(origin) for b in found[2]] if found is not None else []
    return [crop_box(b, cfg, spacing_mm, shape or mask.shape) for b in tight]


def crop_box(tight: Box, cfg: PipelineConfig, spacing_mm: tuple[float, float, float],
             shape: tuple[int, int, int]) -> Box:
    """The crop box around one region's tight box on a grid of ``shape``: the paper's margin and minimum size in
    voxels, or in millimetres per axis where ``margin_mm`` / ``min_box_mm`` are set (``expand_box``)."""
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    margin = np.ceil(cfg.margin_mm / spacing).astype(int) if cfg.margin_mm else cfg.margin_vox
    min_size = np.ceil(cfg.min_box_mm / spacing).astype(int) if cfg.min_box_mm else cfg.min_box_vox
    return expand_box(tight, margin, min_size, shape)


def cut_faces(labels: np.ndarray, box: Box, shape: tuple[int, int, int], spacing_mm: tuple[float, float, float],
              min_area_mm2: float) -> list[tuple[int, int]]:
    """The faces of ``box`` that its labels (box-sized, nonzero: kidney or tumour) run into: (axis, 0 for the low
    side or 1 for the high side) where at least ``min_area_mm2`` of the box's outermost layer of voxels is
    labelled. Faces at the edge of the grid (``shape``) or past it are never cut: nothing lies beyond them."""
    faces = []
    for axis in range(3):
        others = [spacing_mm[a] for a in range(3) if a != axis]
        voxel_area = others[0] * others[1]
        ends = ((0, box.lo[axis] > 0), (box.size_vox[axis] - 1, box.hi[axis] < shape[axis]))
        for side, (at, inside) in enumerate(ends):
            if not inside:
                continue
            layer = np.take(labels, at, axis=axis)
            if np.count_nonzero(layer) * voxel_area >= min_area_mm2:
                faces.append((axis, side))
    return faces


def widen(box: Box, faces: list[tuple[int, int]], shape: tuple[int, int, int], share: float = 0.5) -> Box:
    """``box`` with each of ``faces`` (``cut_faces``) moved outwards by ``share`` of the box's side along that
    axis (at least one voxel), no further than the grid's edge; the other faces stay."""
    lo, hi = list(box.lo), list(box.hi)
    for axis, side in faces:
        step = max(1, round(share * box.size_vox[axis]))
        if side == 0:
            lo[axis] = min(lo[axis], max(0, lo[axis] - step))
        else:
            hi[axis] = max(hi[axis], min(shape[axis], hi[axis] + step))
    return Box(tuple(lo), tuple(hi))
