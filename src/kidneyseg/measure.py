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
* ``kidney_volume_out_of_range``: a side's kidney tissue (label 1) outside KIDNEY_ML_RANGE.
* ``kidney_not_beside_spine``: a region's centre is not 20-160 mm to the side of the body's
  midline, or lies in the anterior half of the body: kidneys are retroperitoneal, beside the spine.
* ``region_across_midline``: one region crosses the body's midline: a horseshoe kidney (about 1 in
  500 people) or, more often in a model's output, something that is not a kidney.
* ``tumour_outside_kidney``: a tumour region that touches no kidney voxel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cc3d
import numpy as np
from scipy.spatial.distance import pdist

from kidneyseg.geometry import bounding_box
from kidneyseg.io import Volume
from kidneyseg.labels import KIDNEY, TUMOR

# Adult kidney tissue without tumour, one side: normal kidneys hold about 100-250 mL; below 50 mL or
# above 400 mL is a partial kidney, a miss, or something that is not a kidney.
KIDNEY_ML_RANGE = (50.0, 400.0)
LATERAL_MM_RANGE = (20.0, 160.0)  # a kidney's centre from the body's midline
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


def measure(labels: np.ndarray, ct: Volume) -> CaseReport:
    """Volumes, tumour sizes and plausibility flags of one predicted case (see the module docstring)."""
    if labels.shape != ct.array.shape:
        raise ValueError(f"labels {labels.shape} and CT {ct.array.shape} differ in shape")
    if not labels.any():
        return CaseReport([], [Flag("no_kidney", "no kidney or tumour voxel was labelled")])
    midline, body_ap = _body_midline(ct, labels > 0)
    # Everything else on the labels' bounding box with a one-voxel border: quick on a whole CT.
    box = bounding_box(labels > 0)
    lo = np.maximum(np.array(box.lo) - 1, 0)
    labels = np.pad(labels[tuple(slice(a, b) for a, b in zip(lo, box.hi, strict=True))], ((0, 1),) * 3)
    affine = ct.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ lo  # the window's first voxel
    regions = cc3d.connected_components(labels > 0, connectivity=26)
    count = int(regions.max())
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    by_side: dict[str, list[int]] = {}
    flags = []
    for region in range(1, count + 1):
        points = _world(affine, np.argwhere(regions == region))
        side = _side(points[:, 0], midline)
        by_side.setdefault(side, []).append(region)
        lateral = abs(float(points[:, 0].mean()) - midline)
        anterior = float(points[:, 1].mean()) > body_ap
        if side == "both":
            flags.append(Flag("region_across_midline", "one region crosses the body's midline: a horseshoe kidney "
                                                       "(rare), or not a kidney"))
        if (side != "both" and not LATERAL_MM_RANGE[0] <= lateral <= LATERAL_MM_RANGE[1]) or anterior:
            flags.append(Flag("kidney_not_beside_spine",
                              f"a {side} region's centre is {lateral:.0f} mm from the midline"
                              f"{' and in the anterior half of the body' if anterior else ''}"))
    sides = []
    for side in sorted(by_side, key=["right", "left", "both"].index):
        members = np.isin(regions, by_side[side])
        measures = _side_measures(side, len(by_side[side]), labels, members, affine, voxel_ml)
        sides.append(measures)
        if measures.regions > 1:
            flags.append(Flag("several_regions_on_one_side", f"{measures.regions} separate regions on the {side}"))
        low, high = KIDNEY_ML_RANGE
        if not low <= measures.kidney_ml <= high:
            flags.append(Flag("kidney_volume_out_of_range", f"{side} kidney tissue {measures.kidney_ml:.0f} mL, "
                                                            f"outside the adult range {low:.0f}-{high:.0f} mL"))
    flags += _tumours_outside_kidney(labels)
    return CaseReport(sides, flags)


def _side_measures(side: str, count: int, labels: np.ndarray, members: np.ndarray, affine: np.ndarray,
                   voxel_ml: float) -> SideMeasures:
    tumours = cc3d.connected_components((labels == TUMOR) & members, connectivity=26)
    sizes = np.bincount(tumours.ravel())[1:]
    largest_ml, axial, extent = 0.0, 0.0, (0.0, 0.0, 0.0)
    if sizes.size:
        largest = tumours == int(np.argmax(sizes)) + 1
        largest_ml = float(sizes.max()) * voxel_ml
        axial, extent = _axial_diameter_mm(largest, affine), _extent_mm(largest, affine)
    return SideMeasures(side, count, float(np.count_nonzero((labels == KIDNEY) & members)) * voxel_ml,
                        float(np.count_nonzero((labels == TUMOR) & members)) * voxel_ml, int(sizes.size),
                        largest_ml, axial, extent)


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


def _body_midline(ct: Volume, kidneys: np.ndarray) -> tuple[float, float]:
    """(mean world x, mean world y) of the body in the axial slices holding the kidneys, on every
    4th voxel in-plane (enough for a mean, and quick on a 512 x 512 CT)."""
    slices = np.flatnonzero(kidneys.any(axis=(0, 1)))
    body = ct.array[::4, ::4, slices] > BODY_HU
    index = np.argwhere(body) * np.array([4, 4, 1])
    index[:, 2] = slices[index[:, 2]]
    points = _world(ct.affine, index)
    return float(points[:, 0].mean()), float(points[:, 1].mean())


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


def _tumours_outside_kidney(labels: np.ndarray) -> list[Flag]:
    tumours = cc3d.connected_components(labels == TUMOR, connectivity=26)
    kidney = labels == KIDNEY
    touching = np.zeros(int(tumours.max()) + 1, bool)
    for axis in range(3):  # a tumour voxel with a kidney voxel beside it, along any axis (the border is empty)
        for shift in (1, -1):
            neighbour = np.roll(kidney, shift, axis=axis)
            touching[np.unique(tumours[neighbour & (tumours > 0)])] = True
    alone = int(np.count_nonzero(~touching[1:]))
    return [Flag("tumour_outside_kidney", f"{alone} tumour region(s) touch no kidney tissue")] if alone else []
