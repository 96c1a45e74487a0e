"""PyTorch against ONNX Runtime on the same model and cases: label agreement and time per case.

    .venv/bin/python benchmarks/backends.py MODEL_DIR DATA_DIR

MODEL_DIR is a PyTorch model directory (``kidneyseg train`` / ``demo``); it is exported to ONNX in a
temporary folder (``kidneyseg.export.export_onnx``). Every CT of the KiTS-layout DATA_DIR (a demo's
``heldout`` folder, say) is segmented by both backends through ``segment``, PyTorch in fp32 (ONNX
Runtime runs fp32); prints each case's kidney+tumour Dice between the two label maps, the mean, and
each backend's mean time per case (read once, excluded). Timings need a quiet machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from kidneyseg import io
from kidneyseg.evaluation import case_scores
from kidneyseg.export import export_onnx
from kidneyseg.inference import load_model_dir, segment


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("data_dir", type=Path)
    args = parser.parse_args()
    onnx_dir = export_onnx(args.model_dir, Path(tempfile.mkdtemp(prefix="kidneyseg-onnx-")) / "model")
    models = {"torch": load_model_dir(args.model_dir, precision="fp32"),
              "onnxruntime": load_model_dir(onnx_dir, backend="onnxruntime")}
    seconds = {name: [] for name in models}
    agreement = []
    for case in io.layout.kits_cases(args.data_dir, need_labels=False):
        image = io.load_ct(case.image)
        labels = {}
        for name, model in models.items():
            start = time.perf_counter()
            labels[name] = segment(image, model).labels
            seconds[name].append(time.perf_counter() - start)
        dice = case_scores(labels["onnxruntime"], labels["torch"])["kidney_tumor"]
        agreement.append(dice)
        print(f"{case.case_id}: kidney+tumour Dice between the backends {dice:.4f}")
    print(f"mean Dice between the backends {np.mean(agreement):.4f} (lowest {np.min(agreement):.4f}) over "
          f"{len(agreement)} cases")
    for name, values in seconds.items():
        print(f"{name}: {np.mean(values):.2f} s per case")
    print(f"onnxruntime / torch time: {np.mean(seconds['onnxruntime']) / np.mean(seconds['torch']):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
