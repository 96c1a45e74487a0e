"""The Volume type: a 3D array in canonical RAS+ voxel order plus what is needed to undo it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from kidneyseg.io.arrival import Arrival

RAS = axcodes2ornt(("R", "A", "S"))


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image or label map in canonical voxel order.

    ``array`` is (X, Y, Z) with voxel index increasing towards patient Right, Anterior and
    Superior (RAS+, the closest canonical order to the file's axes: only axis flips and
    permutations, never resampling). ``affine`` maps ``array`` indices to RAS world mm.
    ``file_shape``, ``file_affine`` and ``header`` describe the file the data came from, so
    that an output can be written on exactly the input's grid (see ``to_file_order``).

    A CT read in the background (``io.load_ct(..., background=True)``) has its voxels still arriving:
    ``array`` then blocks until every voxel is in and the checks that need all of them passed (raising
    their errors), and ``arriving`` gives the array as it fills, with the function that waits for planes.
    """

    _array: np.ndarray
    affine: np.ndarray
    file_shape: tuple[int, int, int]
    file_affine: np.ndarray
    header: nib.Nifti1Header | None = None
    path: Path | None = None
    _ornt: np.ndarray | None = field(default=None, repr=False)  # file axes -> RAS; derived from file_affine if None
    _arrival: Arrival | None = field(default=None, repr=False)  # voxels still being read (io.arrival)
    label: str | None = None  # the name of a volume without a file (``io.ct_from_array(..., name=)``)

    def __post_init__(self) -> None:
        if self._ornt is None:  # built through the public fields: the file's axes follow from its affine
            object.__setattr__(self, "_ornt", io_orientation(np.asarray(self.file_affine, dtype=np.float64)))

    @property
    def array(self) -> np.ndarray:
        """The canonical (X, Y, Z) voxels, all of them (see the class docstring)."""
        if self._arrival is not None:
            self._arrival.finish()
        return self._array

    @property
    def shape(self) -> tuple[int, int, int]:
        """``array``'s shape, known before its voxels are."""
        return tuple(int(n) for n in self._array.shape)

    def arriving(self) -> tuple[np.ndarray, Callable[[int, int, int], None] | None]:
        """(the canonical array, possibly still filling; ``wait(axis, lo, hi)``, which returns once planes
        [lo, hi) along canonical ``axis`` are in and raises the reader's error, or None when all are in).
        Read a plane of the array only after waiting for it; ``array`` waits for all."""
        if self._arrival is None or self._arrival.complete:
            return self._array, None
        return self._array, self._arrival.wait

    def close(self) -> None:
        """Stop reading voxels that are still arriving (the array then never completes)."""
        if self._arrival is not None:
            self._arrival.close()

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size of ``array`` along X, Y, Z in mm."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def name(self) -> str:
        """The file, else the name it was given, else "<array>": how errors and warnings name it."""
        if self.path is not None:
            return str(self.path)
        return self.label if self.label is not None else "<array>"

    def to_file_order(self, data: np.ndarray) -> np.ndarray:
        """Reorder a canonical (X, Y, Z) array back to the file's voxel order."""
        if data.shape != self.shape:
            raise ValueError(f"expected canonical shape {self.shape}, got {data.shape}")
        return apply_orientation(data, ornt_transform(RAS, self._ornt))

    def zeros(self, dtype: np.dtype | type) -> np.ndarray:
        """A canonical (X, Y, Z) array of zeros laid out so that its file-order view (``to_file_order``)
        is Fortran-contiguous, as NIfTI stores voxels: writing it is one contiguous copy instead of a
        transposition (nibabel wrote a 512 x 512 x 300 uint8 label map in 0.04 s instead of 0.35 s)."""
        return apply_orientation(np.zeros(self.file_shape, dtype, order="F"), self._ornt)

    def with_array(self, data: np.ndarray) -> Volume:
        """The same geometry holding other voxel data (canonical order, same shape)."""
        if data.shape != self.shape:
            raise ValueError(f"expected canonical shape {self.shape}, got {data.shape}")
        return Volume(data, self.affine, self.file_shape, self.file_affine, self.header, self.path, self._ornt,
                      label=self.label)


def canonical_volume(
    data: np.ndarray,
    affine: np.ndarray,
    header: nib.Nifti1Header | None = None,
    path: Path | None = None,
    arrival: Callable[[int, bool], Arrival] | None = None,
) -> Volume:
    """Wrap file-order ``data`` with its ``affine`` as a canonical RAS+ Volume (no resampling). ``arrival``:
    for voxels still arriving, makes their Arrival from the canonical axis of the file's planes (the
    file's last axis) and whether it runs reversed."""
    affine = np.asarray(affine, dtype=np.float64)
    ornt = io_orientation(affine)
    canonical = apply_orientation(data, ornt)  # a view where possible: no copy of a large CT
    canonical_affine = affine @ inv_ornt_aff(ornt, data.shape)
    progress = None if arrival is None else arrival(int(ornt[2, 0]), bool(ornt[2, 1] < 0))
    return Volume(canonical, canonical_affine, tuple(int(n) for n in data.shape), affine, header, path, ornt,
                  progress)
