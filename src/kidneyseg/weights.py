"""Weights files that can never execute code when loaded, and the precision networks run in.

``*.safetensors`` holds the weights with the stage settings as JSON in the metadata, so a weights
file alone rebuilds its network; safetensors holds raw tensors only. Files are written atomically
(temp file, fsync, rename), so a kill leaves the previous one. Training and inference both use this
module; neither imports the other (training's resume state is in kidneyseg.training.checkpoint).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from kidneyseg.config import PipelineConfig, StageConfig, pipeline_from_dict, stage_from_dict, to_dict
from kidneyseg.errors import ModelFileError, UsageError
from kidneyseg.io.atomic import atomic_write
from kidneyseg.model import IsenseeUNet

FORMAT = "kidneyseg-weights-1"


def save_weights(path: Path, model: torch.nn.Module, stage: StageConfig, **meta: Any) -> Path:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "config": json.dumps(to_dict(stage)), "meta": json.dumps(meta)}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))


def build_model(stage: StageConfig) -> IsenseeUNet:
    net = stage.network
    return IsenseeUNet(in_channels=net.in_channels, num_classes=stage.out_channels, base_filters=net.base_filters,
                       levels=net.levels, dropout=net.dropout, deep_supervision=net.deep_supervision)


def load_model(path: Path, map_location: str = "cpu") -> tuple[IsenseeUNet, StageConfig, dict]:
    """Rebuild the network from a weights file: (model in eval mode, its settings, extra metadata)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError("model file not found", path)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(str(path), device=map_location)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"not a valid safetensors model file ({first_line(exc)}); only safetensors "
                             "weights are loaded, never pickles", path) from exc
    if metadata.get("format") != FORMAT:
        raise ModelFileError(f"not a kidneyseg model file (format {metadata.get('format')!r})", path)
    try:
        stage = stage_from_dict(json.loads(metadata["config"]))
        meta = json.loads(metadata.get("meta", "{}"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"model settings in the file are unreadable ({exc})", path) from exc
    model = build_model(stage)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"weights do not fit the architecture in the file's settings ({first_line(exc)})",
                             path) from exc
    return model.eval(), stage, meta


def run_pipeline(run_dir: Path) -> PipelineConfig | None:
    """The pipeline settings a stage was trained with (``run_dir/config.json``), or None if it has none yet.
    An unreadable file raises ModelFileError naming it."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        return None
    try:
        return pipeline_from_dict(json.loads(path.read_text())["pipeline"])
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelFileError(f"unreadable settings ({exc})", path) from exc


def autocast(precision: str, device: str) -> torch.autocast:
    """Autocast on the device's type to bfloat16 ('bf16') or float16 ('fp16', GPUs, with a gradient
    scaler in training); a no-op context for 'fp32'."""
    device_type = torch.device(device).type
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type, dtype=dtype, enabled=precision in ("bf16", "fp16"))


def check_precision(precision: str) -> None:
    """Refuse a precision name other than fp32, bf16 and fp16 (a user's --precision), before any other work."""
    if precision not in ("fp32", "bf16", "fp16"):
        raise UsageError(f"precision must be fp32, bf16 or fp16, got {precision!r}")


def supported_precision(precision: str | None, device: str, doing: str = "predicting") -> str | None:
    """``precision`` if the device runs it, else fp32 with a warning that says what is ``doing`` so: bf16 on
    a CPU or GPU without bf16 support, fp16 on a CPU. Both would be emulated: on a 2-core AVX2 CPU without
    AVX512-BF16 a `small` segmenter's forward pass took 123 s in bf16 against 1 s in fp32."""
    if precision is None:
        return precision
    check_precision(precision)
    if precision == "fp32":
        return precision
    kind = torch.device(device).type
    if precision == "fp16" and kind == "cpu":
        warnings.warn(f"fp16 is for GPUs; {doing} in fp32 on this CPU (bf16 is the CPU option)", stacklevel=3)
        return "fp32"
    if precision == "bf16" and not bf16_supported(device):
        warnings.warn(f"this {'CPU' if kind == 'cpu' else 'GPU'} has no bf16 support; {doing} in fp32", stacklevel=3)
        return "fp32"
    return precision


def bf16_supported(device: str) -> bool:
    """Whether the device runs bf16 natively (a CPU with AVX512-BF16/AMX, a GPU from Ampere on)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
