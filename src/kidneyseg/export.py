"""ONNX export of a model directory, and the ONNX Runtime network that ``predict --backend onnxruntime`` runs.

An exported directory holds ``localizer.onnx`` and ``segmenter.onnx`` (each network in fp32 at its
fixed input size (1, 1, X, Y, Z), with its stage settings as JSON in the ONNX metadata under
``kidneyseg_stage``), ``pipeline.json`` and, where training wrote it, ``data_profile.json``. The
rest of the pipeline (reading, zoom, boxes, paste, clean-up, report) is the same code as with
PyTorch; only the network passes run in ONNX Runtime, so a deployment needs no trained PyTorch
checkpoint and loads no pickle. Export needs the ``onnx`` extra (onnx, onnxscript, onnxruntime);
prediction from an exported directory needs only onnxruntime.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from kidneyseg.config import StageConfig, to_dict
from kidneyseg.errors import ModelFileError, UsageError
from kidneyseg.profile import PROFILE_FILE

STAGES = ("localizer", "segmenter")
METADATA_KEY = "kidneyseg_stage"
EXTRA_HINT = 'pip install -c constraints.txt -e ".[onnx]"'


def require_onnx_extra(*modules: str) -> None:
    """Stop with a clear error naming the extra when one of ``modules`` is missing."""
    for name in modules:
        try:
            __import__(name)
        except ImportError as exc:
            raise UsageError(f"{name} is not installed; ONNX export and the onnxruntime backend need "
                                         f"the 'onnx' extra: {EXTRA_HINT}") from exc


def export_onnx(model_dir: Path, out_dir: Path) -> Path:
    """Export both networks of ``model_dir`` (PyTorch) to ``out_dir`` as ONNX, with the pipeline
    settings beside them. ``out_dir`` must not exist or be empty; it appears complete or not at all."""
    from kidneyseg.inference import load_model_dir

    require_onnx_extra("onnx", "onnxscript")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UsageError(f"{out_dir} exists and is not an empty folder; choose a new output folder")
    model = load_model_dir(model_dir, precision="fp32")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for name, net, stage in (("localizer", model.localizer, model.localizer_config),
                                 ("segmenter", model.segmenter, model.segmenter_config)):
            _export_network(net, stage, staging / f"{name}.onnx")
        shutil.copy2(Path(model_dir) / "pipeline.json", staging / "pipeline.json")
        if (Path(model_dir) / PROFILE_FILE).exists():
            shutil.copy2(Path(model_dir) / PROFILE_FILE, staging / PROFILE_FILE)
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _export_network(net: torch.nn.Module, stage: StageConfig, path: Path) -> None:
    import onnx

    net = net.float().eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros(1, 1, *stage.input_size)
    torch.onnx.export(net, (example,), path, dynamo=True, input_names=["image"], output_names=["logits"],
                      external_data=False, verbose=False)
    exported = onnx.load(path)
    exported.metadata_props.add(key=METADATA_KEY, value=json.dumps(to_dict(stage)))
    onnx.save(exported, path, save_as_external_data=False)  # one file per network, weights inside


class OnnxNetwork:
    """An ONNX Runtime session called like the PyTorch network: logits (1, C, X, Y, Z) for an
    image (1, 1, X, Y, Z); tensors in and out, NumPy inside."""

    def __init__(self, path: Path, threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own classes for broken files
            raise ModelFileError(f"not a readable ONNX network ({type(exc).__name__}: {exc})", path) from exc
        self.input = self.session.get_inputs()[0].name
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ModelFileError(f"no kidneyseg stage settings in its metadata ({METADATA_KEY}); export it with "
                                 "'kidneyseg export'", path)
        self.stage_dict = json.loads(meta[METADATA_KEY])

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(image.detach().float().cpu().numpy())
        return torch.from_numpy(self.session.run(None, {self.input: array})[0])

    def eval(self) -> OnnxNetwork:
        return self
