"""End-to-end prediction time and peak memory on one KiTS-sized CT with the ``paper`` preset.

    .venv/bin/python benchmarks/predict_speed.py [--shape 512 512 300] [--spacing 0.8 0.8 1.5]

A phantom CT of the given size is written as .nii.gz, a model directory with untrained
``paper`` networks is created, and ``kidneyseg.segment`` runs the full path: read and validate
the file, normalise, localizer pass, kidney boxes, segmenter pass per box, paste, clean up,
write. Untrained weights are fine for timing, except that an untrained localizer finds random
"kidneys"; so the localizer here runs its real network (timed) and then reports the phantom's
true kidney mask at its 128^3 input size, as a trained localizer would. Everything else is
the production code path. Prints: end-to-end time, network time, their ratio, peak RSS.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kidneyseg import io
from kidneyseg.config import preset, to_json
from kidneyseg.geometry import resize_labels
from kidneyseg.inference import TwoStageModel, segment
from kidneyseg.synthetic import make_phantom
from kidneyseg.training.checkpoint import build_model


class OracleLocalizer(torch.nn.Module):
    """Runs the real (untrained) network for timing, then answers with the true mask's logits."""

    def __init__(self, net: torch.nn.Module, truth_at_input: np.ndarray):
        super().__init__()
        self.net = net
        onehot = np.stack([truth_at_input == 0, truth_at_input > 0]).astype(np.float32) * 20 - 10
        self.logits = torch.from_numpy(onehot)[None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.net(x)
        return self.logits


def write_phantom(work: Path, shape, spacing, input_size, seed: int) -> None:
    """Runs in a child process so that making the phantom does not count in this process's peak memory."""
    ct, labels = make_phantom(np.random.default_rng(seed), tuple(shape), tuple(spacing))
    io.save_nifti(ct, np.diag([*spacing, 1.0]), work / "ct.nii.gz")
    np.save(work / "truth_small.npy", resize_labels(labels, input_size))
    print(f"CT {tuple(shape)} at {tuple(spacing)} mm; kidneys+tumour {np.count_nonzero(labels):,} voxels")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300])
    parser.add_argument("--spacing", type=float, nargs=3, default=[0.8, 0.8, 1.5])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    chosen = preset(args.preset)
    work = Path(tempfile.mkdtemp(prefix="kidneyseg-bench-"))
    child = multiprocessing.get_context("spawn").Process(
        target=write_phantom, args=(work, args.shape, args.spacing, chosen.localizer.input_size, args.seed))
    child.start()
    child.join()
    truth_small = np.load(work / "truth_small.npy")
    loc = OracleLocalizer(build_model(chosen.localizer).eval(), truth_small)
    seg = build_model(chosen.segmenter).eval()
    model = TwoStageModel(loc, chosen.localizer, seg, chosen.segmenter, chosen.pipeline)
    (work / "pipeline.json").write_text(to_json(chosen.pipeline))
    rss_before = peak_rss_gib()
    start = time.perf_counter()
    result = segment(work / "ct.nii.gz", model)
    result.save(work / "pred.nii.gz")
    total = time.perf_counter() - start
    network = result.timings["network"]
    print(f"threads {torch.get_num_threads()}, boxes {len(result.boxes)}: "
          f"{[b.size_vox for b in result.boxes]}")
    print(f"end-to-end {total:.1f} s (read -> write), network passes {network:.1f} s, "
          f"ratio {total / network:.2f} (target <= 1.5)")
    print(f"peak RSS {peak_rss_gib():.2f} GiB (before predicting {rss_before:.2f} GiB; target < 4)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
