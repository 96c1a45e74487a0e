"""Blood vessels of a procedural phantom (arterial phase): aorta and IVC, renal arteries and veins,
and mesenteric vessels. Positions are mm in the body frame (x patient Right, y Anterior,
z Superior; see ``shapes``), painted onto (X, Y, Z) arrays in Hounsfield units.
"""

from __future__ import annotations

import numpy as np

from kidneyseg.synthetic.kidney import Kidney
from kidneyseg.synthetic.shapes import FULL, OUTSIDE_CAVITY, SKELETON, Canvas, Tissue, paint_tube, random_unit
from kidneyseg.synthetic.torso import Body

_KEEP_OUT = SKELETON | OUTSIDE_CAVITY


def paint_great_vessels(canvas: Canvas, body: Body, z_split: float = -np.inf) -> None:
    """Aorta (arterial phase, 200-340 HU) left of the midline and IVC right of it, in every slice
    above ``z_split`` (mm); below it the common iliac arteries and veins diverge towards the pelvis."""
    x, y, z = canvas.grid.x[:, None, None], canvas.grid.y[None, :, None], canvas.grid.z[None, None, :]
    xa, ya, ra = body.aorta
    xi, yi, ai, bi = body.ivc
    ivc = (((x - xi) / ai) ** 2 + ((y - yi) / bi) ** 2 <= 1) & (z >= z_split - 10 * body.scale)
    canvas.paint(FULL, ivc, body.vein_hu, Tissue.VEIN)
    aorta = ((x - xa) ** 2 + (y - ya) ** 2 <= ra**2) & (z >= z_split)
    canvas.paint(FULL, aorta, body.aorta_hu, Tissue.ARTERY, protect=SKELETON)
    if z_split > canvas.grid.z[0]:
        _paint_iliacs(canvas, body, z_split)


def _paint_iliacs(canvas: Canvas, body: Body, z_split: float) -> None:
    """Common iliac arteries from the aortic bifurcation at ``z_split`` and veins from the IVC's
    confluence 10 mm lower, each running 150 mm caudally and 45-55 mm laterally."""
    s = body.scale
    xa, ya, ra = body.aorta
    xi, yi, ai, bi = body.ivc
    for side in (1, -1):
        start = np.array([xa, ya, z_split])
        artery = np.stack([start, start + np.array([side * 45 * s - xa, -5 * s, -150 * s])])
        paint_tube(canvas, artery, 0.65 * ra, body.aorta_hu, Tissue.ARTERY, protect=_KEEP_OUT)
        start = np.array([xi, yi, z_split - 10 * s])
        vein = np.stack([start, start + np.array([side * 55 * s - xi, -15 * s, -150 * s])])
        paint_tube(canvas, vein, 0.55 * ai, body.vein_hu, Tissue.VEIN, protect=_KEEP_OUT | {Tissue.ARTERY})


def paint_renal_vessels(canvas: Canvas, rng: np.random.Generator, body: Body, kidney: Kidney) -> None:
    """Renal vein to the IVC (the left one passing in front of the aorta) and renal artery from the aorta."""
    s, hilum = body.scale, kidney.hilum
    xa, ya, ra = body.aorta
    xi, yi, _, bi = body.ivc
    vein = [hilum, [xi, yi, hilum[2] + rng.uniform(-5, 10) * s]]
    if kidney.side < 0:
        vein.insert(1, [xa, ya + ra + 7 * s, hilum[2]])
    artery = [[xa, ya, hilum[2] + rng.uniform(5, 15) * s], hilum + random_unit(rng) * 6 * s]
    if kidney.side > 0:
        artery.insert(1, [xi, yi - bi - 4 * s, hilum[2] + 5 * s])
    for points, radius, hu, tissue, keep_out in (
        (vein, rng.uniform(4, 6) * s, body.vein_hu, Tissue.VEIN, _KEEP_OUT | {Tissue.ARTERY}),
        (artery, rng.uniform(2.5, 3.5) * s, body.aorta_hu, Tissue.ARTERY, _KEEP_OUT),
    ):
        paint_tube(canvas, np.asarray(points, dtype=float), radius, hu, tissue, protect=keep_out)


def paint_mesenteric_vessels(canvas: Canvas, rng: np.random.Generator, body: Body, z_kidneys: float) -> None:
    """Superior mesenteric artery and vein running caudally in front of the aorta, with branches
    fanning out through the mesenteric fat (only fat voxels are painted)."""
    s, (z_lo, _) = body.scale, body.z_range
    xa, ya, ra = body.aorta
    origin = np.array([xa, ya, z_kidneys + rng.uniform(20, 40) * s])
    front = origin + np.array([rng.uniform(0, 10) * s, rng.uniform(25, 40) * s, -rng.uniform(15, 25) * s])
    bottom = np.array([front[0] + rng.uniform(-15, 15) * s, front[1] + rng.uniform(0, 20) * s, z_lo - 10])
    for tissue, hu, shift, radius in ((Tissue.ARTERY, body.aorta_hu, 0.0, 3.5), (Tissue.VEIN, body.vein_hu, 12.0, 4.5)):
        offset = np.array([shift * s, 0.0, 0.0])
        trunk = np.stack([origin if tissue == Tissue.ARTERY else front + offset, front + offset, bottom + offset])
        paint_tube(canvas, trunk, radius * s, hu, tissue, where={Tissue.FAT})
        for _ in range(int(rng.integers(4, 8))):
            start = front + offset + rng.uniform(0, 1) * (bottom - front)
            end = start + random_unit(rng) * rng.uniform(40, 80) * s * np.array([1.0, 0.6, 0.6])
            paint_tube(canvas, np.stack([start, end]), rng.uniform(1.5, 2.5) * s, hu, tissue, where={Tissue.FAT})
