"""Batches above 1 and training on several processes (DistributedDataParallel under torchrun, gloo on CPU)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MICRO, micro_stage
from safetensors.torch import load_file

from kidneyseg.config import preset
from kidneyseg.errors import UsageError
from kidneyseg.training.checkpoint import load_state
from kidneyseg.training.distributed import SINGLE, Ranks
from kidneyseg.training.fit import fit, rank_draws
from kidneyseg.training.losses import make_loss


def test_each_rank_takes_its_block_of_every_global_batch():
    assert rank_draws(8, 2, Ranks(0, 2)) == [[0, 1], [4, 5]]
    assert rank_draws(8, 2, Ranks(1, 2)) == [[2, 3], [6, 7]]
    assert rank_draws(9, 2, Ranks(1, 2)) == [[2, 3], [6, 7]]  # the incomplete last global batch is dropped
    assert rank_draws(5, 2, SINGLE) == [[0, 1], [2, 3], [4]]  # one process keeps it


@pytest.mark.parametrize("loss", ["dice", "dice_ce", "dice_wce", "regions"])
def test_the_loss_of_a_batch_is_the_mean_of_its_samples(loss):
    """Dice per sample, averaged: what makes a batch split across ranks train as on one device.
    Pooled over the batch, the two samples below (one easy, one hard) would give another value."""
    stage = replace(preset("paper").segmenter, loss=loss, class_weights=(0.01, 0.14, 0.85))
    fn = make_loss(stage)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, stage.out_channels, 8, 8, 8, generator=generator)
    target = torch.zeros(2, 1, 8, 8, 8, dtype=torch.long)
    target[0, :, 2:6, 2:6, 2:6] = 1
    target[1, :, 3:5, 3:5, 3:5] = 2
    both = fn(logits, target)
    each = (fn(logits[:1], target[:1]) + fn(logits[1:], target[1:])) / 2
    assert both.item() == pytest.approx(each.item(), rel=1e-5)


def test_a_batch_of_two_trains_and_counts_its_draws(phantom_dir, tmp_path):
    result = fit(phantom_dir, tmp_path, micro_stage("segmenter", "epochs=1", "batch_size=2"), preset("tiny").pipeline,
                 progress=False, workers=0)
    log = (result.run_dir / "log.csv").read_text().splitlines()
    assert log[1].split(",")[log[0].split(",").index("samples")] == "8"


def test_fp16_is_refused_on_a_cpu_before_any_work(phantom_dir, tmp_path):
    with pytest.raises(UsageError, match="fp16"):
        fit(phantom_dir, tmp_path, micro_stage("segmenter", "precision=fp16"), preset("tiny").pipeline,
            progress=False)
    assert not (tmp_path / "segmenter").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(phantom_dir: Path, out: Path, *extra: str, ranks: int = 1, epochs: int = 2, wait: bool = True):
    settings = [*MICRO, "network.dropout=0.0", "intensity_prob=0.5", "precision=fp32"]
    sets = [arg for item in settings if not item.startswith("epochs") for arg in ("--set", item)]
    args = ["-m", "kidneyseg", "train", str(phantom_dir), "--stage", "segmenter", "--preset", "tiny", "--out",
            str(out), "--epochs", str(epochs), "--workers", "0", *sets, *extra]
    if ranks > 1:
        args = ["-m", "torch.distributed.run", f"--nproc_per_node={ranks}", f"--master_port={_free_port()}",
                *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "segmenter" / "last.safetensors"))


def test_two_gloo_ranks_train_as_one_process_with_the_same_global_batch(phantom_dir, tmp_path):
    """2 ranks x batch 1 against 1 process x batch 2: the same draws, the same loss, the same weights
    (to float tolerance: the ranks' gradients are averaged in another order), the same validation.
    With SGD: Adam's first steps turn float noise in near-zero gradients into whole learning-rate
    steps (m / sqrt(v) = +-1), which would hide a real difference behind that noise."""
    sgd = ("--set", "optimizer=sgd", "--set", "lr=0.01")
    _train(phantom_dir, tmp_path / "one", "--set", "batch_size=2", *sgd)
    proc = _train(phantom_dir, tmp_path / "two", "--set", "batch_size=1", *sgd, ranks=2)
    assert proc.stdout.count("segmenter: 2 epochs") == 1  # one line, from rank 0
    # Float noise alone moves these weights by about 2e-4 after 8 steps (the same single-process run
    # on 1 and on 2 threads); summed instead of averaged gradients, or other draws, move them by 1e-2.
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    worst = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert worst < 2e-3, worst
    rows = [(tmp_path / run / "segmenter" / "log.csv").read_text().splitlines() for run in ("one", "two")]
    header = rows[0][0].split(",")
    first = [float(r[1].split(",")[header.index("train_loss")]) for r in rows]
    assert first[0] == pytest.approx(first[1], rel=1e-5)  # the first epoch's losses: the same draws
    for column, tolerance in (("train_loss", 1e-3), ("val_dice", 1e-2), ("samples", 0)):
        a, b = (float(r[-1].split(",")[header.index(column)]) for r in rows)
        assert abs(a - b) <= tolerance * max(1.0, abs(a)), column


def test_two_ranks_resume_exactly(phantom_dir, tmp_path):
    _train(phantom_dir, tmp_path / "straight", ranks=2, epochs=2)
    _train(phantom_dir, tmp_path / "stopped", ranks=2, epochs=1)
    _train(phantom_dir, tmp_path / "stopped", "--resume", ranks=2, epochs=2)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "stopped")
    assert all(torch.equal(a[k], b[k]) for k in a)


_THREADS_AFTER_FIT = """
import os, sys
sys.path.insert(0, {tests!r})
from conftest import micro_stage
from kidneyseg.config import preset
from kidneyseg.training.fit import fit
fit({data!r}, {out!r}, micro_stage("segmenter", "epochs=1", "precision=fp32"), preset("tiny").pipeline,
    progress=False, workers=0)
task = f"/proc/{{os.getpid()}}/task"
names = sorted(open(f"{{task}}/{{t}}/comm").read().strip() for t in os.listdir(task))
# one file per rank: the two ranks' prints to torchrun's shared stdout can interleave within a line
with open(os.path.join({threads!r}, "rank" + os.environ["RANK"]), "w") as f:
    f.write(repr(names))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread names from Linux's /proc")
def test_two_ranks_end_with_the_process_group_torn_down(phantom_dir, tmp_path):
    """After a two-rank run returns, no gloo thread runs in either process. With DistributedDataParallel
    (torch 2.13) they ran on to the process's exit, which then aborted now and then ("terminate called
    without an active exception"), failing a finished run."""
    script = tmp_path / "run.py"
    threads = tmp_path / "threads"
    threads.mkdir()
    script.write_text(_THREADS_AFTER_FIT.format(tests=str(Path(__file__).parent), data=str(phantom_dir),
                                                out=str(tmp_path / "out"), threads=str(threads)))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={_free_port()}", str(script)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [(threads / f"rank{rank}").read_text() for rank in (0, 1)]
    assert all("python" in line for line in lines), lines  # the names were read
    assert all("gloo" not in line for line in lines), lines


def _rank_pid(parent: int, rank: str) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text().split()
        except OSError:
            continue
        if int(stat[3]) == parent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def test_a_killed_rank_stops_the_job_and_leaves_the_checkpoint_intact(phantom_dir, tmp_path):
    out = tmp_path / "run"
    proc = _train(phantom_dir, out, ranks=2, epochs=200, wait=False)
    log = out / "segmenter" / "log.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (log.exists() and len(log.read_text().splitlines()) > 2):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.1)
    victim = _rank_pid(proc.pid, "1")
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode != 0
    # Rank 0 says it in one line, unless torchrun's SIGTERM reaches it first; then torchrun's summary names
    # the rank that died as the root cause.
    ours = "kidneyseg: error: another training process stopped" in stderr
    theirs = "Root Cause" in stderr and "rank      : 1" in stderr and "SIGKILL" in stderr
    assert ours or theirs, stderr[-3000:]
    state = load_state(out / "segmenter" / "last_state.pt")  # intact, resumable
    assert 1 <= state["epoch"] < 200
    assert np.isfinite(float(state["best_val_dice"]))
