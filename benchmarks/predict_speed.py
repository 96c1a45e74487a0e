"""End-to-end prediction time and peak memory on one KiTS-sized CT, against a sliding-window peer.

    .venv/bin/python benchmarks/predict_speed.py [--shape 512 512 300] [--spacing 0.8 0.8 1.5]
                                                 [--precision fp32 bf16] [--peer] [--flops] [--device cuda]

A phantom CT of the given size is written as .nii.gz, a model directory with untrained ``paper``
networks is created, and ``kidneyseg.segment`` runs the full path once per ``--precision``: read
and validate the file, normalise, localizer pass, kidney boxes, segmenter pass per box, paste,
clean up, write. Untrained weights are fine for timing, except that an untrained localizer finds
random "kidneys"; so the localizer here runs its real network (timed) and then reports the
phantom's true kidney mask at its 128^3 input size, as a trained localizer would. Everything else
is the production code path. Prints per precision: end-to-end time, network time, their ratio.

``--peer``: the single-stage sliding-window baseline a MONAI or nnU-Net user would run for KiTS19,
on the same file, untrained: MONAI ``DynUNet`` with nnU-Net's KiTS19 3d_fullres configuration
(filters 32-320 over 6 levels, 3 x 3 x 3 kernels, instance norm), the CT resampled (trilinear) to
1.62 x 1.62 x 3.22 mm, clipped and z-scored, MONAI ``sliding_window_inference`` with 160 x 160 x 80
patches, 50 % overlap and Gaussian weighting, the class probabilities resampled back to the CT's
grid, argmax, written. In fp32; timed read -> write like kidneyseg.

``--flops``: the machine's matmul peak (4096² fp32 and bf16 products) and each network's counted
operations per pass (torch's FlopCounterMode), hence the GFLOP/s the passes above achieved.

``segment`` keeps freed memory for reuse (kidneyseg.allocator); ``KIDNEYSEG_SYSTEM_MALLOC=1`` times
glibc's own behaviour instead. The peak RSS is measured in this process: for a memory figure run one
precision without ``--peer`` (the peer's peak would count too).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kidneyseg import io
from kidneyseg.allocator import keep_freed_memory
from kidneyseg.config import preset, to_json
from kidneyseg.geometry import resize_labels
from kidneyseg.inference import TwoStageModel, segment
from kidneyseg.preprocess import normalize_ct
from kidneyseg.synthetic import make_phantom
from kidneyseg.weights import build_model, supported_precision

# nnU-Net's KiTS19 3d_fullres plan (Isensee et al.), in this project's (X, Y, Z) axis order.
PEER_SPACING_MM = (1.62, 1.62, 3.22)
PEER_PATCH = (160, 160, 80)
PEER_FILTERS = (32, 64, 128, 256, 320, 320)
PEER_STRIDES = ((1, 1, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2))


class OracleLocalizer(torch.nn.Module):
    """Runs the real (untrained) network for timing, then answers with the true mask's logits."""

    def __init__(self, net: torch.nn.Module, truth_at_input: np.ndarray):
        super().__init__()
        self.net = net
        onehot = np.stack([truth_at_input == 0, truth_at_input > 0]).astype(np.float32) * 20 - 10
        self.logits = torch.from_numpy(onehot)[None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return self.logits.to(device=out.device, dtype=out.dtype)


class Counted(torch.nn.Module):
    """A network that counts its forward passes."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net, self.passes = net, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.passes += 1
        return self.net(x)


def write_phantom(work: Path, shape, spacing, input_size, seed: int) -> None:
    """Runs in a child process so that making the phantom does not count in this process's peak memory."""
    ct, labels = make_phantom(np.random.default_rng(seed), tuple(shape), tuple(spacing))
    io.save_nifti(ct, np.diag([*spacing, 1.0]), work / "ct.nii.gz")
    np.save(work / "truth_small.npy", resize_labels(labels, input_size))
    print(f"CT {tuple(shape)} at {tuple(spacing)} mm; kidneys+tumour {np.count_nonzero(labels):,} voxels")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def peer_network() -> torch.nn.Module:
    from monai.networks.nets import DynUNet

    return DynUNet(spatial_dims=3, in_channels=1, out_channels=3, kernel_size=[3] * len(PEER_STRIDES),
                   strides=PEER_STRIDES, upsample_kernel_size=PEER_STRIDES[1:], filters=PEER_FILTERS,
                   norm_name="instance", res_block=False).eval()


@torch.inference_mode()
def run_peer(ct_path: Path, out_path: Path, net: Counted) -> dict[str, float]:
    """The sliding-window baseline, read -> write (see the module docstring): seconds and passes."""
    from monai.inferers import sliding_window_inference

    start = time.perf_counter()
    volume = io.load_ct(ct_path)
    shape = volume.array.shape
    target = tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, volume.spacing_mm, PEER_SPACING_MM, strict=True))
    x = torch.from_numpy(normalize_ct(volume.array, -79.0, 304.0))[None, None]  # nnU-Net's KiTS19 window
    x = F.interpolate(x, size=target, mode="trilinear", align_corners=False)
    network_start = time.perf_counter()
    probs = sliding_window_inference(x, PEER_PATCH, 1, net, overlap=0.5, mode="gaussian")
    network = time.perf_counter() - network_start
    # Probabilities back to the CT's grid, then argmax (MONAI's Invertd / nnU-Net's export do the same).
    labels = F.interpolate(probs, size=shape, mode="trilinear", align_corners=False)[0].argmax(0).to(torch.uint8)
    io.save_label_map(labels.numpy(), volume, out_path)
    return {"total": time.perf_counter() - start, "network": network, "passes": net.passes,
            "grid": target}


def network_flops(net: torch.nn.Module, size: tuple[int, int, int]) -> float:
    """Floating-point operations of one forward pass at ``size`` (torch's count: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        net(torch.zeros(1, 1, *size))
    return float(counter.get_total_flops())


def matmul_peak(dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    """Best GFLOP/s of an n x n matmul on this machine's threads."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300])
    parser.add_argument("--spacing", type=float, nargs=3, default=[0.8, 0.8, 1.5])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--precision", nargs="+", choices=("fp32", "bf16", "fp16"), default=["fp32"])
    parser.add_argument("--device", default="cpu", help="torch device of the networks, e.g. cuda")
    parser.add_argument("--repeat", type=int, default=1,
                        help="predictions per precision; the last is reported (2 on a GPU: the first warms up)")
    parser.add_argument("--peer", action="store_true", help="also time the sliding-window DynUNet baseline")
    parser.add_argument("--flops", action="store_true", help="matmul peak and the networks' achieved GFLOP/s")
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
    loc_net = build_model(chosen.localizer).eval()
    seg_net = build_model(chosen.segmenter).eval()
    (work / "pipeline.json").write_text(to_json(chosen.pipeline))
    rss_before = peak_rss_gib()
    print(f"threads {torch.get_num_threads()}, preset {args.preset}, device {args.device}, freed memory kept for "
          f"reuse: {keep_freed_memory()}")
    times = {}
    for precision in args.precision:
        used = supported_precision(precision, args.device)
        loc_cfg, seg_cfg = (replace(s, precision=used) for s in (chosen.localizer, chosen.segmenter))
        model = TwoStageModel(OracleLocalizer(loc_net, truth_small), loc_cfg, seg_net, seg_cfg, chosen.pipeline,
                              args.device)
        for _ in range(args.repeat):
            start = time.perf_counter()
            result = segment(work / "ct.nii.gz", model)
            result.save(work / f"pred-{precision}.nii.gz")
            total = time.perf_counter() - start
        network = result.timings["network"]
        times[precision] = (total, network, len(result.boxes))
        print(f"kidneyseg {used}: end-to-end {total:.1f} s (read -> write), network passes "
              f"{1 + len(result.boxes)} in {network:.1f} s, ratio {total / network:.2f} (target <= 1.2); boxes "
              f"{[b.size_vox for b in result.boxes]}")
    if "fp32" in times and "bf16" in times:
        print(f"bf16 end to end {times['fp32'][0] / times['bf16'][0]:.2f}x faster than fp32 (target >= 1.8)")
    print(f"peak RSS {peak_rss_gib():.2f} GiB (before predicting {rss_before:.2f} GiB; "
          "target <= 3 at 512 x 512 x 1000)")
    peer = None
    if args.peer:
        peer = run_peer(work / "ct.nii.gz", work / "peer.nii.gz", Counted(peer_network()))
        print(f"peer (DynUNet, sliding window) fp32: end-to-end {peer['total']:.1f} s, {peer['passes']} network "
              f"passes in {peer['network']:.1f} s on the {peer['grid']} grid")
        for precision, (total, _, _) in times.items():
            print(f"  peer / kidneyseg {precision}: {peer['total'] / total:.1f}x (target >= 8)")
    if args.flops:
        for dtype in (torch.float32, torch.bfloat16):
            print(f"matmul peak {str(dtype).removeprefix('torch.')}: {matmul_peak(dtype):.0f} GFLOP/s")
        per_pass = {"localizer": network_flops(loc_net, chosen.localizer.input_size),
                    "segmenter": network_flops(seg_net, chosen.segmenter.input_size)}
        for precision, (_, network, boxes) in times.items():
            flops = per_pass["localizer"] + boxes * per_pass["segmenter"]
            print(f"kidneyseg {precision}: {flops / 1e9:.0f} GFLOP in the passes, {flops / network / 1e9:.0f} GFLOP/s")
        if peer is not None:
            flops = peer["passes"] * network_flops(peer_network(), PEER_PATCH)
            print(f"peer fp32: {flops / 1e9:.0f} GFLOP in the passes, {flops / peer['network'] / 1e9:.0f} GFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
