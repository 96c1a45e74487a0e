"""Training-step and inference time of one stage's network: fp32 vs bf16, default vs channels-last.

    .venv/bin/python benchmarks/train_speed.py [--preset small] [--stage segmenter] [--steps 6]

One step is ``fit``'s own ``train_step`` on one sample: forward (autocast as set), the stage's
loss, backward, Adam. The four variants take turns, step by step, so that a machine that slows down or speeds up
during the run affects them alike; the first step of each is a warm-up and is not counted. Prints
the median step and inference times and their speed-ups over fp32 with the default layout. What
training and inference use: channels-last on CPUs (``kidneyseg.model.place``), the preset's precision.
Freed memory is kept for reuse as ``fit`` keeps it (kidneyseg.allocator; ``KIDNEYSEG_SYSTEM_MALLOC=1``
times glibc's own behaviour instead).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from kidneyseg.allocator import keep_freed_memory
from kidneyseg.config import preset
from kidneyseg.model import place
from kidneyseg.training.fit import train_step
from kidneyseg.training.losses import make_loss
from kidneyseg.weights import autocast, build_model

VARIANTS = [(precision, layout) for precision in ("fp32", "bf16") for layout in ("default", "channels-last")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--stage", default="segmenter", choices=("localizer", "segmenter"))
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant, after one warm-up")
    args = parser.parse_args()
    print(f"freed memory kept for reuse: {keep_freed_memory()}")
    stage = preset(args.preset).stage(args.stage)
    size = stage.input_size
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, *size, generator=generator)
    y = torch.randint(0, stage.network.num_classes, (1, 1, *size), generator=generator)
    loss_fn = make_loss(stage)
    nets, optimizers = {}, {}
    for variant in VARIANTS:
        torch.manual_seed(0)
        net = build_model(stage)
        nets[variant] = place(net, "cpu") if variant[1] == "channels-last" else net
        optimizers[variant] = torch.optim.Adam(nets[variant].parameters(), lr=stage.lr)
    train = {v: [] for v in VARIANTS}
    for _ in range(args.steps + 1):
        for variant in VARIANTS:
            start = time.perf_counter()
            train_step(nets[variant].train(), optimizers[variant], loss_fn, x, y, variant[0], "cpu")
            train[variant].append(time.perf_counter() - start)
    infer = {v: [] for v in VARIANTS}
    with torch.inference_mode():
        for _ in range(args.steps + 1):
            for variant in VARIANTS:
                start = time.perf_counter()
                with autocast(variant[0], "cpu"):
                    nets[variant].eval()(x).argmax(1)
                infer[variant].append(time.perf_counter() - start)
    print(f"{args.preset} {args.stage}: input {size}, base {stage.network.base_filters}, "
          f"{torch.get_num_threads()} threads, median of {args.steps} steps (preset precision {stage.precision})")
    print(f"{'precision':<10}{'layout':<15}{'train step s':>13}{'speed-up':>9}{'inference s':>13}{'speed-up':>9}")
    base_train = statistics.median(train[VARIANTS[0]][1:])
    base_infer = statistics.median(infer[VARIANTS[0]][1:])
    for variant in VARIANTS:
        t, i = statistics.median(train[variant][1:]), statistics.median(infer[variant][1:])
        print(f"{variant[0]:<10}{variant[1]:<15}{t:>13.3f}{base_train / t:>9.2f}{i:>13.3f}{base_infer / i:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
