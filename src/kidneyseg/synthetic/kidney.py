"""Kidneys and tumours of a procedural phantom (mm in the body frame, HU, KiTS labels).

A kidney is an ellipsoid (about 110 x 55 x 45 mm) whose long axis runs cranio-caudally, tilted so
the upper pole is medial and posterior, and whose hilum faces antero-medially. Its whole outline
is labelled kidney (1): bright cortex, darker medullary pyramids, renal sinus fat and pelvis.
Tumours (label 2) are lumpy blobs centred near the kidney surface, so partly exophytic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kidneyseg.labels import KIDNEY, TUMOR
from kidneyseg.synthetic.shapes import (
    GREAT_VESSELS,
    KIDNEY_TISSUES,
    OUTSIDE_CAVITY,
    SKELETON,
    TUMOUR_TISSUES,
    Canvas,
    Tissue,
    box_shape,
    ellipsoid_coords,
    frame,
    norm2,
    random_unit,
    smooth_noise,
)
from kidneyseg.synthetic.torso import Body

NEPHRECTOMY_RATE = 0.15
KIDNEY_SEMI_MM = np.array([55.0, 27.5, 22.5])  # long axis, lateral (width), depth
TUMOUR_RADIUS_MM = (6.0, 35.0)
_KEEP_OUT = SKELETON | OUTSIDE_CAVITY
_SINUS = ((0.0, -0.45, 0.0), (0.5, 0.58, 0.42))  # centre, semi-axes in normalised kidney coordinates
_PELVIS = ((0.0, -0.5, 0.0), (0.22, 0.3, 0.2))


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


def plan_kidneys(rng: np.random.Generator, body: Body) -> list[Kidney]:
    """Right and left kidney lateral to the spine, the right one usually lower; one may be absent."""
    s = body.scale
    z_centre = rng.uniform(-15, 15) * s
    stagger = rng.uniform(0, 25) * s
    absent = int(rng.integers(2)) if rng.random() < NEPHRECTOMY_RATE else -1
    cortex = rng.uniform(185, 235)
    kidneys = []
    for index, side in enumerate((1, -1)):
        semi = KIDNEY_SEMI_MM * s * rng.uniform(0.88, 1.12) * rng.uniform(0.93, 1.07, 3)
        y = body.spine_y + rng.uniform(0, 15) * s
        room = body.half_width(y, body.fat_mm + body.wall_mm) - semi[1] - 6 * s
        x = side * max(min(body.vert_rx + rng.uniform(35, 50) * s, room), body.vert_rx + semi[1])
        tilt, tip, turn = np.deg2rad(rng.uniform((8, 5, 20), (20, 15, 40)))
        rot = frame((-side * np.tan(tilt), -np.tan(tip), 1.0), (side * np.cos(turn), -np.sin(turn), 0.0))
        centre = np.array([x, y, z_centre - side * stagger / 2])
        kidneys.append(Kidney(side, centre, semi, rot, index != absent, cortex + rng.uniform(-6, 6),
                              rng.uniform(60, 130)))
    return kidneys


def paint_perirenal_fat(canvas: Canvas, rng: np.random.Generator, kidney: Kidney) -> None:
    """Fat inside Gerota's fascia, a few mm around the kidney (carves into liver, spleen, bowel)."""
    margin = rng.uniform(3, 12)
    shape = ellipsoid_coords(canvas.grid, kidney.centre, kidney.semi + margin, kidney.rot)
    if shape is not None:
        canvas.paint(shape[0], norm2(shape[1]) <= 1, rng.uniform(-110, -80), Tissue.PERIRENAL_FAT,
                     protect=OUTSIDE_CAVITY)


def _pyramid_centres(rng: np.random.Generator) -> list[np.ndarray]:
    """Centres (normalised kidney coordinates) of 10-14 medullary pyramids around the sinus."""
    centres = []
    for _ in range(int(rng.integers(10, 15))):
        along = rng.uniform(-0.8, 0.8)
        angle = np.deg2rad(rng.uniform(-110, 110))  # 0 = lateral, +-90 = anterior/posterior
        across = np.sqrt(1 - along**2)
        direction = np.array([along, across * np.cos(angle), across * np.sin(angle)])
        centres.append(0.5 * direction / np.linalg.norm(direction))
    return centres


def paint_kidney(canvas: Canvas, rng: np.random.Generator, kidney: Kidney) -> None:
    """Cortex (150-250 HU), medullary pyramids (60-130), sinus fat (-100..-50) and pelvis; label 1."""
    shape = ellipsoid_coords(canvas.grid, kidney.centre, kidney.semi, kidney.rot)
    if shape is None:
        return
    box, q = shape
    outline = canvas.paint(box, norm2(q) <= 1, kidney.cortex_hu, Tissue.CORTEX, label=KIDNEY, protect=_KEEP_OUT)
    for centre in _pyramid_centres(rng):
        radius = rng.uniform(0.26, 0.32)
        pyramid = norm2(q, centre, (radius, radius, radius)) <= 1
        canvas.paint(box, pyramid & outline, kidney.medulla_hu + rng.uniform(-10, 10), Tissue.MEDULLA,
                     label=KIDNEY)
    canvas.paint(box, (norm2(q, *_SINUS) <= 1) & outline, rng.uniform(-100, -50), Tissue.SINUS, label=KIDNEY)
    canvas.paint(box, (norm2(q, *_PELVIS) <= 1) & outline, rng.uniform(0, 20), Tissue.PELVIS, label=KIDNEY)


def _lobes(rng: np.random.Generator, kidney: Kidney, radius: float) -> list[tuple[np.ndarray, float]]:
    """(centre mm, radius mm) of a tumour's overlapping spheres, the main one near the kidney surface."""
    centre = kidney.to_world(random_unit(rng) * rng.uniform(0.75, 1.1))
    lobes = [(centre, radius)]
    for _ in range(int(rng.integers(1, 4))):
        offset = random_unit(rng) * radius * rng.uniform(0.3, 0.6)
        lobes.append((centre + offset, radius * rng.uniform(0.45, 0.75)))
    return lobes


def paint_tumour(canvas: Canvas, rng: np.random.Generator, kidney: Kidney) -> int:
    """One lumpy, heterogeneous tumour (40-200 HU, necrotic ~20 HU centre when large) on ``kidney``.

    The tumour pushes a thin rim of fat ahead of it into neighbouring organs. Returns the
    number of voxels labelled tumour (2).
    """
    radius = min(float(rng.uniform(*TUMOUR_RADIUS_MM)), 0.8 * float(kidney.semi[0]))
    lobes = _lobes(rng, kidney, radius)
    rim_mm = rng.uniform(2, 5)
    centre = lobes[0][0]
    box = canvas.grid.box(centre - 1.7 * radius - rim_mm, centre + 1.7 * radius + rim_mm)
    if box is None:
        return 0
    shape = box_shape(canvas.grid, box)
    xyz = canvas.grid.coords(box)

    def scaled_distance(point: np.ndarray, r: float) -> np.ndarray:
        return np.sqrt(sum((c - p) ** 2 for c, p in zip(xyz, point, strict=True))) / r

    field = np.minimum.reduce([scaled_distance(c, r) for c, r in lobes]) + 0.06 * smooth_noise(rng, shape, 1.5)
    keep_out = _KEEP_OUT | GREAT_VESSELS
    canvas.paint(box, field <= 1 + rim_mm / radius, rng.uniform(-110, -80), Tissue.PERIRENAL_FAT,
                 protect=keep_out | KIDNEY_TISSUES | TUMOUR_TISSUES)
    hu = rng.uniform(40, 200) + rng.uniform(10, 35) * smooth_noise(rng, shape, 1.2)
    painted = canvas.paint(box, field <= 1, hu, Tissue.TUMOUR, label=TUMOR, protect=keep_out)
    if radius > 20:
        core = scaled_distance(centre, radius) + 0.1 * smooth_noise(rng, shape, 1.5)
        necrosis = rng.uniform(10, 30) + 5 * smooth_noise(rng, shape, 1.0)
        canvas.paint(box, core <= rng.uniform(0.35, 0.55), necrosis, Tissue.NECROSIS, label=TUMOR,
                     where={Tissue.TUMOUR})
    return int(painted.sum())


def paint_tumours(canvas: Canvas, rng: np.random.Generator, kidneys: list[Kidney]) -> None:
    """1-2 tumours, each on a random present kidney; redrawn until at least one voxel is tumour."""
    present = [k for k in kidneys if k.present]
    count = 0
    for _ in range(int(rng.integers(1, 3))):
        count += paint_tumour(canvas, rng, present[rng.integers(len(present))])
    for _ in range(20):
        if count:
            return
        count = paint_tumour(canvas, rng, present[rng.integers(len(present))])
