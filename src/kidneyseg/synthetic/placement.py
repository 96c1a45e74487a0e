"""Anatomy placed around a real label map: kidneys found in the labels, the torso fitted to them.

The label map ((X, Y, Z) RAS+ uint8, KiTS labels) shows only kidneys and tumours. Its foreground
is sampled every ``POINT_MM`` and split into a right (larger x) and a left kidney where a gap
along x separates them. Each kidney gets an ellipsoidal frame from its voxels' principal axes,
which orients its pyramids and hilum (``renal``) and the renal vessels. The midline lies halfway
between the kidneys (a solitary kidney is put 55-70 mm off it), the vertebral bodies level with
or up to 15 mm behind the kidneys' centres, and the body outline, sized from the field of view
(mm), is grown until the kidneys lie inside its abdominal wall. The liver, spleen, bowel and the
rest then follow from the torso and kidney plans as in procedural phantoms.

Positions are mm: "centred" ones from the centre of the voxel array, body-frame ones (``shapes``)
from the body's centre in the middle slice; both along RAS+ axes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kidneyseg.labels import KIDNEY
from kidneyseg.synthetic.contrast import Contrast, tumour_profile
from kidneyseg.synthetic.kidney import KIDNEY_SEMI_MM, Kidney, kidney_hu, lateral_direction
from kidneyseg.synthetic.resample import coarse_slices, factors_for, take_coarse
from kidneyseg.synthetic.scene import Scene
from kidneyseg.synthetic.shapes import Grid, frame
from kidneyseg.synthetic.torso import Body, draw_torso

POINT_MM = 4.0  # spacing of the foreground sample points
MIN_GAP_MM = 25.0  # an x-gap at least this wide separates the right from the left kidney
MIN_KIDNEY_ML = 5.0  # smaller groups of voxels are not taken for a kidney of their own
HORSESHOE_WIDTH_MM = 140.0  # one group this wide is split at its centre (horseshoe kidney)
SOLITARY_OFFSET_MM = (55.0, 70.0)  # midline distance of a solitary kidney's centre
BACK_ROOM_MM = (15.0, 25.0)  # from the kidneys' back to the inside of the back wall (quadratus lumborum)
SPINE_BEHIND_MM = (0.0, 15.0)  # vertebral bodies' centre behind the kidneys' centres


def foreground_points(labels: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Positions (n, 3; mm on ``grid``) and labels (n,) of the non-zero labels sampled about
    every ``POINT_MM``."""
    spacing = [float(a[1] - a[0]) if len(a) > 1 else POINT_MM for a in grid.axes]
    factors = factors_for(spacing, (POINT_MM,) * 3)
    coarse = take_coarse(labels, factors)
    index = np.nonzero(coarse)
    axes = [axis[pick][i] for axis, pick, i in zip(grid.axes, coarse_slices(factors), index, strict=True)]
    return np.stack(axes, axis=1), coarse[index]


def split_sides(points: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(side, mask of ``points``) per kidney: +1 right (larger x), -1 left. Two groups when a gap
    of ``MIN_GAP_MM`` along x separates two of at least ``MIN_KIDNEY_ML``, or when one group is as
    wide as a horseshoe kidney; otherwise one, on the side of its centre."""
    x = points[:, 0]
    min_points = MIN_KIDNEY_ML * 1000.0 / POINT_MM**3
    values = np.unique(x)
    gaps = np.diff(values)
    if gaps.size and gaps.max() >= MIN_GAP_MM:
        cut = values[int(gaps.argmax())] + gaps.max() / 2
        right = x > cut
        if min(right.sum(), (~right).sum()) >= min_points:
            return [(1, right), (-1, ~right)]
        keep = right if right.sum() > (~right).sum() else ~right
        return [(1 if x[keep].mean() >= 0 else -1, keep)]
    if np.ptp(x) >= HORSESHOE_WIDTH_MM:
        right = x > x.mean()
        return [(1, right), (-1, ~right)]
    return [(1 if x.mean() >= 0 else -1, np.ones(len(x), dtype=bool))]


def fit_kidney(rng: np.random.Generator, points: np.ndarray, values: np.ndarray, side: int,
               contrast: Contrast) -> Kidney:
    """A kidney plan whose ellipsoid has the second moments of its kidney points (mm, body frame;
    all points when too few are labelled kidney rather than tumour)."""
    use = points[values == KIDNEY] if np.count_nonzero(values == KIDNEY) >= 20 else points
    centre = use.mean(axis=0)
    long_axis = np.array([0.0, 0.0, 1.0])
    if len(use) >= 10:
        evecs = np.linalg.eigh(np.cov((use - centre).T))[1]
        if abs(evecs[2, -1]) >= 0.5:
            long_axis = evecs[:, -1] * np.sign(evecs[2, -1])
    rot = frame(long_axis, lateral_direction(rng, side))
    local = (use - centre) @ rot
    semi = np.clip(np.sqrt(5 * np.mean(local**2, axis=0)), 8.0, 90.0) if len(use) >= 10 else KIDNEY_SEMI_MM
    return Kidney(side, centre, semi, rot, True, *kidney_hu(rng, contrast))


def _absent(kidney: Kidney | None, side: int, spine_y: float, contrast: Contrast) -> Kidney:
    """A missing ``side`` kidney's plan (present False): the other one mirrored, or a default."""
    if kidney is not None:
        centre = kidney.centre * np.array([-1.0, 1.0, 1.0])
    else:
        centre = np.array([side * 60.0, spine_y + 7.0, 0.0])
    return Kidney(side, centre, KIDNEY_SEMI_MM, np.eye(3), False, contrast.cortex, contrast.medulla)


def fit_body(rng: np.random.Generator, fov_mm: Sequence[float], points: np.ndarray, midline: tuple[float, float],
             scale: float, z_range: tuple[float, float]) -> tuple[Body, np.ndarray]:
    """A torso whose body outline is sized from the field of view ``fov_mm`` (x, y), its spine at
    ``midline`` (x, y; centred mm) and whose abdominal wall holds ``points`` (centred mm), grown
    until it does; and the body frame's origin (centred mm)."""
    ax = fov_mm[0] / 2 * rng.uniform(0.80, 0.95)
    ay = min(fov_mm[1] / 2 * rng.uniform(0.75, 0.9), 0.85 * ax)
    min_back = float(midline[1] - points[:, 1].min()) + rng.uniform(*BACK_ROOM_MM) if len(points) else 0.0
    for _ in range(12):
        body = draw_torso(rng, ax, ay, scale, z_range, min_back)
        origin = np.array([midline[0], midline[1] - body.spine_y, 0.0])
        inside = body.in_cavity(points[:, 0] - origin[0], points[:, 1] - origin[1], margin=5.0)
        if inside.all():
            break
        ax, ay = ax * 1.08, ay * 1.08
    return body, origin


def _spine_y(rng: np.random.Generator, points: np.ndarray, centres: dict[int, np.ndarray], mid_x: float,
             fov_y: float) -> float:
    """y (centred mm) of the vertebral bodies: 0-15 mm behind the kidneys' centres, and behind any
    kidney crossing the midline (a horseshoe kidney's isthmus lies in front of the spine)."""
    if not centres:
        return -0.15 * fov_y
    spine_y = float(np.mean([c[1] for c in centres.values()])) - rng.uniform(*SPINE_BEHIND_MM)
    near = points[np.abs(points[:, 0] - mid_x) < 25.0]
    return min(spine_y, float(near[:, 1].min()) - 25.0) if len(near) else spine_y


def plan_scene_around_labels(rng: np.random.Generator, labels: np.ndarray, spacing_mm: Sequence[float],
                             subtype: str | None = None) -> Scene:
    """The scene of a phantom drawn around ``labels`` ((X, Y, Z) RAS+ uint8, voxels ``spacing_mm``
    along X, Y, Z) with tumours of KiTS19 ``subtype`` (None: drawn at random)."""
    spacing = (float(spacing_mm[0]), float(spacing_mm[1]), float(spacing_mm[2]))
    centred = Grid.centred(labels.shape, spacing, (0.0, 0.0, 0.0))
    points, values = foreground_points(labels, centred)
    groups = split_sides(points) if len(points) else []
    centres = {side: points[mask].mean(axis=0) for side, mask in groups}
    if len(centres) == 2:
        mid_x = float(np.mean([c[0] for c in centres.values()]))
    elif centres:
        side, centre = next(iter(centres.items()))
        mid_x = float(centre[0]) - side * rng.uniform(*SOLITARY_OFFSET_MM)
    else:
        mid_x = 0.0
    fov = (labels.shape[0] * spacing[0], labels.shape[1] * spacing[1])
    spine_y = _spine_y(rng, points, centres, mid_x, fov[1])
    body, origin = fit_body(rng, fov, points, (mid_x, spine_y), 1.0, (float(centred.z[0]), float(centred.z[-1])))
    kidneys = {side: fit_kidney(rng, points[mask] - origin, values[mask], side, body.contrast)
               for side, mask in groups}
    right = kidneys.get(1) or _absent(kidneys.get(-1), 1, body.spine_y, body.contrast)
    left = kidneys.get(-1) or _absent(kidneys.get(1), -1, body.spine_y, body.contrast)
    grid = Grid(centred.x - origin[0], centred.y - origin[1], centred.z - origin[2])
    return Scene(grid, spacing, labels, body, (right, left), tumour_profile(subtype, rng))
