"""The only code that reads or writes image files. Downstream code sees Volumes and arrays.

``load_ct`` and ``load_label_map`` return canonical RAS+ Volumes after validating the file;
``save_label_map`` writes a canonical label array back on the exact grid of the input.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from kidneyseg.errors import InvalidInputError
from kidneyseg.io import arrival, layout
from kidneyseg.io.atomic import atomic_write, atomic_write_text, check_output_dir
from kidneyseg.io.dicom import read_dicom_series
from kidneyseg.io.nifti import is_nifti_path, read_nifti, read_nifti_later, save_nifti
from kidneyseg.io.validate import (
    check_affine,
    check_finite,
    check_hu_range,
    check_label_values,
    check_same_grid,
    check_shape,
    float32_exact_integers,
)
from kidneyseg.io.volume import Volume, canonical_volume

__all__ = [
    "Volume", "atomic_write", "atomic_write_text", "canonical_volume", "check_affine", "check_same_grid",
    "check_output_dir", "ct_from_array",
    "is_nifti_path", "layout", "load_case",
    "load_ct", "load_label_map", "save_label_map", "save_nifti",
]


def load_ct(path: str | Path, *, allow_4d: bool = False, check_hu: bool = True, series: str | None = None,
            keep_integers: bool = False, background: bool = False) -> Volume:
    """Read a CT (NIfTI file or DICOM series folder) as a float32 Volume in HU, (X, Y, Z) RAS+.
    ``series`` chooses a series by its UID in a folder that holds several. ``keep_integers``: HU stored
    as integers of 16 bits or fewer (no scaling needed) stay in their own type, which float32 holds
    exactly; prediction reads CTs so (half the memory, no conversion), code that writes into the array
    needs float32. ``background``: a .nii.gz CT of integers stored plane by plane (most CTs) is
    decompressed by a background thread after its header is checked; the Volume comes back at once and
    its ``array`` waits for the voxels and the HU check (see ``Volume.arriving``). Other inputs are read
    as without it."""
    path = Path(path)
    if background and not allow_4d and not path.is_dir() and is_nifti_path(path):
        later = read_nifti_later(path, keep_integers=keep_integers)
        if later is not None:
            data, affine, header, fill = later

            def make(axis: int, flipped: bool) -> arrival.Arrival:
                checks = (lambda: check_hu_range(data, path)) if check_hu else (lambda: None)
                return arrival.start(lambda progress: fill(progress.advance),
                                     arrival.Arrival(path, data.shape, axis, flipped, checks))

            return canonical_volume(data, affine, header, path, make)
    if path.is_dir():
        data, affine = read_dicom_series(path, series)
        check_affine(affine, path)
        header = None
        data = np.asarray(data)
        integers = data.dtype.kind in "iu"  # stored integers cannot be NaN or Inf
        if not (keep_integers and float32_exact_integers(data.dtype)):
            data = data.astype(np.float32, copy=False)
        if not integers:
            check_finite(data, path)
    else:  # float32 (or exact integers), NaN and Inf refused
        data, affine, header = read_nifti(path, allow_4d=allow_4d, float32=True, keep_integers=keep_integers)
    if check_hu:
        check_hu_range(data, path)
    return canonical_volume(data, affine, header, path)


def ct_from_array(data: np.ndarray, affine: np.ndarray, name: str = "<array>") -> Volume:
    """A CT given as an array in HU (file voxel order, as nibabel gives it) and its 4x4 affine, as a
    float32 Volume, (X, Y, Z) RAS+, after the same checks a file gets: a 3D shape, a usable affine,
    no NaN or Inf, intensities that can be HU. ``name`` names it in errors and warnings."""
    path = Path(name)
    data = np.asarray(data)
    affine = np.asarray(affine, dtype=np.float64)
    if data.ndim != 3:
        raise InvalidInputError(f"array of shape {data.shape}; expected a 3D volume", path)
    check_shape(data.shape, path)
    if affine.shape != (4, 4):
        raise InvalidInputError(f"affine of shape {affine.shape}; expected 4 x 4", path)
    check_affine(affine, path)
    data = data.astype(np.float32, copy=False)
    check_finite(data, path)
    check_hu_range(data, path)
    return replace(canonical_volume(data, affine, None, None), label=name)


def load_label_map(path: str | Path) -> Volume:
    """Read a KiTS label map (0 background, 1 kidney, 2 tumour) as a uint8 Volume, (X, Y, Z) RAS+."""
    path = Path(path)
    if path.is_dir():
        raise InvalidInputError("expected a label map file, got a folder", path)
    data, affine, header = read_nifti(path)
    labels = check_label_values(np.asarray(data), path)
    return canonical_volume(labels, affine, header, path)


def load_case(case: layout.Case) -> tuple[Volume, Volume]:
    """Image and label map of a dataset case, refusing a pair on different grids."""
    if case.image is None or case.label is None:
        raise InvalidInputError(f"case {case.case_id} needs both {layout.IMAGE_NAME} and {layout.LABEL_NAME}",
                                case.image or case.label)
    image = load_ct(case.image)
    labels = load_label_map(case.label)
    check_same_grid(image.file_affine, image.file_shape, labels.file_affine, labels.file_shape, case.image, case.label)
    return image, labels


def save_label_map(labels: np.ndarray, like: Volume, path: str | Path, *, inputs: tuple[Path, ...] = ()) -> Path:
    """Write a canonical (X, Y, Z) label array as uint8 NIfTI on ``like``'s original file grid.

    Same shape, affine, qform/sform codes as the input file. Refuses to write over the input
    (or any path in ``inputs``). The write is atomic.
    """
    path = Path(path)
    protected = [p for p in (like.path, *inputs) if p is not None]
    if any(path.resolve() == Path(p).resolve() for p in protected):
        raise InvalidInputError("refusing to write the output over an input file", path)
    data = like.to_file_order(np.asarray(labels, dtype=np.uint8))
    return save_nifti(data, like.file_affine, path, header=like.header)
