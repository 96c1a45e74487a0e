"""The installed package's version, for ``--version`` and for the files that name their maker (DICOM SEG)."""

from __future__ import annotations


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kidneyseg")
    except PackageNotFoundError:
        return "unknown"
