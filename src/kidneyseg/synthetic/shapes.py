"""Geometry for the procedural phantoms: a voxel grid in mm, a canvas to paint tissues on, shapes.

Arrays are (X, Y, Z) in RAS+ voxel order. Coordinates are mm in the phantom's body frame, whose
axes are those of nibabel's RAS+ world space: x increases from the patient's left towards the
patient's Right (the R of RAS+), y towards Anterior, z towards Superior.
So the liver and right kidney have larger x than the spleen and left kidney. The body frame's
origin is the centre of the body outline in the middle slice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy.ndimage import gaussian_filter

from kidneyseg.labels import BACKGROUND

Box = tuple[slice, slice, slice]


class Tissue(IntEnum):
    """Tissue ids of a phantom's tissue map (uint8, (X, Y, Z) on the CT's grid)."""

    AIR = 0
    SUBCUT_FAT = 1
    WALL = 2  # abdominal wall muscle
    FAT = 3  # intra-abdominal fat
    MUSCLE = 4  # psoas, quadratus lumborum, paraspinal muscles
    BONE = 5  # cancellous bone
    CORTICAL = 6
    DISC = 7
    CSF = 8
    ARTERY = 9
    VEIN = 10
    LIVER = 11
    SPLEEN = 12
    BOWEL_WALL = 13
    BOWEL_CONTENT = 14
    PERIRENAL_FAT = 15
    CORTEX = 16
    MEDULLA = 17
    SINUS = 18  # renal sinus fat
    PELVIS = 19  # urine in the renal pelvis
    TUMOUR = 20
    NECROSIS = 21  # and the other low-attenuation parts of tumours: scar, cysts, fat
    LUNG = 22
    HEART = 23  # myocardium
    URINE = 24  # bladder contents


KIDNEY_TISSUES = frozenset({Tissue.CORTEX, Tissue.MEDULLA, Tissue.SINUS, Tissue.PELVIS})
TUMOUR_TISSUES = frozenset({Tissue.TUMOUR, Tissue.NECROSIS})
OUTSIDE_CAVITY = frozenset({Tissue.AIR, Tissue.SUBCUT_FAT, Tissue.WALL})
SKELETON = frozenset({Tissue.BONE, Tissue.CORTICAL, Tissue.DISC, Tissue.CSF})
GREAT_VESSELS = frozenset({Tissue.ARTERY, Tissue.VEIN})


@dataclass(frozen=True)
class Grid:
    """Voxel-centre coordinates in mm along X, Y and Z (1D, each increasing with the index)."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray

    @classmethod
    def centred(cls, shape: Sequence[int], spacing: Sequence[float], offset: Sequence[float]) -> Grid:
        """Grid of ``shape`` voxels of ``spacing`` mm whose centre is at ``-offset`` mm."""
        axes = [(np.arange(n) - (n - 1) / 2) * s - o for n, s, o in zip(shape, spacing, offset, strict=True)]
        return cls(*axes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.x), len(self.y), len(self.z)

    @property
    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.x, self.y, self.z

    def box(self, lo: Sequence[float], hi: Sequence[float]) -> Box | None:
        """Index slices of the voxels whose centres lie in [lo, hi] (mm per axis); None if empty."""
        slices = []
        for axis, a, b in zip(self.axes, lo, hi, strict=True):
            start = int(np.searchsorted(axis, a, side="left"))
            stop = int(np.searchsorted(axis, b, side="right"))
            if stop <= start:
                return None
            slices.append(slice(start, stop))
        return slices[0], slices[1], slices[2]

    def coords(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coordinates (mm) of ``box`` as arrays of shapes (n, 1, 1), (1, m, 1), (1, 1, k)."""
        return (self.x[box[0]][:, None, None], self.y[box[1]][None, :, None], self.z[box[2]][None, None, :])


FULL: Box = (slice(None), slice(None), slice(None))


def box_shape(grid: Grid, box: Box) -> tuple[int, int, int]:
    """Number of voxels of ``box`` along X, Y, Z."""
    n = [len(range(*s.indices(size))) for s, size in zip(box, grid.shape, strict=True)]
    return n[0], n[1], n[2]


def _lookup(tissues: Iterable[int]) -> np.ndarray:
    table = np.zeros(256, dtype=bool)
    table[list(tissues)] = True
    return table


class Canvas:
    """A phantom being painted: HU (float32), tissue ids and KiTS labels, all (X, Y, Z) on ``grid``."""

    def __init__(self, grid: Grid):
        self.grid = grid
        self.hu = np.full(grid.shape, -1000.0, dtype=np.float32)
        self.tissue = np.zeros(grid.shape, dtype=np.uint8)
        self.labels = np.zeros(grid.shape, dtype=np.uint8)

    def paint(
        self,
        box: Box,
        mask: np.ndarray,
        hu: float | np.ndarray,
        tissue: Tissue,
        *,
        label: int = BACKGROUND,
        protect: Iterable[int] = (),
        where: Iterable[int] | None = None,
    ) -> np.ndarray:
        """Set the voxels of ``box`` selected by ``mask`` to ``hu``, ``tissue`` and ``label``.

        ``mask`` and an array ``hu`` broadcast to the box's shape. Voxels whose current tissue is
        in ``protect``, or (when given) not in ``where``, are left alone. Returns the mask painted.
        """
        tissue_view = self.tissue[box]
        mask = np.broadcast_to(mask, tissue_view.shape)
        protect = tuple(protect)
        if protect:
            mask = mask & ~_lookup(protect)[tissue_view]
        if where is not None:
            mask = mask & _lookup(where)[tissue_view]
        hu_view = self.hu[box]
        hu_view[mask] = np.broadcast_to(hu, mask.shape)[mask] if np.ndim(hu) else hu
        tissue_view[mask] = tissue
        self.labels[box][mask] = label
        return mask


def frame(long_axis: Sequence[float], lateral: Sequence[float]) -> np.ndarray:
    """Orthonormal (3, 3) matrix with columns u (along ``long_axis``), v (``lateral`` made
    orthogonal to u) and w = u x v; a vector's local coordinates are ``frame.T @ vector``."""
    u = np.asarray(long_axis, dtype=float)
    u = u / np.linalg.norm(u)
    v = np.asarray(lateral, dtype=float)
    v = v - (v @ u) * u
    v = v / np.linalg.norm(v)
    return np.stack([u, v, np.cross(u, v)], axis=1)


def random_unit(rng: np.random.Generator) -> np.ndarray:
    """A direction drawn uniformly on the unit sphere, shape (3,)."""
    vector = rng.standard_normal(3)
    return vector / max(float(np.linalg.norm(vector)), 1e-9)


def rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A (3, 3) rotation by up to ``max_deg`` degrees about a random axis (Rodrigues' formula)."""
    axis = random_unit(rng)
    angle = np.deg2rad(rng.uniform(-max_deg, max_deg))
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def rotation_z(degrees: float) -> np.ndarray:
    """A (3, 3) rotation about the z (cranio-caudal) axis."""
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def ellipsoid_coords(
    grid: Grid, centre: Sequence[float], semi: Sequence[float], rot: np.ndarray, pad: float = 0.0
) -> tuple[Box, list[np.ndarray]] | None:
    """Box around an ellipsoid (semi-axes ``semi`` mm along the columns of ``rot``, grown by
    ``pad`` mm) and the normalised local coordinates q = (rot.T @ (p - centre)) / semi on it.

    q has norm <= 1 inside the ellipsoid itself; each array broadcasts to the box's shape.
    Returns None when the ellipsoid misses the grid.
    """
    centre = np.asarray(centre, dtype=float)
    semi = np.asarray(semi, dtype=float)
    half = np.sqrt(((rot * (semi + pad)) ** 2).sum(axis=1))
    box = grid.box(centre - half, centre + half)
    if box is None:
        return None
    offsets = [c - c0 for c, c0 in zip(grid.coords(box), centre, strict=True)]
    local = [sum(offsets[i] * rot[i, k] for i in range(3)) / semi[k] for k in range(3)]
    return box, local


def norm2(q: Sequence[np.ndarray], centre: Sequence[float] = (0.0, 0.0, 0.0),
          semi: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Squared normalised distance sum(((q - centre) / semi) ** 2) of coordinate arrays ``q``."""
    return sum(((qk - ck) / sk) ** 2 for qk, ck, sk in zip(q, centre, semi, strict=True))


def chain_distance(grid: Grid, points: np.ndarray, pad: float) -> tuple[Box, np.ndarray] | None:
    """Distance (mm) to a polyline through ``points`` (n, 3) on the box reaching ``pad`` mm past it."""
    points = np.asarray(points, dtype=float)
    box = grid.box(points.min(axis=0) - pad, points.max(axis=0) + pad)
    if box is None:
        return None
    xyz = grid.coords(box)
    best = None
    for p0, p1 in zip(points[:-1], points[1:], strict=True):
        step = p1 - p0
        length2 = max(float(step @ step), 1e-9)
        rel = [c - c0 for c, c0 in zip(xyz, p0, strict=True)]
        t = np.clip(sum(r * d for r, d in zip(rel, step, strict=True)) / length2, 0.0, 1.0)
        dist2 = sum((r - t * d) ** 2 for r, d in zip(rel, step, strict=True))
        best = dist2 if best is None else np.minimum(best, dist2)
    return box, np.sqrt(best)


def paint_tube(canvas: Canvas, points: np.ndarray, radius: float, hu: float, tissue: Tissue,
               **paint_args: object) -> None:
    """Paint a tube of ``radius`` mm along the polyline ``points`` (n, 3; mm) one segment at a time
    (each in its own small box); ``paint_args`` go to ``Canvas.paint``."""
    points = np.asarray(points, dtype=float)
    for p0, p1 in zip(points[:-1], points[1:], strict=True):
        segment = chain_distance(canvas.grid, np.stack([p0, p1]), radius)
        if segment is not None:
            canvas.paint(segment[0], segment[1] <= radius, hu, tissue, **paint_args)


def smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma_vox: float) -> np.ndarray:
    """Gaussian random field of ``shape`` with unit standard deviation, smoothed by ``sigma_vox``."""
    field = gaussian_filter(rng.standard_normal(tuple(shape)).astype(np.float32), sigma_vox, mode="wrap")
    sd = float(field.std())
    return field / sd if sd > 0 else field
