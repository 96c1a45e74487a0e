"""Training-state files that can never execute code when loaded.

``last_state.pt``: optimiser, epoch, RNG state and the log, saved with ``torch.save`` and read
back with ``torch.load(weights_only=True)``, which refuses anything but tensors and plain
containers (a pickle payload raises instead of running). Written atomically, so a kill leaves the
previous one. Weights files are kidneyseg.weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kidneyseg.errors import ModelFileError
from kidneyseg.io.atomic import atomic_write
from kidneyseg.weights import first_line


def save_state(path: Path, state: dict[str, Any]) -> Path:
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict[str, Any]:
    """Read a training state with ``weights_only=True``: code in the file is never run."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError("training state not found (nothing to resume)", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types (UnpicklingError, RuntimeError, EOFError)
        raise ModelFileError(f"training state refused or unreadable ({first_line(exc)})", path) from exc
