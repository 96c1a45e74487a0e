"""Dataset folder layout (KiTS19): ``DATA/case_XXXXX/imaging.nii.gz`` and ``segmentation.nii.gz``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kidneyseg.errors import InvalidInputError

IMAGE_NAME = "imaging.nii.gz"
LABEL_NAME = "segmentation.nii.gz"


@dataclass(frozen=True)
class Case:
    case_id: str
    image: Path | None
    label: Path | None


def kits_cases(data_dir: str | Path, *, need_images: bool = True, need_labels: bool = True) -> list[Case]:
    """The cases of a KiTS-layout folder, sorted by id. Refuses a folder with none, or a case
    folder that lacks a required file (naming it)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InvalidInputError("dataset folder not found" if not data_dir.exists() else "not a folder", data_dir)
    cases = []
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir() and p.name.startswith("case_")):
        image, label = folder / IMAGE_NAME, folder / LABEL_NAME
        if need_images and not image.exists():
            raise InvalidInputError(f"missing {IMAGE_NAME}", folder)
        if need_labels and not label.exists():
            raise InvalidInputError(f"missing {LABEL_NAME}", folder)
        cases.append(Case(folder.name, image if image.exists() else None, label if label.exists() else None))
    if not cases:
        raise InvalidInputError("no case_* folders found (expected the KiTS layout "
                                f"case_XXXXX/{IMAGE_NAME}, {LABEL_NAME})", data_dir)
    return cases
