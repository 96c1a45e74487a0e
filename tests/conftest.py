"""Shared fixtures: a few phantom cases and a micro two-stage model trained on them once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kidneyseg.config import override, preset

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# A micro version of the tiny preset so that training both stages takes seconds on 2 cores.
MICRO = ["input_size=32,32,32", "network.base_filters=4", "network.deep_supervision=2", "network.levels=3",
         "samples_per_epoch=8", "epochs=3", "val_fraction=0.25"]


def micro_stage(name: str, *extra: str):
    return override(preset("tiny").stage(name), MICRO + list(extra))


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    from kidneyseg.synthetic import synthesize_dataset

    out = tmp_path_factory.mktemp("phantoms")
    synthesize_dataset(out, 4, seed=11, progress=False)
    return out


@pytest.fixture(scope="session")
def trained_model(phantom_dir, tmp_path_factory) -> Path:
    from kidneyseg.training.fit import fit

    model_dir = tmp_path_factory.mktemp("model")
    for name in ("localizer", "segmenter"):
        fit(phantom_dir, model_dir, micro_stage(name), preset("tiny").pipeline, progress=False)
    return model_dir


def flip_permute(data: np.ndarray, affine: np.ndarray, flips, perm) -> tuple[np.ndarray, np.ndarray]:
    """The same image stored with other axis directions and order (every voxel keeps its world position)."""
    affine = affine.copy()
    for axis in flips:
        data = np.flip(data, axis)
        affine[:3, 3] += (data.shape[axis] - 1) * affine[:3, axis]
        affine[:3, axis] *= -1
    return np.ascontiguousarray(np.transpose(data, perm)), affine[:, [*perm, 3]]
