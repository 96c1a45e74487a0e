"""Phantom CTs drawn around real KiTS19 label maps, on exactly their grids.

``render_around_labels`` draws a contrast-enhanced late-arterial CT whose kidneys and tumours are
those of a given label map: the torso and organs are placed from the kidneys' positions
(``placement``) and rendered by the same renderer as the procedural phantoms (``scene``).
``synthesize_from_labels`` does so for every ``case_*/segmentation.nii.gz`` of a KiTS-layout
folder and writes ``imaging.nii.gz`` (int16 HU) beside a copy of the label map.
"""

from __future__ import annotations

import json
import shutil
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kidneyseg.errors import InvalidInputError
from kidneyseg.io import atomic_write, load_label_map, save_nifti
from kidneyseg.io.layout import IMAGE_NAME, LABEL_NAME, kits_cases
from kidneyseg.synthetic.placement import plan_scene_around_labels
from kidneyseg.synthetic.scene import render_scene

CLINICAL_NAME = "kits.json"


def render_around_labels(labels: np.ndarray, spacing_mm: Sequence[float], rng: np.random.Generator,
                         subtype: str | None = None) -> np.ndarray:
    """A phantom CT (int16 HU) around ``labels``, on exactly the same grid.

    ``labels`` is a KiTS label map (uint8: 0 background, 1 kidney, 2 tumour) as an (X, Y, Z)
    array in RAS+ voxel order (a ``Volume``'s canonical array) with voxels of ``spacing_mm``
    (mm along X, Y, Z). ``subtype`` is a KiTS19 ``tumor_histologic_subtype`` (e.g.
    "clear_cell_rcc", "papillary"); None draws one with KiTS19's frequencies. The result has
    ``labels``' shape and voxel order.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"expected a 3D (X, Y, Z) label map, got shape {labels.shape}")
    scene = plan_scene_around_labels(rng, labels, spacing_mm, subtype)
    return render_scene(rng, scene).ct


def read_subtypes(label_dir: Path) -> dict[str, str]:
    """case id -> ``tumor_histologic_subtype`` from ``label_dir/kits.json`` (empty when absent)."""
    path = Path(label_dir) / CLINICAL_NAME
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"not a readable clinical table ({exc})", path) from exc
    return {str(e["case_id"]): str(e["tumor_histologic_subtype"]) for e in entries
            if isinstance(e, dict) and e.get("case_id") and isinstance(e.get("tumor_histologic_subtype"), str)}


def label_case_rng(seed: int, case_id: str) -> np.random.Generator:
    """The generator of case ``case_id`` (independent of which other cases are rendered)."""
    return np.random.default_rng([int(seed), zlib.crc32(case_id.encode("utf-8"))])


def synthesize_label_case(label_path: Path, out_folder: Path, seed: int, subtype: str | None = None) -> Path:
    """Render the phantom of one label map into ``out_folder`` (imaging.nii.gz on the label map's
    exact grid and header, plus an unchanged copy of the label map); returns ``out_folder``."""
    label_path, out_folder = Path(label_path), Path(out_folder)
    volume = load_label_map(label_path)
    ct = render_around_labels(volume.array, volume.spacing_mm, label_case_rng(seed, label_path.parent.name), subtype)
    data = volume.to_file_order(ct)
    del ct
    save_nifti(data, volume.file_affine, out_folder / IMAGE_NAME, header=volume.header)
    atomic_write(out_folder / LABEL_NAME, lambda tmp: shutil.copyfile(label_path, tmp))
    return out_folder


def synthesize_from_labels(label_dir: Path, out_dir: Path, seed: int, progress: bool = True,
                           cases: list[str] | None = None) -> list[Path]:
    """Render a phantom CT around every ``case_*/segmentation.nii.gz`` of ``label_dir`` (or only
    the case ids in ``cases``) into ``out_dir/case_*/`` and return those folders, sorted by id.

    Tumour subtypes come from ``label_dir/kits.json`` when present. Each case depends only on
    (seed, case id).
    """
    found = kits_cases(label_dir, need_images=False)
    if cases is not None:
        wanted = set(cases)
        unknown = sorted(wanted - {c.case_id for c in found})
        if unknown:
            raise InvalidInputError(f"no such case(s): {', '.join(unknown)}", label_dir)
        found = [c for c in found if c.case_id in wanted]
    subtypes = read_subtypes(Path(label_dir))
    folders = []
    for case in tqdm(found, desc="phantoms around label maps", unit="case", disable=not progress):
        folders.append(synthesize_label_case(case.label, Path(out_dir) / case.case_id, seed,
                                             subtypes.get(case.case_id)))
    return folders
