"""DICOM series reading with SimpleITK (it sorts slices by position and applies rescale slope/intercept)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kidneyseg.errors import InvalidInputError

# SimpleITK reports geometry in LPS; NIfTI and this package use RAS.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def read_dicom_series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the single CT series in ``folder``: (array (X, Y, Z) in HU as float32, RAS affine).

    Refuses folders holding no series or several series (name the one you want by giving
    a folder with only that series).
    """
    import SimpleITK as sitk  # heavy import, only needed for DICOM

    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InvalidInputError("no DICOM series found in this folder", folder)
    if len(series) > 1:
        raise InvalidInputError(f"{len(series)} DICOM series found ({', '.join(series[:3])}...); "
                                "put one series per folder", folder)
    files = reader.GetGDCMSeriesFileNames(str(folder), series[0])
    if len(files) < 2:
        raise InvalidInputError("the DICOM series has a single slice; expected a 3D volume", folder)
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InvalidInputError(f"DICOM series could not be read ({str(exc).strip().splitlines()[-1]})",
                                folder) from exc
    data = sitk.GetArrayFromImage(image).astype(np.float32)  # (Z, Y, X)
    data = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)
    affine_lps[:3, 3] = image.GetOrigin()
    return data, _LPS_TO_RAS @ affine_lps
