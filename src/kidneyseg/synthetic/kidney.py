"""Kidneys and tumours of a procedural phantom: placement (mm in the body frame) and labels.

A kidney is an ellipsoid (about 110 x 55 x 45 mm) whose long axis runs cranio-caudally, tilted so
the upper pole is medial and posterior, and whose hilum faces antero-medially. Its whole outline
is labelled kidney (1); ``renal`` draws the cortex, medullary pyramids, sinus fat and pelvis
inside it. Tumours (label 2) are lumpy blobs centred near the kidney surface, so partly
exophytic. The label map is drawn first; the shared renderer (``scene``) then draws the CT
around and inside it, exactly as it does for a real KiTS19 label map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kidneyseg.labels import KIDNEY, TUMOR
from kidneyseg.synthetic.contrast import Contrast
from kidneyseg.synthetic.shapes import Grid, box_shape, ellipsoid_coords, frame, norm2, random_unit, smooth_noise
from kidneyseg.synthetic.torso import Body

NEPHRECTOMY_RATE = 0.15
KIDNEY_SEMI_MM = np.array([55.0, 27.5, 22.5])  # long axis, lateral (width), depth
TUMOUR_RADIUS_MM = (6.0, 35.0)
SINUS = ((0.0, -0.45, 0.0), (0.55, 0.62, 0.48))  # centre, semi-axes in normalised kidney coordinates
PELVIS = ((0.0, -0.5, 0.0), (0.22, 0.3, 0.2))
HILUM_TURN_DEG = (20.0, 40.0)  # the hilum faces medially, turned this far anteriorly


@dataclass(frozen=True)
class Kidney:
    """One kidney's placement (mm, body frame) and enhancement (HU)."""

    side: int  # +1 right kidney (larger x), -1 left
    centre: np.ndarray  # (3,)
    semi: np.ndarray  # (3,) semi-axes along the columns of ``rot``
    rot: np.ndarray  # (3, 3) columns: long axis (pointing up), lateral, depth
    present: bool  # False after a nephrectomy
    cortex_hu: float
    medulla_hu: float

    def to_world(self, q: np.ndarray) -> np.ndarray:
        """World position (mm) of normalised kidney coordinates ``q`` (|q| = 1 on the surface)."""
        return self.centre + self.rot @ (self.semi * np.asarray(q, dtype=float))

    @property
    def hilum(self) -> np.ndarray:
        """A point just inside the medial surface, where the renal vessels enter."""
        return self.to_world(np.array([0.0, -0.9, 0.0]))


def lateral_direction(rng: np.random.Generator, side: int) -> tuple[float, float, float]:
    """Unit vector (mm frame) from the hilum to the convex lateral border of a ``side`` kidney."""
    turn = np.deg2rad(rng.uniform(*HILUM_TURN_DEG))
    return side * float(np.cos(turn)), -float(np.sin(turn)), 0.0


def kidney_hu(rng: np.random.Generator, contrast: Contrast) -> tuple[float, float]:
    """One kidney's cortex (150-250 HU) and medulla (60-130 HU) from the case's contrast."""
    cortex = float(np.clip(contrast.cortex + rng.uniform(-6, 6), 150, 250))
    return cortex, float(np.clip(contrast.medulla + rng.uniform(-8, 8), 60, 130))


def plan_kidneys(rng: np.random.Generator, body: Body) -> list[Kidney]:
    """Right and left kidney lateral to the spine, the right one usually lower; one may be absent."""
    s = body.scale
    z_centre = rng.uniform(-15, 15) * s
    stagger = rng.uniform(0, 25) * s
    absent = int(rng.integers(2)) if rng.random() < NEPHRECTOMY_RATE else -1
    kidneys = []
    for index, side in enumerate((1, -1)):
        semi = KIDNEY_SEMI_MM * s * rng.uniform(0.88, 1.12) * rng.uniform(0.93, 1.07, 3)
        y = body.spine_y + rng.uniform(0, 15) * s
        room = body.half_width(y, body.fat_mm + body.wall_mm) - semi[1] - 6 * s
        x = side * max(min(body.vert_rx + rng.uniform(35, 50) * s, room), body.vert_rx + semi[1])
        tilt, tip = np.deg2rad(rng.uniform((8, 5), (20, 15)))
        rot = frame((-side * np.tan(tilt), -np.tan(tip), 1.0), lateral_direction(rng, side))
        centre = np.array([x, y, z_centre - side * stagger / 2])
        kidneys.append(Kidney(side, centre, semi, rot, index != absent, *kidney_hu(rng, body.contrast)))
    return kidneys


def pyramid_centres(rng: np.random.Generator) -> list[np.ndarray]:
    """Centres (normalised kidney coordinates) of 10-14 medullary pyramids around the sinus."""
    centres = []
    for _ in range(int(rng.integers(10, 15))):
        along = rng.uniform(-0.8, 0.8)
        angle = np.deg2rad(rng.uniform(-110, 110))  # 0 = lateral, +-90 = anterior/posterior
        across = np.sqrt(1 - along**2)
        direction = np.array([along, across * np.cos(angle), across * np.sin(angle)])
        centres.append(0.5 * direction / np.linalg.norm(direction))
    return centres


def _lobes(rng: np.random.Generator, kidney: Kidney, radius: float) -> list[tuple[np.ndarray, float]]:
    """(centre mm, radius mm) of a tumour's overlapping spheres, the main one near the kidney surface."""
    centre = kidney.to_world(random_unit(rng) * rng.uniform(0.75, 1.1))
    lobes = [(centre, radius)]
    for _ in range(int(rng.integers(1, 4))):
        offset = random_unit(rng) * radius * rng.uniform(0.3, 0.6)
        lobes.append((centre + offset, radius * rng.uniform(0.45, 0.75)))
    return lobes


def _keep_out(body: Body, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Where no kidney or tumour may be drawn (x, y mm broadcasting): outside the abdominal wall,
    in the vertebral bodies, aorta or IVC."""
    xa, ya, ra = body.aorta
    xi, yi, ai, bi = body.ivc
    vertebra = (x / body.vert_rx) ** 2 + ((y - body.spine_y) / body.vert_ry) ** 2 <= 1
    aorta = (x - xa) ** 2 + (y - ya) ** 2 <= (ra + 2) ** 2
    ivc = ((x - xi) / (ai + 2)) ** 2 + ((y - yi) / (bi + 2)) ** 2 <= 1
    return ~body.in_cavity(x, y) | vertebra | aorta | ivc


def draw_tumour(rng: np.random.Generator, labels: np.ndarray, grid: Grid, body: Body, kidney: Kidney) -> int:
    """Label one lumpy tumour (2) near ``kidney``'s surface in ``labels`` ((X, Y, Z) on ``grid``);
    returns the number of voxels labelled."""
    radius = min(float(rng.uniform(*TUMOUR_RADIUS_MM)), 0.8 * float(kidney.semi[0]))
    lobes = _lobes(rng, kidney, radius)
    centre = lobes[0][0]
    box = grid.box(centre - 1.7 * radius, centre + 1.7 * radius)
    if box is None:
        return 0
    xyz = grid.coords(box)
    distances = [np.sqrt(sum((c - p) ** 2 for c, p in zip(xyz, point, strict=True))) / r for point, r in lobes]
    field = np.minimum.reduce(distances) + 0.06 * smooth_noise(rng, box_shape(grid, box), 1.5)
    inside = (field <= 1) & ~_keep_out(body, xyz[0], xyz[1])
    labels[box][inside] = TUMOR
    return int(inside.sum())


def draw_kidney_labels(rng: np.random.Generator, grid: Grid, body: Body, kidneys: list[Kidney]) -> np.ndarray:
    """The label map ((X, Y, Z) uint8 on ``grid``) of the present kidneys (1) and 1-2 tumours (2),
    redrawn until at least one voxel is tumour."""
    labels = np.zeros(grid.shape, dtype=np.uint8)
    present = [k for k in kidneys if k.present]
    for kidney in present:
        shape = ellipsoid_coords(grid, kidney.centre, kidney.semi, kidney.rot)
        if shape is not None:
            box, q = shape
            x, y, _ = grid.coords(box)
            labels[box][(norm2(q) <= 1) & ~_keep_out(body, x, y)] = KIDNEY
    count = 0
    for _ in range(int(rng.integers(1, 3))):
        count += draw_tumour(rng, labels, grid, body, present[rng.integers(len(present))])
    for _ in range(20):
        if count:
            break
        count = draw_tumour(rng, labels, grid, body, present[rng.integers(len(present))])
    return labels
