"""Chest and pelvis of a phantom, for fields of view reaching far above or below the kidneys.

Above the diaphragm (``z_dome``, mm): lungs (-880..-780 HU) with arterial-phase pulmonary vessels,
and the heart (myocardium 100-140 HU, left chambers as bright as the aorta, right ones like the
veins). Below the iliac crests (``z_crest``): iliac wings (cancellous 150-300 HU, cortex 400-650)
and the bladder (urine 0-20 HU). Positions are mm in the body frame (x patient Right, y Anterior,
z Superior; see ``shapes``), painted onto (X, Y, Z) arrays in Hounsfield units.
"""

from __future__ import annotations

import numpy as np

from kidneyseg.synthetic.shapes import (
    GREAT_VESSELS,
    OUTSIDE_CAVITY,
    SKELETON,
    Canvas,
    Tissue,
    ellipsoid_coords,
    norm2,
    paint_tube,
    random_unit,
    rotation,
    rotation_z,
)
from kidneyseg.synthetic.torso import Body

_KEEP_OUT = SKELETON | OUTSIDE_CAVITY


def paint_lungs(canvas: Canvas, rng: np.random.Generator, body: Body, z_dome: float) -> None:
    """Both lungs above a diaphragm whose dome peaks at ``z_dome`` and whose recesses reach 40-70 mm
    lower at the periphery, beside a mediastinum widening anteriorly; with pulmonary vessels."""
    s, grid = body.scale, canvas.grid
    drop = rng.uniform(40, 70) * s
    box = grid.box((-body.ax, -body.ay, z_dome - drop), (body.ax, body.ay, np.inf))
    if box is None:
        return
    x, y, z = grid.coords(box)
    radial = np.minimum((x / (0.6 * body.ax)) ** 2 + ((y - 0.1 * body.ay) / (0.7 * body.ay)) ** 2, 1.0)
    above = z > z_dome - drop * radial
    mediastinum = rng.uniform(25, 35) * s + rng.uniform(30, 50) * s * np.clip((y - body.spine_y) / body.ay, 0, 1)
    lung = above & body.in_cavity(x, y, 3.0) & (np.abs(x) > mediastinum) & (y > body.spine_y - body.vert_ry - 30 * s)
    canvas.paint(box, lung, rng.uniform(-880, -780), Tissue.LUNG, protect=_KEEP_OUT | GREAT_VESSELS | {Tissue.MUSCLE})
    z_top = float(grid.z[-1])
    for _ in range(int(rng.integers(12, 20))):
        side = rng.choice((-1, 1))
        start = np.array([side * rng.uniform(20, 40) * s, body.spine_y + rng.uniform(30, 60) * s,
                          rng.uniform(z_dome, max(z_dome, z_top))])
        end = start + rng.uniform(40, 90) * s * (np.array([side, 0.0, 0.0]) + 0.8 * random_unit(rng))
        paint_tube(canvas, np.stack([start, end]), rng.uniform(1.5, 4.0) * s, body.aorta_hu * rng.uniform(0.7, 1.0),
                   Tissue.ARTERY, where={Tissue.LUNG})


def paint_heart(canvas: Canvas, rng: np.random.Generator, body: Body, z_dome: float) -> None:
    """The heart resting on the diaphragm, anterior and left of the midline."""
    s = body.scale
    semi = np.array([rng.uniform(55, 70), rng.uniform(42, 52), rng.uniform(48, 60)]) * s
    centre = (-rng.uniform(10, 30) * s, body.spine_y + body.vert_ry + semi[1] + rng.uniform(25, 40) * s,
              z_dome + 0.8 * semi[2])
    shape = ellipsoid_coords(canvas.grid, centre, semi, rotation_z(rng.uniform(20, 45)) @ rotation(rng, 10))
    if shape is None:
        return
    box, q = shape
    canvas.paint(box, norm2(q) <= 1, rng.uniform(100, 140), Tissue.HEART, protect=_KEEP_OUT)
    for offset, hu, tissue in (((-0.3, -0.15, 0.0), body.aorta_hu, Tissue.ARTERY),
                               ((0.35, 0.2, 0.0), body.vein_hu, Tissue.VEIN)):
        chamber = norm2(q, offset, (0.5, 0.5, 0.6)) <= 1
        canvas.paint(box, chamber, hu + rng.uniform(-20, 20), tissue, where={Tissue.HEART})


def paint_pelvis(canvas: Canvas, rng: np.random.Generator, body: Body, z_crest: float) -> None:
    """Iliac wings (thin bony plates) below the iliac crests at ``z_crest`` and the bladder low in
    the pelvis."""
    s = body.scale
    cortical, cancellous = rng.uniform(400, 650), rng.uniform(150, 300)
    for side in (1, -1):
        semi = np.array([rng.uniform(55, 70), rng.uniform(9, 13), rng.uniform(50, 65)]) * s
        centre = (side * rng.uniform(70, 90) * s, body.spine_y + rng.uniform(-5, 15) * s, z_crest - 0.9 * semi[2])
        shape = ellipsoid_coords(canvas.grid, centre, semi, rotation_z(side * rng.uniform(25, 40)))
        if shape is not None:
            box, q = shape
            canvas.paint(box, norm2(q) <= 1, cortical, Tissue.CORTICAL, protect=OUTSIDE_CAVITY)
            core = norm2(q, semi=1 - 2.5 / semi) <= 1
            canvas.paint(box, core, cancellous, Tissue.BONE, where={Tissue.CORTICAL})
    semi = np.array([rng.uniform(35, 55), rng.uniform(30, 45), rng.uniform(30, 45)]) * s
    centre = (rng.uniform(-10, 10) * s, body.spine_y + rng.uniform(90, 120) * s, z_crest - rng.uniform(110, 150) * s)
    shape = ellipsoid_coords(canvas.grid, centre, semi, rotation(rng, 10))
    if shape is not None:
        box, q = shape
        canvas.paint(box, norm2(q) <= 1, rng.uniform(35, 50), Tissue.BOWEL_WALL, protect=_KEEP_OUT)
        canvas.paint(box, norm2(q, semi=1 - 3.0 / semi) <= 1, rng.uniform(0, 20), Tissue.URINE,
                     where={Tissue.BOWEL_WALL})
