"""Training throughput per preset and stage: the bare network step, fit's real step with and without
input worker processes, the share of a step spent waiting for data, and the input pipeline alone.

    .venv/bin/python benchmarks/train_throughput.py [--data DIR] [--cases 12] [--draws 24] [--paper-draws 6]
        [--presets small paper] [--stages localizer segmenter] [--device cpu] [--workers N]
        [--precisions fp32 bf16] [--compile]

For each preset and stage, from one run on this machine:
- bare step: ``train_step`` on as many draws as a timed epoch, prepared beforehand and held on the device
  (mean after a warm-up, as the real step is a mean), the network's
  cost, in the preset's precision and in each of ``--precisions`` (and compiled, with ``--compile``);
- real step: ``fit``'s own loop over a cache of ``--cases`` training cases, with ``--workers 0`` (inputs
  prepared in the training process, the default on a CPU) and with ``--workers N`` processes
  (default: 1 on a CPU, the GPU default otherwise); the second of two epochs of ``--draws`` draws
  is timed (the first warms up), from the run's log.csv (``step_s``, ``data_wait_s``: seconds per
  draw the loop waited for its input); on a GPU also its peak memory;
- input alone: one draw's input work (cache read, the one interpolation, labels, intensity
  augmentation) on one thread, and the draws per second one core prepares, so that a GPU user can
  read how many workers one GPU step needs.
DATA defaults to the accuracy benchmark's rendered training cases (KiTS19 geometry), else phantoms
are synthesised. Nothing else may run on the machine meanwhile: every number is a time.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from kidneyseg import io
from kidneyseg.config import override_preset, preset
from kidneyseg.model import place
from kidneyseg.training.cache import build_cache
from kidneyseg.training.data import Draws
from kidneyseg.training.fit import default_workers, draw_order, fit, make_optimizer, split_samples, train_step
from kidneyseg.training.losses import make_loss
from kidneyseg.weights import build_model

HERE = Path(__file__).resolve().parent
RENDERED = HERE / ".work" / "accuracy" / "train"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help=f"KiTS-layout training cases (default {RENDERED} if present)")
    parser.add_argument("--cases", type=int, default=12, help="cases to cache and draw from")
    parser.add_argument("--draws", type=int, default=24, help="draws per timed epoch (small preset)")
    parser.add_argument("--paper-draws", type=int, default=6, help="draws per timed epoch (paper preset)")
    parser.add_argument("--work", type=Path, help="folder for caches and runs (default: a temporary one)")
    parser.add_argument("--presets", nargs="+", default=["small", "paper"], choices=("small", "paper"))
    parser.add_argument("--stages", nargs="+", default=["localizer", "segmenter"], choices=("localizer", "segmenter"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, help="worker processes to compare with 0 (default: 1 on a CPU, "
                        "kidneyseg's default on a GPU)")
    parser.add_argument("--precisions", nargs="*", default=[], choices=("fp32", "bf16", "fp16"),
                        help="also time the bare step in these precisions")
    parser.add_argument("--compile", action="store_true", help="also time the bare step through torch.compile")
    args = parser.parse_args()
    workers = args.workers if args.workers is not None else (1 if args.device == "cpu" else default_workers("cuda"))
    work = args.work or Path(tempfile.mkdtemp(prefix="kidneyseg-throughput-"))
    data = subset(args.data or (RENDERED if RENDERED.exists() else synthesize(work)), work / "data", args.cases)
    rows = []
    for name in args.presets:
        draws = args.paper_draws if name == "paper" else args.draws
        for stage_name in args.stages:
            rows.append(measure(name, stage_name, data, work / f"{name}-{stage_name}", draws, args.device, workers,
                                args.precisions, args.compile))
    print(f"\n{args.device}, {torch.get_num_threads()} threads for the network, data {data} ({args.cases} cases)")
    print(f"| preset / stage | input | bare step s | real step s, workers 0 (data wait) | real step s, workers "
          f"{workers} (data wait) | real / bare, workers 0 / {workers} | input work s per draw, 1 core | "
          "draws/s per core | peak GPU memory GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['size']}³ | {r['bare']:.3f} | {r['real0']:.3f} ({r['wait0'] / r['real0']:.0%}) | "
              f"{r['realw']:.3f} ({r['waitw'] / r['realw']:.0%}) | {r['real0'] / r['bare']:.2f} / "
              f"{r['realw'] / r['bare']:.2f} | {r['input']:.3f} | {1 / r['input']:.1f} | {r['peak_gib']} |")
    if any(r["variants"] for r in rows):
        print("\n| preset / stage | bare step variant | s | speed-up over the preset's own |")
        print("|---|---|---|---|")
        for r in rows:
            for variant, seconds in r["variants"].items():
                print(f"| {r['name']} | {variant} | {seconds:.4f} | {r['bare'] / seconds:.2f} |")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def synthesize(work: Path) -> Path:
    from kidneyseg.synthetic import synthesize_dataset

    synthesize_dataset(work / "phantoms", 12, seed=0, progress=False)
    return work / "phantoms"


def subset(source: Path, target: Path, count: int) -> Path:
    """The first ``count`` cases of ``source``, linked into ``target`` (nothing is copied)."""
    target.mkdir(parents=True, exist_ok=True)
    for case in io.layout.kits_cases(source)[:count]:
        link = target / case.case_id
        if not link.exists():
            link.symlink_to(case.image.parent.resolve(), target_is_directory=True)
    return target


def measure(name: str, stage_name: str, data: Path, work: Path, draws: int, device: str, workers: int,
            precisions: list[str], compile: bool) -> dict:
    stage, pipeline = override_preset(preset(name), stage_name, [
        f"samples_per_epoch={draws}", "epochs=2", "val_every=2", "val_fraction=0.1", "max_minutes=0"])
    cache = work / "cache" / stage_name
    samples = build_cache(io.layout.kits_cases(data), cache, stage, pipeline)
    input_s = input_work(samples, stage, draws)
    bare = bare_step(samples, stage, device, draws)
    variants = {p: bare_step(samples, replace(stage, precision=p), device, draws) for p in precisions}
    if compile:
        variants[f"{stage.precision}, torch.compile"] = bare_step(samples, stage, device, draws, compiled=True)
    real, peak = {}, "-"
    for count in (0, workers):
        run = work / f"run-w{count}"
        run.mkdir(parents=True, exist_ok=True)
        if not (run / "cache").exists():
            (run / "cache").symlink_to((work / "cache").resolve(), target_is_directory=True)
        if device != "cpu":
            torch.cuda.reset_peak_memory_stats()
        fit(data, run, stage, pipeline, overwrite=True, workers=count, progress=False, device=device)
        if device != "cpu":
            peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f}"
        with open(run / stage_name / "log.csv") as handle:
            last = list(csv.DictReader(handle))[-1]
        real[count] = (float(last["step_s"]), float(last["data_wait_s"]))
    print(f"{name} {stage_name}: bare {bare:.3f} s, real {real[0][0]:.3f} s (workers 0), {real[workers][0]:.3f} s "
          f"(workers {workers}), input {input_s:.3f} s per draw on one thread", flush=True)
    return {"name": f"{name} {stage_name}", "size": stage.input_size[0], "bare": bare, "real0": real[0][0],
            "wait0": real[0][1], "realw": real[workers][0], "waitw": real[workers][1], "input": input_s,
            "variants": variants, "peak_gib": peak}


def input_work(samples, stage, draws: int) -> float:
    """Median seconds per draw of the input work on one thread (each draw's cache pages read once before)."""
    order = draw_order(samples, stage, np.random.RandomState([stage.seed, 0]))[:draws]
    dataset = Draws(samples, order, stage, 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        for k in range(len(dataset)):
            dataset[k]  # warm the page cache: a worker's reads hit memory after the first epoch
            start = time.perf_counter()
            item = dataset[k]
            times.append(time.perf_counter() - start)
            if isinstance(item, str):
                raise RuntimeError(item)
    finally:
        torch.set_num_threads(threads)
    return statistics.median(times)


def bare_step(samples, stage, device: str, draws: int = 4, compiled: bool = False) -> float:
    """Mean seconds of ``train_step`` over the inputs of ``draws`` draws of an epoch (as many as the real
    step's timed epoch), prepared beforehand and held on ``device``, after warm-up steps: the network's
    share of the real step, averaged the same way (one sample repeated gives a median a few per cent
    off the mean over draws: step times spread by about +-15 % on 2 cores)."""
    train, _ = split_samples(samples, stage.val_fraction, stage.seed)  # fit draws from these
    order = draw_order(train, stage, np.random.RandomState([stage.seed, 1]))[:draws]
    dataset = Draws(train, order, stage, 1)
    inputs = []
    for k in range(len(dataset)):
        item = dataset[k]
        if isinstance(item, str):
            raise RuntimeError(item)
        inputs.append(tuple(t[None].to(device) for t in item))
    torch.manual_seed(0)
    net = place(build_model(stage), device)
    optimizer, loss_fn = make_optimizer(net, stage), make_loss(stage)
    model = torch.compile(net) if compiled else net
    scaler = torch.amp.GradScaler("cuda") if stage.precision == "fp16" else None
    times = []
    for x, y in inputs[:3 if compiled else 1] + inputs:
        start = time.perf_counter()
        train_step(model.train(), optimizer, loss_fn, x, y, stage.precision, device, stage.deep_supervision_loss,
                   scaler)
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.mean(times[-len(inputs):])


if __name__ == "__main__":
    sys.exit(main())
