"""A stage's network input from a volume and a box: the one function the cache, training and inference call.

Coordinates are voxel indices of the source CT's canonical grid (X, Y, Z). A box (the paper's crop
box for the segmenter, the whole volume for the localizer) is mapped onto the network's input grid
of ``size`` voxels: output voxel j samples the box at

    p = box.lo + (j + 0.5) * box.size / size - 0.5,  clamped to [box.lo, box.hi - 1]

(voxel centres aligned and the box's edge repeated where the zoom enlarges, as torch's trilinear
resize of the cropped box with ``align_corners=False``). Images are
interpolated trilinearly, labels take the nearest voxel, floor(p + 0.5). A ``Warp`` moves these
positions for training (a scale and an axial rotation about the box's centre, a shift, flips), so
that crop, zoom, jitter and rotation are one interpolation of the source, never a resize followed
by a rotation. With no warp the result depends only on the CT's values, the box and the size, not
on which part of the CT a ``Source`` holds: a cached region around a box gives exactly (bitwise)
the input that inference builds from the whole CT.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from kidneyseg.geometry import Box, Shape3, crop
from kidneyseg.preprocess import normalize_ct

GATHER_PLANES = 8  # planes per step of _gather_separable: 8 planes of a 512 x 512 float32 CT are 8 MB


@dataclass(frozen=True)
class Warp:
    """Training augmentation of one draw: ``scale`` grows (> 1) or shrinks the box about its centre, so
    that the network sees the anatomy larger or smaller, as at another voxel spacing; ``shift_vox``
    moves the box (source voxels per axis); ``rotate_rad`` turns it about its centre in the axial
    (X, Y) plane (measured in mm, so that the rotation is rigid whatever the voxel shape); ``flip``
    mirrors the output along each axis."""

    shift_vox: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotate_rad: float = 0.0
    flip: tuple[bool, bool, bool] = (False, False, False)
    scale: float = 1.0


IDENTITY = Warp()


@dataclass(frozen=True)
class Source:
    """The values of a CT (or of its label map) on part of its grid.

    ``array`` (X, Y, Z) holds the CT's voxels [origin, origin + array.shape); everywhere else the
    CT reads ``pad``. ``window`` (hu_min, hu_max, mean, std) normalises raw HU as
    ``normalize_ct`` does with the whole CT's statistics, or is a function that returns it, called once
    the voxels it normalises are read (the statistics may then still be computing while they are read);
    None: the values are used as they are (labels, or an image normalised already). ``ready``: for a
    CT still arriving (``io.Volume.arriving``), the function that waits until planes [lo, hi) along an
    axis are in, called before they are read.
    """

    array: np.ndarray
    origin: Shape3 = (0, 0, 0)
    pad: float = 0.0
    window: tuple[float, float, float, float] | Callable[[], tuple[float, float, float, float]] | None = None
    ready: Callable[[int, int, int], None] | None = None

    def read(self, box: Box) -> np.ndarray:
        """The CT's values on ``box`` (CT coordinates), normalised when the source has a window."""
        local = Box(tuple(lo - o for lo, o in zip(box.lo, self.origin, strict=True)),
                    tuple(hi - o for hi, o in zip(box.hi, self.origin, strict=True)))
        whole = local.lo == (0, 0, 0) and local.hi == tuple(self.array.shape)
        self.wait_all()
        values = self.array if whole else crop(self.array, local, self.pad)
        return self.normalized(values)

    def normalized(self, values: np.ndarray) -> np.ndarray:
        """Raw values read from ``array`` normalised with the window (as they are without one)."""
        if self.window is None:
            return values
        hu_min, hu_max, mean, std = self.window_values()
        return normalize_ct(values, hu_min, hu_max, (mean, std))

    def window_values(self) -> tuple[float, float, float, float] | None:
        """``window`` as its values (hu_min, hu_max, mean, std), calling it if it is a function; None without one."""
        return self.window() if callable(self.window) else self.window

    def wait_all(self) -> None:
        if self.ready is not None:
            self.ready(0, 0, self.array.shape[0])


def positions(box: Box, size: Shape3, spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
              warp: Warp = IDENTITY) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source coordinates (float64) of the output voxels, one array per axis, broadcasting to ``size``:
    shapes (n, 1, 1), (1, n, 1), (1, 1, n) without rotation; X and Y become (n, n, 1) with one.
    The warp scales the grid about the box's centre, rotates it there (in mm) and shifts it."""
    axes = []
    for axis in range(3):
        n, lo, extent = size[axis], box.lo[axis], box.size_vox[axis]
        # Clamped to the box's first and last voxel centres, as a resize of the cropped box would.
        p = np.clip(lo + (np.arange(n) + 0.5) * (extent / n) - 0.5, lo, lo + extent - 1)
        if warp.scale != 1.0:
            centre = lo + (extent - 1) / 2
            p = centre + (p - centre) * warp.scale
        shape = [1, 1, 1]
        shape[axis] = n
        axes.append(p.reshape(shape) + warp.shift_vox[axis])
    px, py, pz = axes
    if warp.rotate_rad:
        cx, cy = (box.lo[a] + (box.size_vox[a] - 1) / 2 + warp.shift_vox[a] for a in (0, 1))
        sx, sy = spacing_mm[0], spacing_mm[1]
        u, v = (px - cx) * sx, (py - cy) * sy  # mm from the centre
        cos, sin = math.cos(warp.rotate_rad), math.sin(warp.rotate_rad)
        px, py = cx + (cos * u - sin * v) / sx, cy + (sin * u + cos * v) / sy
    return px, py, pz


def stage_image(source: Source, box: Box, size: Shape3, spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
                warp: Warp = IDENTITY) -> torch.Tensor:
    """The network input (1, *size) float32 for ``box`` (CT coordinates) of ``source``'s CT."""
    pos = positions(box, size, spacing_mm, warp)
    if all(np.array_equal(p, np.round(p)) for p in pos):  # a whole-voxel copy: no interpolation
        values = _gather(source, pos)
        out = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None]
    elif not warp.rotate_rad:  # one coordinate per axis: trilinear is three 1D interpolations
        out = torch.from_numpy(_separable(source, pos))[None]
    else:
        out = _grid_sample(source, pos, size)
    return _flip(out, warp)


# Stage 2's level reference (StageConfig.level_reference): each crop is shifted so that this percentile of its
# kidney-and-tumour voxels reads REFERENCE_HU. Over the 30 validation label maps of benchmarks/accuracy.py the
# 75th percentile of those voxels lay 16 HU above the kidney's median (SD 14) on the training renderer and 14 HU
# (SD 8) on the independent one, while the kidney's median itself varied with an SD of 26 and 22 HU and lay 19 HU
# apart between the renderers: referenced so, a kidney reads about the same whatever its enhancement, and a tumour
# by its level against the kidney. 200 HU is about the training renderer's mean 75th percentile (197).
REFERENCE_PERCENTILE = 75.0
REFERENCE_HU = 200.0
REFERENCE_MAX_HU = 100.0  # largest shift: a box whose labels are not a kidney at all is moved no further
REFERENCE_MIN_VOXELS = 1000  # fewer labelled voxels on the network's grid: no shift


def level_shift(image: torch.Tensor, foreground: torch.Tensor | np.ndarray,
                window: tuple[float, float, float, float]) -> float:
    """The shift (normalised units) that moves the REFERENCE_PERCENTILE of ``image``'s ``foreground`` voxels
    to REFERENCE_HU, at most REFERENCE_MAX_HU either way; 0 with fewer than REFERENCE_MIN_VOXELS of them.

    ``image`` is a stage input normalised with ``window`` (hu_min, hu_max, mean, std: ``Source.window``), so
    one HU is 1 / std of it; ``foreground`` (same shape) marks the kidney and tumour: the true labels in
    training, stage 2's own first labels in prediction (kidneyseg.inference)."""
    values = np.asarray(image, dtype=np.float32)[np.asarray(foreground, dtype=bool)]
    if values.size < REFERENCE_MIN_VOXELS:
        return 0.0
    _, _, mean, std = window
    std = max(std, 1e-6)
    level_hu = float(np.percentile(values, REFERENCE_PERCENTILE)) * std + mean
    return float(np.clip(REFERENCE_HU - level_hu, -REFERENCE_MAX_HU, REFERENCE_MAX_HU)) / std


def stage_labels(source: Source, box: Box, size: Shape3, spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 warp: Warp = IDENTITY) -> torch.Tensor:
    """The label map (1, *size) int64 sampled like ``stage_image`` (nearest voxel)."""
    pos = positions(box, size, spacing_mm, warp)
    values = _gather(source, tuple(np.floor(p + 0.5) for p in pos))
    return _flip(torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64))[None], warp)


def _grid_sample(source: Source, pos: tuple[np.ndarray, ...], size: Shape3) -> torch.Tensor:
    """Trilinear interpolation at any positions (rotated ones too) with ``grid_sample``, (1, *size)."""
    # The block of the CT the positions fall in (plus the next voxel for the interpolation), in
    # CT coordinates: it depends only on the positions, so every source of the same CT gives the
    # same block, the same sampling grid and the same values.
    lo = tuple(int(math.floor(p.min())) for p in pos)
    hi = tuple(int(math.floor(p.max())) + 2 for p in pos)
    # np.require copies a block that is not writable: a training cache's read-only memory map, read whole when a
    # box shrunk a little by the warp's scale needs all of it. torch warns on tensors made on such memory, though
    # grid_sample only reads.
    block = torch.from_numpy(np.require(source.read(Box(lo, hi)), np.float32, ["C_CONTIGUOUS", "WRITEABLE"]))
    grid = np.empty((*size, 3), np.float32)
    # grid_sample's last axis is (W, H, D) = (Z, Y, X); with align_corners=True, -1 and 1 are the
    # centres of the block's first and last voxels.
    for slot, axis in ((0, 2), (1, 1), (2, 0)):
        grid[..., slot] = np.broadcast_to(2 * (pos[axis] - lo[axis]) / (hi[axis] - lo[axis] - 1) - 1, size)
    return F.grid_sample(block[None, None], torch.from_numpy(grid)[None], mode="bilinear", padding_mode="border",
                         align_corners=True)[0]


def _separable(source: Source, pos: tuple[np.ndarray, ...]) -> np.ndarray:
    """Trilinear interpolation at positions that vary along one axis each ((n, 1, 1), (1, n, 1),
    (1, 1, n)): the same values as ``grid_sample`` on the block (up to float rounding), read from
    the voxels that two neighbours per output coordinate need, not from the whole block. For the
    localizer's zoom of a 512 x 512 x 300 CT that is at most 256³ voxels normalised instead of a
    float32 copy of the whole CT (under cProfile the old path took 2.86 s of an 11.0 s bf16
    prediction of ``benchmarks/predict_speed.py``'s CT on 2 cores)."""
    axes = []
    for p in pos:
        p = p.ravel()
        floor = np.floor(p)
        first = floor.astype(np.int64)
        needed, index = np.unique(np.concatenate([first, first + 1]), return_inverse=True)
        axes.append((needed, index[:p.size], index[p.size:], (p - floor).astype(np.float32)))
    values = np.asarray(_gather(source, tuple(a[0].reshape([-1 if k == axis else 1 for k in range(3)])
                                              for axis, a in enumerate(axes))), dtype=np.float32)
    # The axis that shrinks the array most goes first: less work for the two after it.
    for axis in sorted(range(3), key=lambda k: axes[k][1].size / axes[k][0].size):
        _, below, above, weight = axes[axis]
        shape = [1, 1, 1]
        shape[axis] = -1
        low = np.take(values, below, axis=axis)
        values = low + (np.take(values, above, axis=axis) - low) * weight.reshape(shape)
    return np.ascontiguousarray(values)


def _gather(source: Source, pos: tuple[np.ndarray, ...]) -> np.ndarray:
    """The source's values at whole-voxel positions (one broadcasting array per axis), ``pad`` outside."""
    idx = [np.asarray(p, dtype=np.int64) - o for p, o in zip(pos, source.origin, strict=True)]
    if all(i.ndim == 3 and i.shape[axis] == i.size for axis, i in enumerate(idx)):
        values = _gather_separable(source.array, [i.ravel() for i in idx], source.pad, source.ready)
    else:
        source.wait_all()
        values = _gather_any(source.array, idx, source.pad)
    if source.window is None:  # a copy, as indexing gives, never a view that a caller could write through
        return np.array(values) if np.may_share_memory(values, source.array) else values
    return source.normalized(values)


def _gather_separable(array: np.ndarray, idx: list[np.ndarray], pad: float,
                      ready: Callable[[int, int, int], None] | None = None) -> np.ndarray:
    """``_gather_any`` for one index vector per axis (their outer product): a slice of the block the
    indices span, then, a few planes at a time along the axis with the longest memory step, one
    indexing per axis, longest step first, so that each copies whole contiguous runs and the
    intermediates stay small. The same values as indexing with the three arrays at once, which
    computes an address per output voxel: for the localizer's 256³ voxels of a 512 x 512 x 300 CT
    (Fortran order, as NIfTI files give it) 0.07-0.17 s instead of 0.52-1.06 s on a busy machine
    (one whole-axis indexing after another was no better: its intermediates were 0.5 GB). ``ready`` (see
    ``Source``) is called before each run of planes is read: a CT still arriving is read as it comes."""
    shape = array.shape
    inside = [(i >= 0) & (i < n) for i, n in zip(idx, shape, strict=True)]
    clipped = [np.clip(i, 0, n - 1) for i, n in zip(idx, shape, strict=True)]
    block = array[tuple(slice(int(c.min()), int(c.max()) + 1) for c in clipped)]
    # Per axis the indices into the block, or a slice where they are the block's whole extent in order.
    within = [slice(None) if c.size == block.shape[axis] and (np.diff(c) == 1).all() else c - c.min()
              for axis, c in enumerate(clipped)]
    if all(isinstance(w, slice) for w in within):
        if ready is not None:
            ready(0, 0, array.shape[0])
        values = block
    else:
        outer, *inner = sorted(range(3), key=lambda axis: -abs(block.strides[axis]))  # a reversed axis: negative
        values = np.empty([c.size for c in clipped], block.dtype)
        for first in range(0, values.shape[outer], GATHER_PLANES):
            chosen = [slice(None)] * 3
            planes = slice(first, first + GATHER_PLANES)
            chosen[outer] = planes if isinstance(within[outer], slice) else within[outer][planes]
            if ready is not None:
                ready(outer, int(clipped[outer][planes].min()), int(clipped[outer][planes].max()) + 1)
            part = block[tuple(chosen)]
            for axis in inner:
                if not isinstance(within[axis], slice):
                    part = part[(slice(None),) * axis + (within[axis],)]
            values[(slice(None),) * outer + (planes,)] = part
    if not all(m.all() for m in inside):
        mask = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
        values = np.where(mask, values, np.asarray(pad, dtype=values.dtype))
    return values


def _gather_any(array: np.ndarray, idx: list[np.ndarray], pad: float) -> np.ndarray:
    """The array's values at broadcasting integer indices, ``pad`` outside it."""
    inside = np.ones((1, 1, 1), bool)
    for i, n in zip(idx, array.shape, strict=True):
        inside = inside & (i >= 0) & (i < n)
    clipped = [np.clip(i, 0, n - 1) for i, n in zip(idx, array.shape, strict=True)]
    values = array[clipped[0], clipped[1], clipped[2]]
    if not inside.all():
        values = np.where(inside, values, np.asarray(pad, dtype=values.dtype))
    return values


def _flip(tensor: torch.Tensor, warp: Warp) -> torch.Tensor:
    dims = [axis + 1 for axis in range(3) if warp.flip[axis]]
    return torch.flip(tensor, dims).contiguous() if dims else tensor
