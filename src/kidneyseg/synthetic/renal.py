"""Kidney interiors drawn inside a label map: cortex, medullary pyramids, sinus fat, pelvis, tumours.

Works on one kidney's box of the full-resolution (X, Y, Z) RAS+ label map. Tissues and HU are
worked out on a coarse copy of the box (voxels of about ``PATCH_MM``; the full grid itself when
that is coarser) from the depth below the kidney surface (Euclidean distance transform, mm) and
the kidney's ellipsoidal frame (``Kidney``), then interpolated linearly back to the full grid,
where the full-resolution labels decide which voxels they apply to. Kidney voxels (label 1):
cortex (150-250 HU) down to 3-5.5 mm, medullary pyramids (60-130 HU) deeper, renal sinus fat
(-100..-50 HU) and urine in the pelvis (0-20 HU) towards the hilum. Tumour voxels (label 2):
heterogeneous enhancement by subtype with necrosis, scar, cysts or fat (see ``contrast``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import distance_transform_edt

from kidneyseg.labels import KIDNEY, TUMOR
from kidneyseg.synthetic.contrast import Contrast, TumourProfile
from kidneyseg.synthetic.kidney import PELVIS, SINUS, Kidney, pyramid_centres
from kidneyseg.synthetic.resample import Factors, coarse_slices, factors_for, take_coarse, upsample
from kidneyseg.synthetic.shapes import Box, Grid, Tissue, norm2, smooth_noise

PATCH_MM = 1.5
CORTEX_MM = (3.0, 5.5)
NECROTIC_MIN_DEPTH_MM = 8.0


@dataclass(frozen=True)
class KidneyPatch:
    """A rendered kidney: ``hu`` (float32) on ``box`` of the full grid, to be applied where the
    full labels are non-zero; ``tissue`` (uint8, ``Tissue`` ids) on the box's coarse copy taken
    with ``factors`` (the full box itself when they are all 1)."""

    box: Box
    hu: np.ndarray
    tissue: np.ndarray
    factors: Factors


def kidney_coords(grid: Grid, kidney: Kidney) -> list[np.ndarray]:
    """Normalised kidney coordinates q (|q| = 1 on its ellipsoid) of every voxel of ``grid`` (float32)."""
    offsets = [(axis - c).astype(np.float32) for axis, c in zip(grid.axes, kidney.centre, strict=True)]
    shapes = ((-1, 1, 1), (1, -1, 1), (1, 1, -1))
    offsets = [o.reshape(s) for o, s in zip(offsets, shapes, strict=True)]
    return [sum(offsets[i] * np.float32(kidney.rot[i, k]) for i in range(3)) / np.float32(kidney.semi[k])
            for k in range(3)]


def _kidney_tissues(rng: np.random.Generator, grid: Grid, kidney_mask: np.ndarray, spacing: np.ndarray,
                    kidney: Kidney) -> tuple[np.ndarray, np.ndarray]:
    """Tissue ids and HU (float32) of the kidney voxels of a coarse box (others: cortex values)."""
    depth = distance_transform_edt(kidney_mask, sampling=spacing).astype(np.float32)
    cortex_mm = rng.uniform(*CORTEX_MM) * (1 + 0.2 * smooth_noise(rng, depth.shape, 2.0))
    q = kidney_coords(grid, kidney)
    pyramids = np.minimum.reduce([norm2(q, c, (r, r, r)) for c, r in
                                  ((c, rng.uniform(0.32, 0.40)) for c in pyramid_centres(rng))])
    sinus = (norm2(q, *SINUS) <= 1) & ((depth > 0.5 * cortex_mm) | (q[1] < -0.75))
    pelvis = sinus & (norm2(q, *PELVIS) <= 1)
    tissue = np.full(depth.shape, Tissue.CORTEX, dtype=np.uint8)
    tissue[(pyramids <= 1) & (depth > cortex_mm)] = Tissue.MEDULLA
    tissue[sinus] = Tissue.SINUS
    tissue[pelvis] = Tissue.PELVIS
    levels = np.zeros(256, dtype=np.float32)
    levels[[Tissue.CORTEX, Tissue.MEDULLA, Tissue.SINUS, Tissue.PELVIS]] = (
        kidney.cortex_hu, kidney.medulla_hu, rng.uniform(-100, -50), rng.uniform(0, 20))
    hu = levels[tissue] + np.float32(rng.uniform(4, 10)) * smooth_noise(rng, depth.shape, 1.0)
    tissue[~kidney_mask] = Tissue.PERIRENAL_FAT
    return tissue, hu


def _low_component(rng: np.random.Generator, tumour: np.ndarray, spacing: np.ndarray,
                   profile: TumourProfile) -> np.ndarray:
    """Mask of a tumour's necrosis, scar, cysts or fat (coarse box), possibly empty."""
    if rng.random() >= profile.low_probability:
        return np.zeros_like(tumour)
    fraction = rng.uniform(*profile.low_fraction)
    texture = smooth_noise(rng, tumour.shape, float(np.clip(4.0 / spacing.mean(), 1.0, 4.0)))
    if profile.low_layout == "patches":
        values = texture[tumour]
        return tumour & (texture >= np.quantile(values, 1 - fraction)) if values.size else tumour
    depth = distance_transform_edt(tumour, sampling=spacing)
    deepest = float(depth.max())
    if deepest < NECROTIC_MIN_DEPTH_MM:
        return np.zeros_like(tumour)
    return tumour & (depth + 0.1 * deepest * texture > (1 - fraction) * deepest)


def _tumour_hu(rng: np.random.Generator, tumour: np.ndarray, spacing: np.ndarray, profile: TumourProfile,
               contrast: Contrast) -> tuple[np.ndarray, np.ndarray]:
    """HU (float32) of a coarse box's tumour voxels, and the mask of their low component."""
    sigma = float(np.clip(3.0 / spacing.mean(), 0.7, 3.0))
    solid = profile.solid_hu(rng, contrast.timing)
    hu = solid + rng.uniform(*profile.texture_sd) * smooth_noise(rng, tumour.shape, sigma)
    low = _low_component(rng, tumour, spacing, profile)
    hu[low] = rng.uniform(*profile.low_hu) + 8 * smooth_noise(rng, tumour.shape, 1.0)[low]
    return hu.astype(np.float32), low


def render_kidney(rng: np.random.Generator, grid: Grid, spacing_mm: tuple[float, float, float],
                  labels: np.ndarray, box: Box, kidney: Kidney, profile: TumourProfile,
                  contrast: Contrast) -> KidneyPatch:
    """Render the kidney and tumour voxels of ``labels[box]`` (labels: full (X, Y, Z) uint8 on
    ``grid``, mm) as seen around ``kidney`` (its frame places the pyramids and the sinus)."""
    factors = factors_for(spacing_mm, (PATCH_MM,) * 3)
    spacing = np.asarray(spacing_mm, dtype=float) * factors
    coarse = take_coarse(labels[box], factors)
    picks = coarse_slices(factors)
    cgrid = Grid(*(axis[b][p] for axis, b, p in zip(grid.axes, box, picks, strict=True)))
    tissue, hu = _kidney_tissues(rng, cgrid, coarse == KIDNEY, spacing, kidney)
    tumour = coarse == TUMOR
    if tumour.any():
        tumour_hu, low = _tumour_hu(rng, tumour, spacing, profile, contrast)
        hu[tumour] = tumour_hu[tumour]
        tissue[tumour] = Tissue.TUMOUR
        tissue[low] = Tissue.NECROSIS
    outside = coarse == 0
    if outside.any():
        nearest = distance_transform_edt(outside, return_distances=False, return_indices=True)
        hu = hu[tuple(nearest)]
    full_shape = labels[box].shape
    return KidneyPatch(box, upsample(hu, factors, full_shape), tissue, factors)
