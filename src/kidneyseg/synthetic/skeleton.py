"""Bones of a procedural phantom: vertebrae (bodies, discs, canal, arches) and ribs.

Positions are mm in the body frame (x patient Right, y Anterior, z Superior; see ``shapes``),
painted onto (X, Y, Z) arrays in Hounsfield units.
"""

from __future__ import annotations

import numpy as np

from kidneyseg.synthetic.shapes import Canvas, Tissue, paint_tube
from kidneyseg.synthetic.torso import BACK, Body


def paint_spine(canvas: Canvas, rng: np.random.Generator, body: Body) -> None:
    """Lumbar/thoracic vertebrae: bodies (cancellous ~250 HU, cortical rim ~700), discs, canal, arches."""
    s, ys, rx, ry = body.scale, body.spine_y, body.vert_rx, body.vert_ry
    rc = rng.uniform(7, 9) * s
    yc = ys - ry - rc - 2 * s
    box = canvas.grid.box((-60 * s, yc - rc - 40 * s, -np.inf), (60 * s, ys + ry + 1, np.inf))
    if box is None:
        return
    x, y, z = canvas.grid.coords(box)
    period, disc_h, rim = rng.uniform(28, 34) * s, rng.uniform(6, 9) * s, 2.5
    phase = (z - rng.uniform(0, period)) % period
    disc = phase < disc_h
    endplate = (phase < disc_h + rim) | (phase > period - rim)
    r = np.sqrt((x / rx) ** 2 + ((y - ys) / ry) ** 2)
    vertebra = r <= 1
    shell = (r > 1 - rim / rx) | endplate
    canvas.paint(box, vertebra & disc, rng.uniform(70, 100), Tissue.DISC)
    canvas.paint(box, vertebra & ~disc & ~shell, rng.uniform(220, 280), Tissue.BONE)
    canvas.paint(box, vertebra & ~disc & shell, rng.uniform(600, 800), Tissue.CORTICAL)
    level = (phase > disc_h + 2 * s) & (phase < period - 4 * s)
    canal = np.sqrt(x**2 + (y - yc) ** 2)
    arch = (canal > rc) & (canal <= rc + 5 * s) & (y <= yc + 0.5 * rc)
    spinous = (x / (4 * s)) ** 2 + ((y - (yc - rc - 17 * s)) / (15 * s)) ** 2 <= 1
    transverse = ((np.abs(x) - rx - 8 * s) / (15 * s)) ** 2 + ((y - yc - 0.3 * rc) / (4.5 * s)) ** 2 <= 1
    canvas.paint(box, (arch | spinous | transverse) & level, rng.uniform(350, 500), Tissue.CORTICAL,
                 protect=BACK)
    canvas.paint(box, canal <= rc, rng.uniform(5, 20), Tissue.CSF)


def _rib_points(body: Body, side: int, z_back: float, reach_deg: float, drop: float) -> np.ndarray:
    """Polyline (n, 3; mm) of one rib following the inside of the body wall from beside the spine
    (angle 20 deg from the posterior midline) round to ``reach_deg``, descending ``drop`` mm."""
    angles = np.deg2rad(np.linspace(20.0, reach_deg, 9))
    inset = body.fat_mm + 0.5 * body.wall_mm
    a, b, exponent = body.ax - inset, body.ay - inset, 2.0 / body.power
    x = side * a * np.abs(np.sin(angles)) ** exponent
    y = -b * np.sign(np.cos(angles)) * np.abs(np.cos(angles)) ** exponent
    z = z_back - drop * (angles - angles[0]) / (angles[-1] - angles[0])
    return np.stack([x, y, z], axis=1)


def paint_ribs(canvas: Canvas, rng: np.random.Generator, body: Body, z_lowest: float) -> None:
    """Ribs (bone, 250-450 HU) every 20-28 mm from ``z_lowest`` (at the back) to the top slice.

    The lowest two are short floating ribs; the others reach round to the front.
    """
    s, (_, z_top) = body.scale, body.z_range
    hu, step = rng.uniform(250, 450), rng.uniform(20, 28) * s
    for index, z_back in enumerate(np.arange(z_lowest, z_top + 60 * s, step)):
        reach = rng.uniform(80, 110) if index < 2 else rng.uniform(130, 160)
        drop = rng.uniform(30, 60) * s * reach / 150
        radius = rng.uniform(3.5, 5.0) * s
        for side in (1, -1):
            points = _rib_points(body, side, z_back + rng.uniform(-3, 3), reach, drop)
            paint_tube(canvas, points, radius, hu, Tissue.CORTICAL, protect=BACK)
