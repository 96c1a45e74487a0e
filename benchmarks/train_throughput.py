"""Training throughput per preset and stage: the bare network step, fit's real step with and without
input worker processes, the share of a step spent waiting for data, and the input pipeline alone.

    .venv/bin/python benchmarks/train_throughput.py [--data DIR] [--cases 12] [--draws 24] [--paper-draws 6]
                                                    [--presets small paper] [--stages localizer segmenter]

For each of the ``small`` and ``paper`` presets and each stage, from one run on this machine:
- bare step: ``train_step`` on one sample held in memory (median after a warm-up), the network's cost;
- real step: ``fit``'s own loop over a cache of ``--cases`` training cases, with ``--workers 0`` (inputs
  prepared in the training process, the default on a CPU) and with 1 worker process; the second of two
  epochs of ``--draws`` draws is timed (the first warms up), from the run's log.csv (``step_s``,
  ``data_wait_s``: seconds per draw the loop waited for its input);
- input alone: one draw's input work (cache read, the one interpolation, labels, intensity
  augmentation) on one thread, and the samples per second one core prepares, so that a GPU user can
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
from pathlib import Path

import numpy as np
import torch

from kidneyseg import io
from kidneyseg.config import override_preset, preset
from kidneyseg.model import place
from kidneyseg.training.cache import build_cache
from kidneyseg.training.data import Draws
from kidneyseg.training.fit import draw_order, fit, make_optimizer, train_step
from kidneyseg.training.losses import make_loss
from kidneyseg.weights import build_model

HERE = Path(__file__).resolve().parent
RENDERED = HERE / ".work" / "accuracy" / "train"
DEVICE = "cpu"
WORKERS = 1  # compared with 0: on a CPU the default is 0 (kidneyseg.training.fit.default_workers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help=f"KiTS-layout training cases (default {RENDERED} if present)")
    parser.add_argument("--cases", type=int, default=12, help="cases to cache and draw from")
    parser.add_argument("--draws", type=int, default=24, help="draws per timed epoch (small preset)")
    parser.add_argument("--paper-draws", type=int, default=6, help="draws per timed epoch (paper preset)")
    parser.add_argument("--work", type=Path, help="folder for caches and runs (default: a temporary one)")
    parser.add_argument("--presets", nargs="+", default=["small", "paper"], choices=("small", "paper"))
    parser.add_argument("--stages", nargs="+", default=["localizer", "segmenter"], choices=("localizer", "segmenter"))
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="kidneyseg-throughput-"))
    data = subset(args.data or (RENDERED if RENDERED.exists() else synthesize(work)), work / "data", args.cases)
    rows = []
    for name in args.presets:
        draws = args.paper_draws if name == "paper" else args.draws
        for stage_name in args.stages:
            rows.append(measure(name, stage_name, data, work / f"{name}-{stage_name}", draws))
    threads = torch.get_num_threads()
    print(f"\n{threads} threads for the network, data {data} ({args.cases} cases)")
    print("| preset / stage | input | bare step s | real step s, workers 0 (data wait) | real step s, workers "
          f"{WORKERS} (data wait) | real / bare, workers 0 / {WORKERS} | input work s per draw, 1 core | "
          "draws/s per core |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['size']}³ | {r['bare']:.3f} | {r['real0']:.3f} ({r['wait0'] / r['real0']:.0%}) | "
              f"{r['realw']:.3f} ({r['waitw'] / r['realw']:.0%}) | {r['real0'] / r['bare']:.2f} / "
              f"{r['realw'] / r['bare']:.2f} | {r['input']:.3f} | {1 / r['input']:.1f} |")
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


def measure(name: str, stage_name: str, data: Path, work: Path, draws: int) -> dict:
    stage, pipeline = override_preset(preset(name), stage_name, [
        f"samples_per_epoch={draws}", "epochs=2", "val_every=2", "val_fraction=0.1", "max_minutes=0"])
    cache = work / "cache" / stage_name
    samples = build_cache(io.layout.kits_cases(data), cache, stage, pipeline)
    input_s = input_work(samples, stage, draws)
    bare = bare_step(samples, stage)
    real = {}
    for workers in (0, WORKERS):
        run = work / f"run-w{workers}"
        run.mkdir(parents=True, exist_ok=True)
        if not (run / "cache").exists():
            (run / "cache").symlink_to((work / "cache").resolve(), target_is_directory=True)
        fit(data, run, stage, pipeline, overwrite=True, workers=workers, progress=False)
        with open(run / stage_name / "log.csv") as handle:
            last = list(csv.DictReader(handle))[-1]
        real[workers] = (float(last["step_s"]), float(last["data_wait_s"]))
    w = WORKERS
    print(f"{name} {stage_name}: bare {bare:.3f} s, real {real[0][0]:.3f} s (workers 0), {real[w][0]:.3f} s "
          f"(workers {w}), input {input_s:.3f} s per draw on one thread", flush=True)
    return {"name": f"{name} {stage_name}", "size": stage.input_size[0], "bare": bare, "real0": real[0][0],
            "wait0": real[0][1], "realw": real[w][0], "waitw": real[w][1], "input": input_s}


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


def bare_step(samples, stage, steps: int = 4) -> float:
    """Median seconds of ``train_step`` on one in-memory sample, after one warm-up step."""
    image, label = Draws(samples, np.zeros(1, int), stage, 0)[0]
    x, y = image[None], label[None]
    torch.manual_seed(0)
    net = place(build_model(stage), "cpu")
    optimizer, loss_fn = make_optimizer(net, stage), make_loss(stage)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        train_step(net.train(), optimizer, loss_fn, x, y, stage.precision, "cpu", stage.deep_supervision_loss)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


if __name__ == "__main__":
    sys.exit(main())
