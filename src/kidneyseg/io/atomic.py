"""Atomic file writing: a temp file in the target's folder, fsync, then rename over the target.

A crash or kill at any moment leaves either the old file or the new one, never a partial one,
and no temp file that looks like an output (temp names start with '.' and end in '.tmp'
before the real suffixes, so globbing ``*.nii.gz`` never picks them up... see ``temp_path``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

from kidneyseg.errors import ResourceError, UsageError


def full_suffix(path: Path) -> str:
    """'.nii.gz' for 'a.nii.gz', '.png' for 'a.png' (libraries pick the format from it)."""
    suffixes = path.suffixes
    if len(suffixes) >= 2 and suffixes[-1] == ".gz":
        return "".join(suffixes[-2:])
    return suffixes[-1] if suffixes else ""


def temp_path(path: Path) -> Path:
    """A unique hidden temp name beside ``path`` that keeps its format suffix."""
    suffix = full_suffix(path)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.with_name(f".{stem}.{secrets.token_hex(4)}.tmp{suffix}")


@contextlib.contextmanager
def atomic_target(path: str | Path) -> Iterator[Path]:
    """Yield a temp path to write; on success fsync it and rename it onto ``path``.

    On any error the temp file is removed and the previous ``path`` (if any) is untouched.
    OSError (disk full, permission) becomes ResourceError naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        reason = "no space left on device" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
        raise ResourceError(f"could not write ({reason}); any previous version is intact", path) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def check_output_dir(path: str | Path) -> Path:
    """Refuse, before any work, an output folder that is a file (or lies under one) or that cannot
    be created or written: the nearest existing folder on its path must be writable. Creates nothing."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == path else f"cannot be created: {existing} is a file"
        raise UsageError(f"the output folder {what}; give a folder", path)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ResourceError(f"the output folder cannot be {'written' if existing == path else 'created'} "
                            f"(no write permission on {existing})", path)
    return path


def atomic_write(path: str | Path, writer: Callable[[Path], object]) -> Path:
    """Call ``writer(temp_path)`` and atomically move the result onto ``path``."""
    with atomic_target(path) as tmp:
        writer(tmp)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
