"""Checks on image headers, affines and voxel values, run before any work is done.

Each check raises InvalidInputError naming the file and the problem (or warns, where noted).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from kidneyseg.errors import InvalidInputError
from kidneyseg.labels import VALID_LABELS

# Refuse volumes whose header declares more voxels than this before allocating anything
# (1,024^3 voxels are 4 GiB as float32; KiTS19's largest case has 512*512*1,059 = 0.28 G).
MAX_VOXELS = 1024**3
MIN_SLICES = 2


def check_shape(shape: tuple[int, ...], path: Path, *, allow_4d: bool = False) -> tuple[int, int, int]:
    """Return the 3D shape; refuse 2D, single-slice and (unless ``allow_4d``) 4D data.

    A trailing 4th dimension of size 1 is dropped. With ``allow_4d`` only the first volume
    of a 4D series is used, which the caller must have asked for explicitly.
    """
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) > 3:
        if not allow_4d:
            raise InvalidInputError(f"{len(dims)}D image of shape {tuple(shape)}; expected a 3D volume "
                                    "(pass --allow-4d to use the first volume)", path)
        dims = dims[:3]
    if len(dims) < 3:
        raise InvalidInputError(f"{len(dims)}D image of shape {tuple(shape)}; expected a 3D volume", path)
    if min(dims) < MIN_SLICES:
        raise InvalidInputError(f"image of shape {tuple(dims)} has a single slice; expected a 3D volume", path)
    return dims[0], dims[1], dims[2]


def check_header_size(shape: tuple[int, ...], dtype: np.dtype, path: Path) -> None:
    voxels = int(np.prod(np.asarray(shape, dtype=np.int64)))
    if voxels > MAX_VOXELS:
        gib = voxels * 4 / 2**30
        raise InvalidInputError(f"header declares {shape} = {voxels:,} voxels ({gib:.1f} GiB as float32), "
                                f"more than the {MAX_VOXELS:,} this tool accepts", path)


def check_affine(affine: np.ndarray, path: Path) -> None:
    """Refuse non-finite, singular or sheared voxel-to-world matrices (rotations are fine)."""
    matrix = np.asarray(affine, dtype=np.float64)[:3, :3]
    if not np.all(np.isfinite(affine)):
        raise InvalidInputError("affine contains NaN or Inf", path)
    spacing = np.linalg.norm(matrix, axis=0)
    if np.any(spacing < 1e-6) or abs(np.linalg.det(matrix)) < 1e-9 * np.prod(spacing):
        raise InvalidInputError(f"affine is singular (voxel spacing {np.round(spacing, 4).tolist()})", path)
    unit = matrix / spacing
    off_diagonal = np.abs(unit.T @ unit - np.eye(3)).max()
    if off_diagonal > 1e-3:
        raise InvalidInputError(f"affine is sheared (axes not orthogonal, max |cos| {off_diagonal:.3f}); "
                                "resample the image to an orthogonal grid first", path)


def float32_exact_integers(dtype: np.dtype) -> bool:
    """Integers of at most 16 bits: every value converts to float32 exactly, so a CT in HU may stay in them."""
    dtype = np.dtype(dtype)
    return dtype.kind in "iu" and dtype.itemsize <= 2


def check_finite(data: np.ndarray, path: Path) -> None:
    if data.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise InvalidInputError(f"{bad:,} voxels are NaN or Inf", path)


def check_hu_range(data: np.ndarray, path: Path) -> None:
    """Refuse intensities that cannot be Hounsfield units.

    An abdominal CT in HU has air or lung near -1000 and fat near -100. Values inside [0, 1]
    (a normalised image) or no value below zero (raw detector numbers such as 0-4095 with the
    rescale slope/intercept not applied) would make the fixed HU window meaningless.
    """
    low, high = float(data.min()), float(data.max())
    if low >= -1.0 and high <= 1.0:
        raise InvalidInputError(f"intensities span [{low:g}, {high:g}]: this looks like a normalised image, "
                                "not Hounsfield units", path)
    if low >= 0:
        raise InvalidInputError(f"intensities span [{low:g}, {high:g}] with nothing below 0: not Hounsfield "
                                "units (raw stored values without the rescale slope/intercept?)", path)
    if low < -4000 or high > 40000:
        warnings.warn(f"{path}: intensities span [{low:g}, {high:g}], outside the usual HU range", stacklevel=2)


def check_label_values(data: np.ndarray, path: Path) -> np.ndarray:
    """Return the label map as uint8 after checking it holds only integers in {0, 1, 2}."""
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all() or np.any(data[finite] != np.round(data[finite])):
            odd = np.unique(data[~finite | (data != np.round(data))])[:8]
            raise InvalidInputError(f"label map has non-integer values, e.g. {odd.tolist()}", path)
    # Two comparisons instead of np.unique, which sorts the whole map (over a second for a
    # 512 x 512 x 600 KiTS19 case); the values are listed only when some are out of range.
    low, high = min(VALID_LABELS), max(VALID_LABELS)
    if np.count_nonzero((data < low) | (data > high)):
        values = np.unique(data)
        unexpected = sorted(set(values.tolist()) - set(VALID_LABELS))
        raise InvalidInputError(f"label map has values {unexpected[:10]} outside {{0, 1, 2}} "
                                f"(all values found: {values.tolist()[:20]})", path)
    return data.astype(np.uint8, copy=False)


def check_same_grid(image_affine: np.ndarray, image_shape: tuple[int, ...], label_affine: np.ndarray,
                    label_shape: tuple[int, ...], image_path: Path, label_path: Path) -> None:
    """Refuse an image and label map on different grids; never resample silently."""
    problems = []
    if tuple(image_shape) != tuple(label_shape):
        problems.append(f"shape {tuple(image_shape)} vs {tuple(label_shape)}")
    if not np.allclose(image_affine, label_affine, atol=1e-3):
        sp_i, sp_l = (np.linalg.norm(a[:3, :3], axis=0).round(4).tolist() for a in (image_affine, label_affine))
        problems.append(f"spacing {sp_i} vs {sp_l}, origin {image_affine[:3, 3].round(3).tolist()} vs "
                        f"{label_affine[:3, 3].round(3).tolist()}")
    if problems:
        raise InvalidInputError(f"label map does not match its image {image_path}: " + "; ".join(problems),
                                label_path)
