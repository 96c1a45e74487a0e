"""DICOM series reading with SimpleITK, after checking the series' geometry slice by slice.

SimpleITK (GDCM) decodes the pixels (JPEG 2000 and other compressed syntaxes included) and applies
the rescale slope/intercept; it sorts slices by position but does not refuse a stack it cannot
represent as one regular grid. Every such case is refused here first, by name: a folder with
several series and none chosen, slices of different orientations or sizes, a missing slice, uneven
spacing, two slices at one position, and a gantry tilt (slices shifted within their plane from one
to the next, or a non-zero Gantry/Detector Tilt). Resampling a tilted or uneven stack is left to
tools made for it; the message says so.

Anonymised exports often have empty Series/Study/SOP Instance UIDs. A series without a
SeriesInstanceUID is listed under a stand-in name (``no-uid-<SeriesNumber>``), so it can still be
chosen with ``--series``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kidneyseg.errors import InvalidInputError

# SimpleITK reports geometry in LPS; NIfTI and this package use RAS.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_TAGS = {"series": "0020|000e", "description": "0008|103e", "number": "0020|0011", "position": "0020|0032",
         "orientation": "0020|0037", "tilt": "0018|1120", "rows": "0028|0010", "columns": "0028|0011",
         "spacing": "0028|0030"}
POSITION_MM = 0.01  # slices closer than this in-plane are not shifted; spacings closer are equal
SPACING_TOLERANCE = 0.01  # relative: uneven spacing beyond 1 % is refused


@dataclass(frozen=True)
class DicomSeries:
    """One series in a folder: its UID (or stand-in), description and files sorted along the slice normal."""

    uid: str
    description: str
    files: tuple[Path, ...]


def list_series(folder: Path) -> list[DicomSeries]:
    """The DICOM series of ``folder`` (files that are not DICOM are ignored), each sorted along its normal."""
    headers: dict[str, list[tuple[Path, dict[str, str]]]] = {}
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        header = _header(path)
        if header is not None:
            uid = header["series"] or f"no-uid-{header['number'] or 0}"
            headers.setdefault(uid, []).append((path, header))
    return [DicomSeries(uid, members[0][1]["description"], tuple(p for p, _ in _sorted(uid, members, folder)))
            for uid, members in headers.items()]


def choose_series(folder: Path, series_uid: str | None = None) -> DicomSeries:
    """The series to read: the only one, or the one named ``series_uid``; else an error listing them."""
    found = list_series(folder)
    if not found:
        raise InvalidInputError("no DICOM series found in this folder", folder)
    if series_uid is not None:
        chosen = [s for s in found if s.uid == series_uid]
        if not chosen:
            raise InvalidInputError(f"no series {series_uid} here; the folder holds:\n{_listing(found)}", folder)
        return chosen[0]
    if len(found) > 1:
        raise InvalidInputError(f"{len(found)} DICOM series found; choose one with --series UID:\n{_listing(found)}",
                                folder)
    return found[0]


def read_dicom_series(folder: Path, series_uid: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read one CT series of ``folder``: (array (X, Y, Z) in HU as float32, RAS affine).

    X runs along the image columns, Y along the rows and Z along the sorted slices, the order in
    which ``choose_series`` lists the files. Refuses what ``list_series`` finds irregular.
    """
    import SimpleITK as sitk  # heavy import, only needed for DICOM

    series = choose_series(folder, series_uid)
    if len(series.files) < 2:
        raise InvalidInputError("the DICOM series has a single slice; expected a 3D volume", folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in series.files])
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


def _header(path: Path) -> dict[str, str] | None:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("GDCMImageIO")
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None  # not DICOM (a DICOMDIR, a text file ...)
    keys = set(reader.GetMetaDataKeys())
    return {name: reader.GetMetaData(tag).strip() if tag in keys else "" for name, tag in _TAGS.items()}


def _sorted(uid: str, members: list[tuple[Path, dict[str, str]]], folder: Path) -> list[tuple[Path, dict]]:
    """Members sorted along the slice normal, after refusing an irregular stack (see the module docstring)."""
    where = f"series {uid}"

    def numbers(header: dict[str, str], key: str) -> np.ndarray:
        try:
            return np.array([float(v) for v in header[key].split("\\")])
        except ValueError as exc:
            raise InvalidInputError(f"{where}: a slice has a missing or unreadable {key}", folder) from exc

    orientations = np.array([numbers(h, "orientation") for _, h in members])
    if np.abs(orientations - orientations[0]).max() > 1e-4:
        raise InvalidInputError(f"{where}: slices with different orientations (mixed series); refused", folder)
    if len({(h["rows"], h["columns"], h["spacing"]) for _, h in members}) > 1:
        raise InvalidInputError(f"{where}: slices of different sizes or pixel spacings; refused", folder)
    tilt = [float(h["tilt"]) for _, h in members if h["tilt"]]
    if any(abs(t) > 1e-3 for t in tilt):
        raise InvalidInputError(f"{where}: gantry tilt of {max(tilt, key=abs):g} degrees; refused (resample the "
                                "series to an orthogonal grid first)", folder)
    row, col = orientations[0][:3], orientations[0][3:]
    normal = np.cross(row, col)
    positions = np.array([numbers(h, "position") for _, h in members])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    positions, along = positions[order], along[order]
    if len(members) < 2:
        return [members[i] for i in order]
    in_plane = positions - np.outer(along, normal)
    if np.abs(in_plane - in_plane[0]).max() > POSITION_MM:
        raise InvalidInputError(f"{where}: each slice is shifted within its plane from the one before (a gantry "
                                "tilt); refused (resample the series to an orthogonal grid first)", folder)
    steps = np.diff(along)
    if steps.min() < POSITION_MM:
        raise InvalidInputError(f"{where}: two slices at the same position {along[np.argmin(steps)]:.2f} mm; refused",
                                folder)
    typical = float(np.median(steps))
    uneven = np.abs(steps - typical) > max(POSITION_MM, SPACING_TOLERANCE * typical)
    if uneven.any():
        first = int(np.argmax(uneven))
        gap = steps[first] / typical
        what = (f"{round(gap) - 1} missing slice(s)" if abs(gap - round(gap)) < 0.05 and gap > 1.5
                else "uneven slice spacing")
        raise InvalidInputError(f"{where}: {what} between positions {along[first]:.2f} and {along[first + 1]:.2f} "
                                f"mm (spacing {steps[first]:.2f} mm where the series has {typical:.2f} mm); refused",
                                folder)
    return [members[i] for i in order]


def _listing(found: list[DicomSeries]) -> str:
    return "\n".join(f"  {s.uid}  '{s.description}'  {len(s.files)} slices" for s in found)
