"""What the training data looked like, recorded in the model directory, and how far an input is from it.

Training writes ``MODEL_DIR/data_profile.json``: for up to PROFILE_CASES training cases (evenly
spread over the sorted list), the voxel spacing, the median HU of the body (voxels above -500 HU:
off by about 1,000 on a file stored without its rescale, or on a non-CT image) and the median HU
of the kidney tissue (label 1: about 150-200 HU in the nephrographic phase KiTS19 was taken in,
30-40 HU without contrast); the file keeps each quantity's range over those cases.

At prediction, ``unlike_training`` compares the input's spacing and body HU, and the HU of what
the model labelled as kidney, with those ranges widened by SPACING_FACTOR and HU_MARGIN_HU: a scan
at 3 mm where training saw 0.8 mm, another contrast phase, or a "kidney" of fat. The paper's box
rules count voxels, so a scan at another spacing gets crops of another physical size than the
segmenter learned on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kidneyseg import io
from kidneyseg.labels import KIDNEY

PROFILE_FILE = "data_profile.json"
PROFILE_CASES = 24  # cases read to build the profile: its ranges, not a mean, so a few dozen suffice
SPACING_FACTOR = 1.5  # an input spacing beyond [min / 1.5, max * 1.5] of training's is unlike it
HU_MARGIN_HU = 50.0  # an HU median beyond [min - 50, max + 50] is unlike training's
BODY_HU = -500.0
QUANTITIES = ("in_plane_mm", "slice_mm", "body_hu", "kidney_hu")


def case_profile(volume: io.Volume, labels: np.ndarray | None) -> dict[str, float]:
    """The profiled quantities of one CT (HU, canonical) and its label map (None: no kidney HU)."""
    sx, sy, sz = volume.spacing_mm
    body = volume.array[::2, ::2, ::2]
    body = body[body > BODY_HU]
    profile = {"in_plane_mm": float((sx + sy) / 2), "slice_mm": float(sz),
               "body_hu": float(np.median(body)) if body.size else float("nan")}
    kidney = volume.array[labels == KIDNEY] if labels is not None else np.empty(0)
    profile["kidney_hu"] = float(np.median(kidney)) if kidney.size else float("nan")
    return profile


def build_profile(cases: list[io.layout.Case]) -> dict:
    """The ranges of each quantity over up to PROFILE_CASES of ``cases`` (evenly spread)."""
    chosen = [cases[int(i)] for i in np.unique(np.linspace(0, len(cases) - 1, min(PROFILE_CASES, len(cases))))]
    rows = []
    for case in chosen:
        image, labels = io.load_case(case)
        rows.append(case_profile(image, labels.array))
    ranges = {}
    for name in QUANTITIES:
        values = [r[name] for r in rows if np.isfinite(r[name])]
        ranges[name] = [min(values), max(values)] if values else None
    return {"cases": [c.case_id for c in chosen], "ranges": ranges, "files": _files(cases)}


def write_profile(model_dir: Path, cases: list[io.layout.Case]) -> Path:
    """``model_dir/data_profile.json`` for ``cases``, unless it already describes these files (the
    other stage trained on them first)."""
    path = Path(model_dir) / PROFILE_FILE
    if path.exists():
        try:
            if json.loads(path.read_text()).get("files") == _files(cases):
                return path
        except (ValueError, AttributeError):
            pass  # unreadable: written again below
    return io.atomic_write_text(path, json.dumps(build_profile(cases), indent=1))


def read_profile(model_dir: Path) -> dict | None:
    """The model directory's profile, or None where it has none (trained before profiles existed)."""
    path = Path(model_dir) / PROFILE_FILE
    if not path.exists():
        return None
    try:
        profile = json.loads(path.read_text())
        return profile if isinstance(profile.get("ranges"), dict) else None
    except ValueError:
        return None


def unlike_training(profile: dict, volume: io.Volume, labels: np.ndarray) -> list[str]:
    """Why the input (and what was labelled kidney in it) is unlike the training data: one phrase per
    quantity outside its widened training range; empty when none is."""
    here = case_profile(volume, labels)
    reasons = []
    for name in QUANTITIES:
        bounds = profile["ranges"].get(name)
        if bounds is None or not np.isfinite(here[name]):
            continue
        low, high = bounds
        if name.endswith("_mm"):
            low, high, unit = low / SPACING_FACTOR, high * SPACING_FACTOR, "mm"
        else:
            low, high, unit = low - HU_MARGIN_HU, high + HU_MARGIN_HU, "HU"
        if not low <= here[name] <= high:
            reasons.append(f"{DESCRIPTIONS[name]} {here[name]:.1f} {unit}, training {bounds[0]:.1f}-{bounds[1]:.1f}")
    return reasons


DESCRIPTIONS = {"in_plane_mm": "in-plane spacing", "slice_mm": "slice spacing", "body_hu": "body median",
                "kidney_hu": "labelled kidney median"}


def _files(cases: list[io.layout.Case]) -> list[list]:
    return [[c.case_id, c.image.stat().st_size, c.label.stat().st_size] for c in cases]
