"""The numbers a surgeon plans with, per case and per side, and the flags that say when not to trust them.

Input: a label map (X, Y, Z) in canonical RAS+ voxel order (0 background, 1 kidney, 2 tumour) and
the CT Volume it was predicted from (HU, same grid). Left and right come from world coordinates
(the Volume's affine), never from array axes: in RAS+ world space +x points to the patient's
right, so a kidney region whose centre lies at larger x than the body's midline is the right
kidney, whatever the file's voxel order. The midline is the mean world x of the body (voxels
above -500 HU) in the axial slices that hold the kidneys.

Per side (``right``, ``left``, or ``both`` for one region across the midline, a horseshoe kidney):
kidney (label 1) and tumour (label 2) volume in mL, the number of separate tumours, and for the
largest tumour its volume, its greatest axial diameter (the longest distance between two of its
voxels in one axial slice, plus one voxel) and its 3D extent along the patient's R-L, A-P and S-I
axes, all in mm.

Plausibility flags (named warnings; the labels are still returned):

* ``no_kidney``: nothing was labelled.
* ``several_regions_on_one_side``: more than one separate kidney region on a side.
* ``kidney_volume_out_of_range``: a side's kidney tissue (label 1) outside KIDNEY_ML_RANGE (twice
  that range for one region across the midline).
* ``kidney_not_beside_spine``: a region's kidney tissue (label 1; the whole region where it has
  none) is not centred 20-160 mm to the side of the body's midline, or is centred in the anterior
  third of the body: kidneys are retroperitoneal, beside the spine. Kidney tissue, not the whole
  region, because a large tumour bulging forward moves the region's centre but not the kidney's.
* ``region_across_midline``: one region crosses the body's midline: a horseshoe kidney (about 1 in
  500 people) or, more often in a model's output, something that is not a kidney.
* ``tumour_outside_kidney``: a tumour region that touches no kidney voxel.
* ``input_unlike_training``: with the model's data profile, the input's voxel spacing or body HU,
  or the HU of what was labelled kidney, lies outside the training data's range (kidneyseg/profile.py).

Regions smaller than SPECK_ML (a few voxels, as manual label maps often hold beside a kidney) count
in the volumes but not as regions or tumours: they neither raise flags nor add to the tumour count.
Over the ground-truth label maps of the 180 KiTS19 training and validation cases rendered by
benchmarks/accuracy.py, these rules flag only cases that are truly unusual (README, "Plausibility
flags"), so a flag on a prediction is worth a look.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cc3d
import numpy as np
from scipy.spatial.distance import pdist

from kidneyseg.geometry import bounding_box
from kidneyseg.io import Volume
from kidneyseg.labels import KIDNEY, TUMOR
from kidneyseg.profile import unlike_training

# Adult kidney tissue without tumour, one side: normal kidneys hold about 100-250 mL; below 50 mL or
# above 400 mL is a partial kidney, a miss, or something that is not a kidney.
KIDNEY_ML_RANGE = (50.0, 400.0)
LATERAL_MM_RANGE = (20.0, 160.0)  # a kidney's centre from the body's midline
ANTERIOR_LIMIT = 1 / 6  # a kidney centred this share of the body's depth in front of its centre: anterior third
SPECK_ML = 0.1  # a region smaller than this (100 mm³) is a speck, not a region or a tumour
BODY_HU = -500.0


@dataclass(frozen=True)
class SideMeasures:
    side: str
    regions: int
    kidney_ml: float
    tumor_ml: float
    tumors: int
    largest_tumor_ml: float
    largest_tumor_axial_mm: float
    largest_tumor_extent_mm: tuple[float, float, float]  # R-L, A-P, S-I
    centre_mm: tuple[float, float, float]  # world (RAS) centre of the side's labelled voxels
    largest_tumor_centre_mm: tuple[float, float, float] | None  # world (RAS) centre of its largest tumour


@dataclass(frozen=True)
class Flag:
    name: str
    detail: str

    def __str__(self) -> str:
        return f"{self.name}: {self.detail}"


@dataclass(frozen=True)
class CaseReport:
    sides: list[SideMeasures] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"sides": [asdict(s) for s in self.sides], "flags": [asdict(f) for f in self.flags]}


def measure(labels: np.ndarray, ct: Volume, profile: dict | None = None) -> CaseReport:
    """Volumes, tumour sizes and plausibility flags of one predicted case (see the module docstring);
    ``profile``: the model's training data profile (kidneyseg.profile), for ``input_unlike_training``."""
    if labels.shape != ct.array.shape:
        raise ValueError(f"labels {labels.shape} and CT {ct.array.shape} differ in shape")
    unlike = unlike_training(profile, ct, labels) if profile else []
    input_flags = [Flag("input_unlike_training", "; ".join(unlike))] if unlike else []
    if not labels.any():
        return CaseReport([], [Flag("no_kidney", "no kidney or tumour voxel was labelled"), *input_flags])
    midline, body_ap, body_depth = _body_midline(ct, labels > 0)
    # Everything else on the labels' bounding box with a one-voxel border: quick on a whole CT.
    box = bounding_box(labels > 0)
    lo = np.maximum(np.array(box.lo) - 1, 0)
    labels = np.pad(labels[tuple(slice(a, b) for a, b in zip(lo, box.hi, strict=True))], ((0, 1),) * 3)
    affine = ct.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ lo  # the window's first voxel
    regions = cc3d.connected_components(labels > 0, connectivity=26)
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    sizes_ml = np.bincount(regions.ravel())[1:] * voxel_ml
    by_side: dict[str, list[int]] = {}
    counted: dict[str, int] = {}
    flags = []
    for region in range(1, len(sizes_ml) + 1):
        index = np.argwhere(regions == region)
        points = _world(affine, index)
        side = _side(points[:, 0], midline)
        by_side.setdefault(side, []).append(region)
        if sizes_ml[region - 1] < SPECK_ML:
            continue
        counted[side] = counted.get(side, 0) + 1
        kidney = labels[tuple(index.T)] == KIDNEY
        centre = points[kidney].mean(axis=0) if kidney.any() else points.mean(axis=0)
        lateral = abs(float(centre[0]) - midline)
        anterior = float(centre[1]) - body_ap > ANTERIOR_LIMIT * body_depth
        if side == "both":
            flags.append(Flag("region_across_midline", "one region crosses the body's midline: a horseshoe kidney "
                                                       "(rare), or not a kidney"))
        if (side != "both" and not LATERAL_MM_RANGE[0] <= lateral <= LATERAL_MM_RANGE[1]) or anterior:
            flags.append(Flag("kidney_not_beside_spine",
                              f"a {side} region's kidney tissue is centred {lateral:.0f} mm from the midline"
                              f"{' and in the anterior third of the body' if anterior else ''}"))
    sides = []
    for side in sorted(by_side, key=["right", "left", "both"].index):
        members = np.isin(regions, by_side[side])
        measures = _side_measures(side, counted.get(side, 0), labels, members, affine, voxel_ml)
        sides.append(measures)
        if measures.regions > 1:
            flags.append(Flag("several_regions_on_one_side", f"{measures.regions} separate regions on the {side}"))
        low, high = (2 * v for v in KIDNEY_ML_RANGE) if side == "both" else KIDNEY_ML_RANGE
        if measures.regions and not low <= measures.kidney_ml <= high:  # a side of specks alone has no kidney
            flags.append(Flag("kidney_volume_out_of_range", f"{side} kidney tissue {measures.kidney_ml:.0f} mL, "
                                                            f"outside the adult range {low:.0f}-{high:.0f} mL"))
    flags += _tumours_outside_kidney(labels, voxel_ml)
    return CaseReport(sides, flags + input_flags)


def _side_measures(side: str, count: int, labels: np.ndarray, members: np.ndarray, affine: np.ndarray,
                   voxel_ml: float) -> SideMeasures:
    tumours = cc3d.connected_components((labels == TUMOR) & members, connectivity=26)
    sizes = np.bincount(tumours.ravel())[1:]
    sizes = sizes * (sizes * voxel_ml >= SPECK_ML)  # specks count in tumor_ml only
    largest_ml, axial, extent, tumour_centre = 0.0, 0.0, (0.0, 0.0, 0.0), None
    if sizes.any():
        largest = tumours == int(np.argmax(sizes)) + 1
        largest_ml = float(sizes.max()) * voxel_ml
        axial, extent = _axial_diameter_mm(largest, affine), _extent_mm(largest, affine)
        tumour_centre = _centre_mm(largest, affine)
    return SideMeasures(side, count, float(np.count_nonzero((labels == KIDNEY) & members)) * voxel_ml,
                        float(np.count_nonzero((labels == TUMOR) & members)) * voxel_ml, int(np.count_nonzero(sizes)),
                        largest_ml, axial, extent, _centre_mm(members, affine), tumour_centre)


def _centre_mm(mask: np.ndarray, affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(v) for v in _world(affine, np.argwhere(mask)).mean(axis=0))


def _world(affine: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """World (RAS, mm) coordinates (N, 3) of voxel indices (N, 3)."""
    return indices @ affine[:3, :3].T + affine[:3, 3]


def _side(x_mm: np.ndarray, midline: float) -> str:
    """``right`` (+x in RAS) or ``left`` by where most of the region lies; ``both`` when at least a
    fifth of it lies on each side of the midline (one kidney across it: a horseshoe)."""
    right = float(np.mean(x_mm > midline))
    if min(right, 1 - right) >= 0.2:
        return "both"
    return "right" if right > 0.5 else "left"


def _body_midline(ct: Volume, kidneys: np.ndarray) -> tuple[float, float, float]:
    """(mean world x, mean world y, extent along world y) of the body in the axial slices holding
    the kidneys, on every 4th voxel in-plane (enough for a mean, and quick on a 512 x 512 CT)."""
    slices = np.flatnonzero(kidneys.any(axis=(0, 1)))
    body = ct.array[::4, ::4, slices] > BODY_HU
    index = np.argwhere(body) * np.array([4, 4, 1])
    index[:, 2] = slices[index[:, 2]]
    points = _world(ct.affine, index)
    return float(points[:, 0].mean()), float(points[:, 1].mean()), float(np.ptp(points[:, 1]))


def _axial_diameter_mm(mask: np.ndarray, affine: np.ndarray) -> float:
    """Longest distance between two voxel centres of ``mask`` in one axial slice, plus one in-plane
    voxel (a voxel has a size): the greatest axial diameter as a radiologist measures it."""
    in_plane = float(np.mean(np.linalg.norm(affine[:3, :2], axis=0)))
    best = 0.0
    for z in np.flatnonzero(mask.any(axis=(0, 1))):
        ij = np.argwhere(mask[:, :, z])
        points = ij @ affine[:2, :2].T
        if len(points) > 1:
            best = max(best, float(pdist(_outline(points, ij)).max()))
    return best + in_plane


def _outline(points: np.ndarray, ij: np.ndarray) -> np.ndarray:
    """The points on the first or last voxel of their row or column: the farthest pair is among them."""
    keep = np.zeros(len(ij), bool)
    for axis in (0, 1):
        other = ij[:, 1 - axis]
        for value in np.unique(other):
            rows = np.flatnonzero(other == value)
            keep[rows[np.argmin(ij[rows, axis])]] = keep[rows[np.argmax(ij[rows, axis])]] = True
    return points[keep]


def _extent_mm(mask: np.ndarray, affine: np.ndarray) -> tuple[float, float, float]:
    """Size of ``mask`` along the world axes R-L, A-P, S-I: spread of the voxel centres plus one voxel."""
    points = _world(affine, np.argwhere(mask))
    voxel = np.abs(affine[:3, :3]).sum(axis=1)
    return tuple(float(v) for v in np.ptp(points, axis=0) + voxel)


def _tumours_outside_kidney(labels: np.ndarray, voxel_ml: float) -> list[Flag]:
    tumours = cc3d.connected_components(labels == TUMOR, connectivity=26)
    kidney = labels == KIDNEY
    touching = np.bincount(tumours.ravel()) * voxel_ml < SPECK_ML  # specks count as touching
    for axis in range(3):  # a tumour voxel with a kidney voxel beside it, along any axis (the border is empty)
        for shift in (1, -1):
            neighbour = np.roll(kidney, shift, axis=axis)
            touching[np.unique(tumours[neighbour & (tumours > 0)])] = True
    alone = int(np.count_nonzero(~touching[1:]))
    return [Flag("tumour_outside_kidney", f"{alone} tumour region(s) touch no kidney tissue")] if alone else []
