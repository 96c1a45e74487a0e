"""The torso of a procedural phantom: body wall, spine and back muscles, great vessels, liver,
spleen and bowel. Positions are mm in the body frame (x patient Right, y Anterior, z Superior;
see ``shapes``), painted onto (X, Y, Z) arrays in Hounsfield units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kidneyseg.synthetic.contrast import Contrast, plan_contrast
from kidneyseg.synthetic.shapes import (
    FULL,
    OUTSIDE_CAVITY,
    Canvas,
    Grid,
    Tissue,
    box_shape,
    chain_distance,
    ellipsoid_coords,
    norm2,
    random_unit,
    rotation,
    rotation_z,
    smooth_noise,
)

BACK = frozenset({Tissue.AIR, Tissue.SUBCUT_FAT})


@dataclass(frozen=True)
class Body:
    """Landmarks of one phantom's torso (mm, body frame) and its contrast enhancement (HU)."""

    ax: float  # half width of the body outline (x)
    ay: float  # half depth of the body outline (y)
    power: float  # super-ellipse exponent of the outline (2 = ellipse)
    fat_mm: float  # subcutaneous fat thickness
    wall_mm: float  # abdominal wall muscle thickness
    scale: float  # size of the anatomy relative to a typical adult (1.0)
    spine_y: float  # centre of the vertebral bodies (at x = 0)
    vert_rx: float  # vertebral body half width
    vert_ry: float  # vertebral body half depth
    aorta: tuple[float, float, float]  # x, y, radius
    ivc: tuple[float, float, float, float]  # x, y, half width, half depth
    contrast: Contrast
    z_range: tuple[float, float]  # first and last slice centre

    @property
    def aorta_hu(self) -> float:
        return self.contrast.aorta

    @property
    def vein_hu(self) -> float:
        return self.contrast.vein

    def half_width(self, y: float, inset: float) -> float:
        """Half width (mm) at depth ``y`` of the outline shrunk by ``inset`` mm."""
        a, b = self.ax - inset, self.ay - inset
        return a * max(1.0 - (abs(y) / b) ** self.power, 0.0) ** (1.0 / self.power)

    def in_cavity(self, x: np.ndarray, y: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Whether points (mm, broadcasting arrays) lie ``margin`` mm inside the abdominal wall."""
        inset = self.fat_mm + self.wall_mm + margin
        a, b = max(self.ax - inset, 1.0), max(self.ay - inset, 1.0)
        return (np.abs(x) / a) ** self.power + (np.abs(y) / b) ** self.power <= 1


def draw_torso(rng: np.random.Generator, ax: float, ay: float, scale: float, z_range: tuple[float, float],
               min_back_mm: float = 0.0) -> Body:
    """A torso of outline half axes ``ax``, ``ay`` (mm) whose spine lies 55-70 mm (times ``scale``,
    and at least ``min_back_mm``) in front of the inside of the back wall."""
    s = scale
    fat, wall = rng.uniform(8, 25) * s, rng.uniform(6, 12) * s
    spine_y = -ay + fat + wall + max(rng.uniform(55, 70) * s, min_back_mm)
    rx, ry = rng.uniform(19, 24) * s, rng.uniform(15, 18) * s
    ra = rng.uniform(9, 13) * s
    aorta = (-rng.uniform(5, 18) * s, spine_y + ry + ra + rng.uniform(2, 6) * s, ra)
    ivc = (rng.uniform(16, 28) * s, spine_y + ry + rng.uniform(10, 16) * s,
           rng.uniform(11, 16) * s, rng.uniform(7, 10) * s)
    return Body(ax, ay, rng.uniform(2.0, 2.6), fat, wall, s, spine_y, rx, ry, aorta, ivc, plan_contrast(rng),
                z_range)


def plan_body(rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float]) -> tuple[Body, Grid]:
    """Draw a torso filling most of the field of view, and the grid (mm) it is centred on."""
    fov = np.asarray(shape[:2], dtype=float) * np.asarray(spacing[:2], dtype=float)
    ax = fov[0] / 2 * rng.uniform(0.80, 0.92)
    ay = min(fov[1] / 2 * rng.uniform(0.80, 0.92), 0.85 * ax)
    offset = rng.uniform(-0.6, 0.6, 2) * (fov / 2 - (ax, ay))
    grid = Grid.centred(shape, spacing, (offset[0], offset[1], 0.0))
    body = draw_torso(rng, ax, ay, min(1.0, ax / 140.0), (float(grid.z[0]), float(grid.z[-1])))
    return body, grid


def paint_body(canvas: Canvas, rng: np.random.Generator, body: Body) -> None:
    """Air, subcutaneous fat (~-100 HU), wall muscle (~50 HU) and intra-abdominal fat, in every slice."""
    x, y = canvas.grid.x[:, None], canvas.grid.y[None, :]

    def inside(inset: float) -> np.ndarray:
        return (np.abs(x) / (body.ax - inset)) ** body.power + (np.abs(y) / (body.ay - inset)) ** body.power <= 1

    layers = [
        (0.0, Tissue.SUBCUT_FAT, rng.uniform(-115, -90)),
        (body.fat_mm, Tissue.WALL, rng.uniform(35, 60)),
        (body.fat_mm + body.wall_mm, Tissue.FAT, rng.uniform(-100, -80)),
    ]
    for inset, tissue, hu in layers:
        canvas.paint(FULL, inside(inset)[:, :, None], hu, tissue)


def paint_muscles(canvas: Canvas, rng: np.random.Generator, body: Body, z_top: float) -> None:
    """Paraspinal muscles, and psoas and quadratus lumborum below ``z_top`` (psoas widening caudally)."""
    s, grid = body.scale, canvas.grid
    box = grid.box((-body.ax, -body.ay, -np.inf), (body.ax, body.ay, np.inf))
    x, y, z = grid.coords(box)
    hu = rng.uniform(40, 60)
    r_min, r_max = rng.uniform(5, 9) * s, rng.uniform(18, 24) * s
    radius = r_min + (r_max - r_min) * np.clip((z_top - z) / 120.0, 0.0, 1.0)
    below = z < z_top
    para = (rng.uniform(22, 30) * s, body.spine_y - body.vert_ry - rng.uniform(20, 28) * s,
            rng.uniform(22, 30) * s, rng.uniform(17, 23) * s)
    ql = (rng.uniform(52, 64) * s, body.spine_y - 0.3 * body.vert_ry, rng.uniform(14, 20) * s, rng.uniform(6, 9) * s)
    for side in (1, -1):
        cx = side * (body.vert_rx + 0.9 * radius + 2 * s)
        psoas = ((x - cx) / radius) ** 2 + ((y - body.spine_y) / (0.8 * radius)) ** 2 <= 1
        canvas.paint(box, psoas & below, hu, Tissue.MUSCLE, protect=BACK)
        quadratus = ((x - side * ql[0]) / ql[2]) ** 2 + ((y - ql[1]) / ql[3]) ** 2 <= 1
        canvas.paint(box, quadratus & (z < z_top + 15 * s), hu, Tissue.MUSCLE, protect=BACK)
        paraspinal = ((x - side * para[0]) / para[2]) ** 2 + ((y - para[1]) / para[3]) ** 2 <= 1
        canvas.paint(box, paraspinal, hu, Tissue.MUSCLE, protect=BACK)


def paint_liver(canvas: Canvas, rng: np.random.Generator, body: Body, z_right_kidney: float) -> None:
    """Liver (80-120 HU) in the upper right abdomen reaching down beside the right kidney, with vessels."""
    s = body.scale
    centre = np.array([body.ax * rng.uniform(0.28, 0.42), body.ay * rng.uniform(-0.15, 0.1),
                       z_right_kidney + rng.uniform(45, 75) * s])
    semi = np.array([rng.uniform(70, 95) * s, body.ay * rng.uniform(0.6, 0.8), rng.uniform(80, 110) * s])
    rot = rotation(rng, 12)
    shape = ellipsoid_coords(canvas.grid, centre, semi, rot)
    if shape is None:
        return
    box, q = shape
    canvas.paint(box, norm2(q) <= 1, body.contrast.liver, Tissue.LIVER, protect=OUTSIDE_CAVITY)
    hilum = centre + rot @ (semi * np.array([-0.45, 0.1, -0.15]))
    vessel_hu = body.contrast.portal
    for _ in range(int(rng.integers(4, 8))):
        end = centre + rot @ (semi * random_unit(rng) * rng.uniform(0.5, 0.8))
        radius = rng.uniform(3, 6) * s
        tube = chain_distance(canvas.grid, np.stack([hilum, end]), radius)
        if tube is not None:
            canvas.paint(tube[0], tube[1] <= radius, vessel_hu, Tissue.VEIN, where={Tissue.LIVER})


def paint_spleen(canvas: Canvas, rng: np.random.Generator, body: Body, z_left_kidney: float) -> None:
    """Spleen (110-150 HU, mottled as in the arterial phase) in the upper left, above the left kidney."""
    s = body.scale
    centre = (-body.ax * rng.uniform(0.5, 0.62), -body.ay * rng.uniform(0.1, 0.35),
              z_left_kidney + rng.uniform(40, 65) * s)
    semi = np.array([rng.uniform(22, 32), rng.uniform(40, 60), rng.uniform(45, 60)]) * s
    rot = rotation_z(-rng.uniform(20, 45)) @ rotation(rng, 10)
    shape = ellipsoid_coords(canvas.grid, centre, semi, rot)
    if shape is not None:
        box = shape[0]
        hu = body.contrast.spleen + rng.uniform(20, 40) * smooth_noise(rng, box_shape(canvas.grid, box), 2.0)
        canvas.paint(box, norm2(shape[1]) <= 1, hu, Tissue.SPLEEN, protect=OUTSIDE_CAVITY)


def _lumen_hu(rng: np.random.Generator, kind: str, y: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """HU of bowel contents of ``kind`` on a box; gas floats anteriorly (patient supine)."""
    fluid = rng.uniform(0, 20)
    if kind == "gas":
        return np.full(shape, -1000.0, dtype=np.float32)
    if kind == "contrast":
        return np.full(shape, rng.uniform(150, 300), dtype=np.float32)
    if kind == "faeces":
        texture = smooth_noise(rng, shape, 1.0)
        return np.where(texture > 1.3, -1000.0, -60.0 + 60.0 * texture).astype(np.float32)
    if kind == "gas-fluid":
        level = rng.uniform(float(y.min()), float(y.max()))
        return np.broadcast_to(np.where(y > level, -1000.0, fluid), shape).astype(np.float32)
    return np.full(shape, fluid, dtype=np.float32)


def _paint_loop(canvas: Canvas, rng: np.random.Generator, points: np.ndarray, radius: float, kind: str) -> None:
    """A bowel loop along ``points``: wall (~40 HU) around a lumen holding ``kind`` contents."""
    tube = chain_distance(canvas.grid, points, radius)
    if tube is None:
        return
    box, dist = tube
    wall = rng.uniform(2.0, 4.0)
    canvas.paint(box, dist <= radius, rng.uniform(30, 50), Tissue.BOWEL_WALL, protect=OUTSIDE_CAVITY)
    hu = _lumen_hu(rng, kind, canvas.grid.coords(box)[1], box_shape(canvas.grid, box))
    canvas.paint(box, dist <= radius - wall, hu, Tissue.BOWEL_CONTENT, where={Tissue.BOWEL_WALL})


def paint_bowel(canvas: Canvas, rng: np.random.Generator, body: Body, z_kidneys: float) -> None:
    """Stomach, colon frame and small-bowel loops holding fluid, gas, faeces or oral contrast."""
    s, (z_lo, _) = body.scale, body.z_range
    kinds = ["fluid", "gas-fluid", "gas-fluid", "gas"] + (["contrast"] * 4 if rng.random() < 0.5 else [])
    front = body.spine_y + body.vert_ry + 25 * s
    lo = np.array([-0.55 * body.ax, front, z_lo])
    hi = np.maximum(np.array([0.6 * body.ax, 0.7 * body.ay, z_kidneys + 60 * s]), lo + 1)
    loops = rng.integers(16, 27) * max(1.0, (hi[2] - lo[2]) / (200.0 * s))
    for _ in range(int(loops)):
        points = [rng.uniform(lo, hi)]
        for _ in range(5):
            points.append(np.clip(points[-1] + 25 * s * random_unit(rng), lo, hi))
        _paint_loop(canvas, rng, np.stack(points), rng.uniform(9, 15) * s, kinds[rng.integers(len(kinds))])
    top = z_kidneys + rng.uniform(20, 50) * s
    ascending = [body.ax * rng.uniform(0.48, 0.58), body.ay * rng.uniform(-0.05, 0.2)]
    descending = [-body.ax * rng.uniform(0.52, 0.62), body.ay * rng.uniform(-0.15, 0.1)]
    colon = np.array([[*ascending, z_lo - 10], [*ascending, top], [ascending[0] * 0.6, 0.45 * body.ay, top + 10],
                      [descending[0] * 0.6, 0.45 * body.ay, top + 10], [*descending, top + 15],
                      [*descending, z_lo - 10]])
    _paint_loop(canvas, rng, colon, rng.uniform(14, 22) * s, ["faeces", "gas-fluid"][rng.integers(2)])
    stomach = (-body.ax * rng.uniform(0.15, 0.35), body.ay * rng.uniform(0.2, 0.4), top + rng.uniform(35, 60) * s)
    semi = np.array([rng.uniform(35, 55), rng.uniform(28, 40), rng.uniform(35, 55)]) * s
    shape = ellipsoid_coords(canvas.grid, stomach, semi, rotation(rng, 20))
    if shape is not None:
        box, q = shape
        canvas.paint(box, norm2(q) <= 1, rng.uniform(30, 50), Tissue.BOWEL_WALL, protect=OUTSIDE_CAVITY)
        hu = _lumen_hu(rng, ["gas-fluid", "contrast", "fluid"][rng.integers(3)], canvas.grid.coords(box)[1],
                       box_shape(canvas.grid, box))
        inner = norm2(q, semi=1 - 4.0 / semi) <= 1
        canvas.paint(box, inner, hu, Tissue.BOWEL_CONTENT, where={Tissue.BOWEL_WALL})
