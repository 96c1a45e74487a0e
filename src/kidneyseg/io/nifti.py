"""NIfTI reading and writing with nibabel. The only module besides ``dicom`` that opens image files."""

from __future__ import annotations

import errno
import gzip
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from kidneyseg.errors import InvalidInputError
from kidneyseg.io.atomic import atomic_write
from kidneyseg.io.validate import check_affine, check_finite, check_header_size, check_shape, float32_exact_integers

try:
    # ISA-L's gzip (python-isal) reads and writes the same files as the standard library's, which nibabel uses:
    # a 512 x 512 x 300 int16 CT decompressed in 0.72 s instead of 1.33 s, a label map of that size
    # compressed (level 1) in 0.08 s instead of 0.59 s (2 cores, both timed in one run).
    from isal import igzip as _gzip
    from isal.isal_zlib import error as _isal_error
except ImportError:  # a platform without its wheels: the standard library, slower
    _gzip, _isal_error = gzip, zlib.error

NIFTI_SUFFIXES = (".nii", ".nii.gz")
GZ_CHUNK_VOXELS = 1 << 20  # voxels decompressed and converted per step of _voxels (2 MB of int16)
_READ_ERRORS = (
    nib.filebasedimages.ImageFileError,
    EOFError,
    OSError,
    ValueError,
    zlib.error,
    gzip.BadGzipFile,
    _isal_error,
)


def is_nifti_path(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def read_nifti(path: Path, *, allow_4d: bool = False, float32: bool = False,
               keep_integers: bool = False) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """Read a 3D NIfTI file: (array in file voxel order, scaled by scl_slope/scl_inter; affine; header).

    The affine is the one nibabel uses (sform when its code is set, else qform); a
    disagreement between the two is reported as a warning naming the one used. The header's
    declared size is checked before any voxel data is read. ``float32``: the values as float32
    (the same as converting nibabel's scaled array), read without a full-size copy of the stored
    integers where the file allows it, and refused if any is NaN or Inf. With ``keep_integers`` as
    well, stored integers of 16 bits or fewer without scaling (slope 1, intercept 0: most CTs) stay
    in their own type, which float32 holds exactly: half the memory of float32 and no conversion.
    """
    image, affine = _open(path, allow_4d)
    # Only the first volume of a 4D file (allowed by check_shape): nibabel's array proxy reads just that part.
    first = (slice(None),) * 3 + (0,) * (len(image.shape) - 3)
    try:
        keep = float32 and keep_integers and _exact_integers(image.dataobj)
        data = _read_data(image, path, first, float32 and not keep, keep)
    except _READ_ERRORS as exc:
        raise _read_error(exc, path) from exc
    if float32 and not keep:
        # Converted here, after the stream and its buffers are gone. astype, not np.asarray(data, dtype=...):
        # on the Fortran-ordered arrays NIfTI files give, the latter took 2.1 s instead of 0.18 s for a
        # 512 x 512 x 611 int16 CT (NumPy 2).
        data = data.astype(np.float32, copy=False)
        if not _finite_by_type(image.dataobj):
            check_finite(data, path)
    return data, affine, image.header


def read_nifti_later(path: Path, *, keep_integers: bool = False):
    """``read_nifti(path, float32=True, keep_integers=...)`` with the voxels still to come, for a .nii.gz CT
    that stores integers plane by plane (3D, Fortran order; with ``keep_integers`` in native byte order):
    (array, affine, header, fill). The header is checked as ``read_nifti`` checks it; ``array`` is
    allocated, not filled: ``fill(advance)`` decompresses into it in file order, calling ``advance(n)``
    whenever the first n voxels are in, and raises ``read_nifti``'s errors. Every such file holds finite
    values only. None for any other file (``read_nifti`` reads it)."""
    if not path.name.lower().endswith(".gz"):
        return None
    image, affine = _open(path, allow_4d=False)
    proxy = image.dataobj
    stored = np.dtype(proxy.dtype)
    keep = keep_integers and _exact_integers(proxy)
    if not _integer_planes(proxy) or (keep and not stored.isnative) or not _finite_by_type(proxy):
        return None
    out = np.empty(proxy.shape, stored.newbyteorder("=") if keep else np.float32, order="F")

    def fill(advance) -> None:
        try:
            with _gzip.open(path, "rb") as stream:
                _voxels(stream, proxy, out.dtype, out, advance)
        except _READ_ERRORS as exc:
            raise _read_error(exc, path) from exc

    return out, affine, image.header, fill


def _open(path: Path, allow_4d: bool) -> tuple[nib.Nifti1Image | nib.Nifti2Image, np.ndarray]:
    """The image (its voxels not read) and the affine, after the checks of the file and its header."""
    if not path.is_file():
        raise InvalidInputError("file not found" if not path.exists() else "not a file", path)
    if path.stat().st_size == 0:
        raise InvalidInputError("file is empty (0 bytes)", path)
    if not is_nifti_path(path):
        raise InvalidInputError("unsupported file type; expected .nii or .nii.gz (or a DICOM folder)", path)
    try:
        # mmap=False: an uncompressed file's voxels are read into memory, never mapped. A mapped CT kept in its
        # integer type (keep_integers) would stay backed by the file: truncated by another program while
        # prediction runs, the process would die of SIGBUS instead of raising an error that names the file.
        image = nib.load(path, mmap=False)
    except _READ_ERRORS as exc:
        raise InvalidInputError(f"not a readable NIfTI file ({_short(exc)})", path) from exc
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise InvalidInputError(f"not a NIfTI-1/2 image ({type(image).__name__})", path)
    shape = tuple(int(n) for n in image.shape)
    shape = check_shape(shape, path, allow_4d=allow_4d)
    check_header_size(shape, image.header.get_data_dtype(), path)
    affine = _chosen_affine(image, path)
    check_affine(affine, path)
    return image, affine


def _read_error(exc: BaseException, path: Path) -> Exception:
    """The error to raise for one of _READ_ERRORS while the voxel data was read."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:  # mapping or reading the data ran out of memory
        return MemoryError(f"reading {path}: {_short(exc)}")
    return InvalidInputError(f"voxel data could not be read; is the file truncated? ({_short(exc)})", path)


def _read_data(image: nib.Nifti1Image, path: Path, first: tuple, float32: bool, keep: bool) -> np.ndarray:
    """The voxel data as nibabel's array proxy gives it (scl_slope/scl_inter applied), a .nii.gz file
    decompressed by ``_gzip``; never memory-mapped from a compressed stream. A compressed 3D integer image
    comes from ``_voxels``: as float32 with ``float32``, in its own type with ``keep``; read_nifti converts
    every other case."""
    proxy = image.dataobj
    if path.name.lower().endswith(".gz") and type(proxy) is nib.arrayproxy.ArrayProxy:
        with _gzip.open(path, "rb") as stream:
            if (float32 or keep) and _integer_planes(proxy):
                return _voxels(stream, proxy, np.dtype(proxy.dtype).newbyteorder("=") if keep else np.float32)
            spec = (proxy.shape, proxy.dtype, proxy.offset, proxy.slope, proxy.inter)
            proxy = nib.arrayproxy.ArrayProxy(stream, spec, mmap=False, order=proxy.order)
            return np.asanyarray(proxy[first] if len(proxy.shape) > 3 else proxy)
    return np.asanyarray(proxy[first] if len(proxy.shape) > 3 else proxy)


def _integer_planes(proxy) -> bool:
    """True for a plain array proxy of a 3D integer image stored plane by plane (Fortran order): what
    ``_voxels`` decompresses chunk by chunk."""
    return (type(proxy) is nib.arrayproxy.ArrayProxy and len(proxy.shape) == 3 and proxy.dtype.kind in "iu"
            and proxy.order == "F")


def _exact_integers(proxy) -> bool:
    """True when the file stores integers of at most 16 bits that need no scaling: nibabel then gives
    them in their own type, and every value converts to float32 exactly."""
    return float32_exact_integers(proxy.dtype) and float(proxy.slope) == 1.0 and float(proxy.inter) == 0.0


def _finite_by_type(proxy) -> bool:
    """True when every value the file can hold is a finite float32 once scaled: integers stored, and the
    type's extremes times scl_slope plus scl_inter inside float32's range (no voxel needs a check)."""
    dtype = np.dtype(proxy.dtype)
    if dtype.kind not in "iu":
        return False
    info = np.iinfo(dtype)
    ends = np.array([info.min, info.max], np.float64) * float(proxy.slope) + float(proxy.inter)
    return bool(np.all(np.abs(ends) < np.finfo(np.float32).max))


def _voxels(stream, proxy: nib.arrayproxy.ArrayProxy, dtype: np.dtype, out: np.ndarray | None = None,
            advance=None) -> np.ndarray:
    """A 3D integer image from its decompressed ``stream`` as ``dtype``, Fortran-ordered as the file stores it,
    GZ_CHUNK_VOXELS at a time.

    The stored type itself (byte order made native; only for images without scaling): each chunk
    decompressed straight into the output. NumPy allocates it, asking the kernel for huge pages (transparent
    huge pages in madvise mode); nibabel decompresses into a bytearray, and python-isal's readinto of a
    whole image goes through a temporary of its size: each touched 4 KiB at a time, 77,000 and 38,500 page
    faults for a 512 x 512 x 300 int16 CT against about 600 this way, on a virtual machine where a first touch of
    memory costs more than decompressing into it. Any other type (float32): each chunk decompressed into
    one reused buffer, scaled as nibabel's proxy scales (its own steps, so the same values) and converted
    into the output, instead of a full-size integer array first (zeroed, filled, then converted). The
    stream must hold every voxel: a short one raises EOFError. ``out``: the array to fill (Fortran order,
    ``dtype``), else a new one; ``advance(n)``, if given, is called whenever the first n voxels are final."""
    if out is None:
        out = np.empty(proxy.shape, dtype, order="F")
    flat = out.reshape(-1, order="F")  # a view: the output is Fortran-contiguous
    stream.seek(proxy.offset)
    stored = np.dtype(proxy.dtype)
    if np.dtype(dtype) == stored.newbyteorder("="):
        for start in range(0, flat.size, GZ_CHUNK_VOXELS):
            _fill(stream, flat[start:start + GZ_CHUNK_VOXELS], start, flat.size)
            if advance is not None and stored.isnative:  # a swapped type is final after the byteswap below
                advance(min(flat.size, start + GZ_CHUNK_VOXELS))
        if not stored.isnative:
            out.byteswap(inplace=True)
        return out
    slope, inter = np.asanyarray(proxy.slope), np.asanyarray(proxy.inter)
    if np.can_cast(inter, slope.dtype):
        inter = inter.astype(slope.dtype)
    buffer = np.empty(min(GZ_CHUNK_VOXELS, flat.size), stored)
    for start in range(0, flat.size, buffer.size):
        chunk = buffer[:min(buffer.size, flat.size - start)]
        _fill(stream, chunk, start, flat.size)
        with np.errstate(over="ignore"):  # a value beyond float32 becomes Inf, which read_nifti refuses by name
            flat[start:start + chunk.size] = nib.volumeutils.apply_read_scaling(chunk, slope, inter)
        if advance is not None:
            advance(start + chunk.size)
    return out


def _fill(stream, target: np.ndarray, start: int, total: int) -> None:
    """Decompress exactly ``target``'s bytes (voxels ``start`` onwards of ``total``) from ``stream``."""
    view, got = memoryview(target).cast("B"), 0
    while got < view.nbytes:
        n = stream.readinto(view[got:])
        if not n:
            raise EOFError(f"the data stops after {start + got // target.itemsize:,} of {total:,} voxels")
        got += n


def _chosen_affine(image: nib.Nifti1Image, path: Path) -> np.ndarray:
    header = image.header
    sform, scode = header.get_sform(coded=True)
    qform, qcode = header.get_qform(coded=True)
    if sform is None and qform is None:
        warnings.warn(
            f"{path}: neither a qform nor an sform is set (both codes 0), so the scan's orientation and "
            "position are unknown; using nibabel's fallback affine from the voxel sizes alone. Left/right "
            "and the world position of the output may be wrong: fix the header if you can.",
            stacklevel=3,
        )
    elif sform is not None and qform is not None and not np.allclose(sform, qform, atol=1e-3):
        warnings.warn(
            f"{path}: qform and sform disagree; using the sform (code {int(scode)}) as nibabel does.\n"
            f"  sform:\n{np.array2string(sform, precision=3)}\n  qform:\n{np.array2string(qform, precision=3)}",
            stacklevel=3,
        )
    return np.asarray(image.affine, dtype=np.float64)


def save_nifti(
    array: np.ndarray,
    affine: np.ndarray,
    path: str | Path,
    header: nib.Nifti1Header | None = None,
) -> Path:
    """Atomically write ``array`` (file voxel order) with ``affine`` to ``path`` (.nii or .nii.gz).

    With ``header`` given, its qform/sform codes and units are kept; the data type and scaling
    are replaced by the array's own (scl_slope 1, scl_inter 0), and the fields that describe the
    input's intensities (display window, intent, description) are cleared.
    """
    path = Path(path)
    if not is_nifti_path(path):
        raise InvalidInputError("output must end in .nii or .nii.gz", path)
    new_header = header.copy() if header is not None else None
    image = nib.Nifti1Image(np.asarray(array), affine, header=new_header)
    if header is not None:
        _copy_codes(header, image)
    else:
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
    image.set_data_dtype(np.asarray(array).dtype)
    image.header.set_slope_inter(1.0, 0.0)
    _clear_display_fields(image.header)
    image.header.set_xyzt_units("mm", "sec")
    if path.name.lower().endswith(".gz"):
        return atomic_write(path, lambda tmp: _save_gz(image, tmp))
    return atomic_write(path, lambda tmp: nib.save(image, tmp))


def _save_gz(image: nib.Nifti1Image, tmp: Path) -> None:
    """``image`` as a gzip-compressed single file through ``_gzip`` at level 1, as nibabel compresses."""
    with _gzip.open(tmp, "wb", compresslevel=1) as stream:
        image.to_stream(stream)


def _clear_display_fields(header: nib.Nifti1Header) -> None:
    """Fields that describe the input's intensities, not the new data: a CT's display window
    (cal_min/cal_max), intent and description would make a viewer show a label map as a CT."""
    header["cal_min"] = header["cal_max"] = 0
    header.set_intent("none")
    header["descrip"] = b"kidneyseg"
    header["aux_file"] = b""


def _copy_codes(header: nib.Nifti1Header, image: nib.Nifti1Image) -> None:
    """Restore the original qform/sform (matrices and codes) exactly as the input had them."""
    image.set_sform(header.get_sform(), code=int(header["sform_code"]))
    image.set_qform(header.get_qform(), code=int(header["qform_code"]))


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
