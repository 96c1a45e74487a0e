"""The training loop for one stage, top to bottom. Device, seed and precision are passed in.

It writes the run folder ``MODEL_DIR/<stage>/`` (kidneyseg.training.run_folder) and, beside the stages,
``MODEL_DIR/data_profile.json`` (the training data's spacing and HU ranges, kidneyseg/profile.py).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from kidneyseg import io
from kidneyseg.allocator import keep_freed_memory
from kidneyseg.config import PipelineConfig, StageConfig
from kidneyseg.errors import InvalidInputError, ResourceError, TrainingDivergedError, UsageError
from kidneyseg.evaluation import dice_from_counts
from kidneyseg.model import place
from kidneyseg.outputs import probabilities, to_labels
from kidneyseg.profile import write_profile
from kidneyseg.report import save_training_curves
from kidneyseg.training import distributed
from kidneyseg.training.cache import Sample, build_cache
from kidneyseg.training.checkpoint import load_state
from kidneyseg.training.data import Draws, keep_items, load_sample
from kidneyseg.training.losses import make_loss
from kidneyseg.training.run_folder import prepare_run_dir, rng_state, save_epoch, set_rng
from kidneyseg.weights import autocast, build_model, supported_precision

CURVES_EVERY = 10  # epochs between redraws of curves.png (log.csv is written every epoch)


@dataclass(frozen=True)
class FitResult:
    run_dir: Path
    epochs_done: int
    best_val_dice: float
    minutes: float


def fit(data_dir: Path, model_dir: Path, stage: StageConfig, pipeline: PipelineConfig, *, resume: bool = False,
        overwrite: bool = False, device: str = "cpu", progress: bool = True, workers: int | None = None,
        compile: bool = False) -> FitResult:
    """Train ``stage`` on the KiTS-layout ``data_dir``; write the run into ``model_dir/<stage>``.

    ``workers``: processes preparing the inputs and building the cache (None: ``default_workers(device)``;
    0: this process);
    the weights do not depend on it. ``compile``: run the network through ``torch.compile``. Under
    torchrun each process is one rank of a data-parallel run (kidneyseg.training.distributed);
    rank 0 writes the run folder. The process's malloc keeps freed memory for reuse from then on
    (kidneyseg.allocator), and so do the input workers it forks.
    """
    keep_freed_memory()
    ranks, device = distributed.setup(device)
    workers = default_workers(device) if workers is None else workers
    _check_device(stage, device, workers)
    # The settings' precision is a request, as in prediction: a device without bf16 trains in fp32, with a
    # warning (emulated bf16 is 100x slower on such a CPU: kidneyseg.weights.supported_precision). The run
    # folder keeps the settings as given, so that a resume or a prediction on a bf16 device uses bf16.
    computed = replace(stage, precision=supported_precision(stage.precision, device, "training"))
    run_dir = Path(model_dir) / stage.stage
    cases = io.layout.kits_cases(data_dir)
    if ranks.main:  # the run folder and the cache first, then the other ranks read them
        run_dir = io.check_output_dir(run_dir)
        prepare_run_dir(run_dir, stage, pipeline, resume, overwrite)
        build_cache(cases, Path(model_dir) / "cache" / stage.stage, stage, pipeline, progress, workers)
        write_profile(model_dir, cases)  # what inputs to expect, for the report's input_unlike_training flag
    distributed.barrier(ranks)
    samples = build_cache(cases, Path(model_dir) / "cache" / stage.stage, stage, pipeline, False)
    train, val = split_samples(samples, stage.val_fraction, stage.seed)
    torch.manual_seed(stage.seed)
    net = place(build_model(stage), device)
    optimizer = make_optimizer(net, stage)
    scaler = torch.amp.GradScaler("cuda") if stage.precision == "fp16" else None
    torch.manual_seed(stage.seed + ranks.rank)  # each rank its own dropout; rank 0 as a single process
    epoch, best, minutes, log = 0, -math.inf, 0.0, []
    if resume and (run_dir / "last_state.pt").exists():
        state = load_state(run_dir / "last_state.pt")
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng(state, ranks.rank)
        epoch, best, minutes, log = state["epoch"], state["best_val_dice"], state["minutes"], state["log"]
    model = _parallel(net, ranks, compile)
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True  # one input size: let cuDNN pick its fastest kernels once
    loss_fn = make_loss(stage)
    bar = tqdm(total=stage.epochs, initial=epoch, desc=f"train {stage.stage}", unit="epoch",
               disable=not (progress and ranks.main))
    # The budget counts training and validation; it is checked before every step, so a run stops
    # within one step (plus the validation of its last, possibly partial, epoch) of --minutes.
    deadline = time.perf_counter() + (stage.max_minutes - minutes) * 60 if stage.max_minutes else math.inf
    per_epoch = epoch_draws(train, stage)

    def lr_at(epoch: int, it: int) -> float:
        """The learning rate of step ``it`` of ``epoch``; the budget's progress counts steps, or
        minutes where --minutes ends the run sooner."""
        step = epoch * per_epoch + it
        progress = step / (stage.epochs * per_epoch)
        if stage.max_minutes:
            progress = max(progress, 1 - (deadline - time.perf_counter()) / (60 * stage.max_minutes))
        return learning_rate(stage, epoch, step, min(progress, 1.0))

    step = Step(model, net, optimizer, loss_fn, scaler, computed, device, ranks, workers)
    while epoch < stage.epochs and not distributed.any_rank(time.perf_counter() >= deadline, ranks, device):
        start = time.perf_counter()
        train_loss, drawn, waited = _train_epoch(step, train, epoch, deadline, lr_at)
        train_seconds = time.perf_counter() - start
        epoch += 1
        last = epoch >= stage.epochs or distributed.any_rank(time.perf_counter() >= deadline, ranks, device)
        scores = validate(net, val, computed, device, ranks) if last or epoch % stage.val_every == 0 else {}
        minutes += (time.perf_counter() - start) / 60
        log.append({"epoch": epoch, "train_loss": train_loss, **scores, "lr": optimizer.param_groups[0]["lr"],
                    "minutes": minutes, "samples": drawn, "step_s": train_seconds / max(drawn, 1),
                    "data_wait_s": waited / max(drawn, 1)})
        improved = bool(scores) and scores["val_dice"] > best
        best = max(best, scores.get("val_dice", -math.inf))
        rng = distributed.gather_objects(rng_state(), ranks)
        if ranks.main:
            save_epoch(run_dir, net, optimizer, scaler, stage, epoch, best, minutes, log, improved, rng)
            if epoch % CURVES_EVERY == 0:
                save_training_curves(log, run_dir / "curves.png", title=f"{stage.stage} training")
        bar.update(1)
        bar.set_postfix(loss=f"{train_loss:.3f}", val_dice=f"{best:.3f}")
    bar.close()
    if log and ranks.main:
        save_training_curves(log, run_dir / "curves.png", title=f"{stage.stage} training")
    distributed.barrier(ranks)
    distributed.shutdown(ranks)
    return FitResult(run_dir, epoch, best, minutes)


def _check_device(stage: StageConfig, device: str, workers: int) -> None:
    if workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {workers}")
    kind = torch.device(device).type
    if stage.precision == "fp16" and kind != "cuda":
        raise UsageError("precision fp16 (with a gradient scaler) is for CUDA GPUs; on a CPU use bf16 or fp32")


def _parallel(net: torch.nn.Module, ranks: distributed.Ranks, compile: bool) -> torch.nn.Module:
    """The module the training steps call: ``net`` itself, or compiled with ``compile`` (``net`` stays
    the plain module that is saved). Under torchrun every rank starts from rank 0's weights; the steps
    average the gradients over the ranks (kidneyseg.training.distributed)."""
    distributed.broadcast_parameters(net, ranks)
    return torch.compile(net) if compile else net


def default_workers(device: str) -> int:
    """Input worker processes when --workers is not given. On a CPU the network's threads already use
    every core, and a worker only competes with them (2 cores, small segmenter: 0.82 s per step with
    one worker, 0.67 s without; benchmarks/train_throughput.py): 0. On a GPU one per core beyond the
    one that runs the training loop, at most 8."""
    if torch.device(device).type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores - 1))


def split_samples(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split by case (both kidneys of a case land on the same side), fixed by ``seed``."""
    case_ids = sorted({s.case_id for s in samples})
    if len(case_ids) < 2:
        raise UsageError(f"need at least 2 cases with kidneys to train and validate, found {len(case_ids)}")
    order = np.random.RandomState(seed).permutation(len(case_ids))
    n_val = min(max(1, round(val_fraction * len(case_ids))), len(case_ids) - 1)
    val_ids = {case_ids[i] for i in order[:n_val]}
    return [s for s in samples if s.case_id not in val_ids], [s for s in samples if s.case_id in val_ids]


@dataclass(frozen=True)
class Step:
    """What one training step needs besides its batch."""

    model: torch.nn.Module
    net: torch.nn.Module  # the plain module (``model`` may be its compiled form): its gradients are averaged
    optimizer: torch.optim.Optimizer
    loss_fn: object
    scaler: torch.amp.GradScaler | None
    stage: StageConfig
    device: str
    ranks: distributed.Ranks
    workers: int


def rank_draws(count: int, batch: int, ranks: distributed.Ranks) -> list[list[int]]:
    """This rank's draws of an epoch of ``count``, one list per step. Step s uses the global batch of
    draws [s * G, (s + 1) * G), G = ``batch`` x ranks, and rank r the r-th block of ``batch`` of it.
    With several ranks an incomplete last global batch is dropped, so that every rank takes every step."""
    size = batch * ranks.world
    steps = count // size if ranks.world > 1 else -(-count // batch)
    return [list(range(s * size + ranks.rank * batch, min(s * size + (ranks.rank + 1) * batch, count)))
            for s in range(steps)]


def _train_epoch(step: Step, train: list[Sample], epoch: int, deadline: float, lr_at) -> tuple[float, int, float]:
    """One epoch: (mean loss over ranks, draws done by all ranks, seconds per rank spent waiting for
    input). Its data order and augmentation depend only on (seed, epoch, draw), whatever the number
    of workers (0: inputs prepared in this process) or ranks. Past ``deadline`` (``time.perf_counter()``,
    agreed by all ranks) it ends early, after at least one step. ``lr_at(epoch, it)`` gives the
    learning rate of the step starting at global draw ``it``."""
    stage, ranks, device = step.stage, step.ranks, step.device
    step.model.train()
    order = draw_order(train, stage, np.random.RandomState([stage.seed, epoch]))
    mine = rank_draws(len(order), stage.batch_size, ranks)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(Draws(train, order, stage, epoch), [k for ks in mine for k in ks]),
        batch_size=stage.batch_size, shuffle=False, num_workers=step.workers, collate_fn=keep_items,
        pin_memory=torch.device(device).type == "cuda", prefetch_factor=2 if step.workers else None)
    losses, waited, batches = [], 0.0, iter(loader)
    global_batch = stage.batch_size * ranks.world
    for s, draws in enumerate(mine):
        if losses and distributed.any_rank(time.perf_counter() >= deadline, ranks, device):
            break
        start = time.perf_counter()
        items = _next_batch(batches, epoch)
        waited += time.perf_counter() - start
        for group in step.optimizer.param_groups:
            group["lr"] = lr_at(epoch, s * global_batch)
        images = torch.stack([p[0] for p in items]).to(device, non_blocking=True)
        labels = torch.stack([p[1] for p in items]).to(device, non_blocking=True)
        loss = train_step(step.model, step.optimizer, step.loss_fn, images, labels, stage.precision, device,
                          stage.deep_supervision_loss, step.scaler,
                          lambda bad: distributed.any_rank(bad, ranks, device),
                          lambda: distributed.average_gradients(step.net, ranks))
        if not torch.isfinite(loss):
            names = ", ".join(train[order[k]].case_id for k in draws)
            raise TrainingDivergedError(f"loss became {loss.item()} at epoch {epoch + 1}, iteration {s + 1} "
                                        f"(case {names}); the best checkpoint was left untouched")
        losses.append(loss.item())
    done = sum(len(ks) for ks in mine[:len(losses)])
    total, count, drawn = distributed.sum_across([float(np.sum(losses)), len(losses), done], ranks, device)
    return total / count, int(drawn), waited


def _next_batch(batches, epoch: int) -> list:
    """The next batch of (image, label) pairs. A failed draw raises InvalidInputError, a worker process
    that died (killed, out of memory) ResourceError, each with one line; checkpoints are written only
    between epochs, so they stay intact."""
    try:
        items = next(batches)
    except RuntimeError as exc:  # the DataLoader's report of a worker process that died
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ResourceError(f"an input worker process stopped during epoch {epoch + 1} ({first}); the "
                                 "checkpoints of the last finished epoch are intact: rerun with --resume") from exc
    for item in items:
        if isinstance(item, str):
            raise InvalidInputError(item + "; the checkpoints of the last finished epoch are intact")
    return items


def make_optimizer(model: torch.nn.Module, stage: StageConfig) -> torch.optim.Optimizer:
    """Adam (the paper) or SGD with Nesterov momentum 0.99 (nnU-Net), both with L2 weight decay."""
    if stage.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=stage.lr, momentum=0.99, nesterov=True,
                               weight_decay=stage.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=stage.lr, weight_decay=stage.weight_decay)


def learning_rate(stage: StageConfig, epoch: int, step: int, progress: float) -> float:
    """The learning rate at ``step`` (counted over the whole run) in ``epoch``, with ``progress`` the
    share of the budget used (0 to 1): exponential, ``lr * lr_decay**epoch`` (the paper, per epoch),
    or poly, ``lr * (1 - progress)**0.9`` (nnU-Net, per step); times a linear warm-up over
    ``warmup_steps``."""
    poly = stage.lr_schedule == "poly"
    rate = stage.lr * (1.0 - progress) ** 0.9 if poly else stage.lr * stage.lr_decay**epoch
    if stage.warmup_steps:
        rate *= min(1.0, (step + 1) / stage.warmup_steps)
    return rate


def train_step(model, optimizer, loss_fn, images: torch.Tensor, labels: torch.Tensor, precision: str,
               device: str, all_scales: bool = False, scaler: torch.amp.GradScaler | None = None,
               any_bad=None, average=None) -> torch.Tensor:
    """One optimiser step on a batch: forward (autocast per ``precision``; logits at every scale with
    ``all_scales``), loss, and, only when the loss is finite, backward and update (through
    ``scaler`` for fp16). ``any_bad(flag)`` tells whether any rank's loss is not finite, so that all
    ranks skip together; ``average()``, called between backward and update, averages the gradients
    over the ranks. Returns the loss; a non-finite one changed nothing."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(precision, device):
        logits = model(images, all_scales=all_scales)
    logits = [out.float() for out in logits] if all_scales else logits.float()
    loss = loss_fn(logits, labels)
    bad = not bool(torch.isfinite(loss))
    if any_bad is not None:
        bad = any_bad(bad)
    if not bad:
        (loss if scaler is None else scaler.scale(loss)).backward()
        if average is not None:
            average()  # with fp16, of the scaled gradients: every rank's scale is the same
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            scaler.update()
    elif bool(torch.isfinite(loss)):
        loss = torch.full_like(loss, float("nan"))  # another rank's loss was not finite: stop alike
    return loss


def epoch_draws(train: list[Sample], stage: StageConfig) -> int:
    """Draws in an epoch: ``samples_per_epoch``, or (0) one per kidney sample of ``train``."""
    return stage.samples_per_epoch or sum(not s.empty for s in train)


def draw_order(train: list[Sample], stage: StageConfig, rng: np.random.RandomState) -> np.ndarray:
    """Indices of one epoch's training samples: shuffled passes over the kidney samples of ``train``;
    with ``tumor_fraction`` > 0 that share of the draws (on average) is replaced by kidney samples with
    tumour, chosen uniformly or, with ``tumor_weight`` "volume", in proportion to their tumour's volume;
    then, with ``empty_fraction`` > 0, that share by empty crops (``Sample.empty``), chosen uniformly.
    Without empty crops in ``train`` it draws as if the setting were 0."""
    kidneys = np.flatnonzero([not s.empty for s in train])
    count = epoch_draws(train, stage)
    passes = -(-count // len(kidneys))
    order = kidneys[np.concatenate([rng.permutation(len(kidneys)) for _ in range(passes)])[:count]]
    with_tumor = np.flatnonzero([s.has_tumor and not s.empty for s in train])
    if stage.tumor_fraction > 0 and len(with_tumor):
        chosen = rng.random_sample(count) < stage.tumor_fraction
        weights = None
        if stage.tumor_weight == "volume":
            volumes = np.array([train[i].tumor_ml for i in with_tumor])
            weights = volumes / volumes.sum()
        order[chosen] = rng.choice(with_tumor, size=int(chosen.sum()), p=weights)
    empties = np.flatnonzero([s.empty for s in train])
    if stage.empty_fraction > 0 and len(empties):
        chosen = rng.random_sample(count) < stage.empty_fraction
        order[chosen] = rng.choice(empties, size=int(chosen.sum()))
    return order


@torch.inference_mode()
def validate(model, val: list[Sample], stage: StageConfig, device: str,
             ranks: distributed.Ranks = distributed.SINGLE) -> dict[str, float]:
    """Dice per validation case at the network's input resolution, on un-augmented samples.

    Localizer: ``val_dice`` = foreground Dice. Segmenter: mean of kidney+tumour and tumour Dice,
    each pooled over the case's kidney crops (so a crop without tumour counts through its false
    positives only, as it would in the whole case, instead of scoring 0 on its own); empty crops are
    left out, so that the score, and the checkpoint it chooses, compare across settings. With several
    ranks each takes every N-th case and the per-case Dice values are summed across ranks.
    """
    model.eval()
    regions = {"val_kidney_tumor": lambda a: a > 0}
    if stage.network.num_classes > 2:
        regions["val_tumor"] = lambda a: a == 2
    mine = set(sorted({s.case_id for s in val})[ranks.rank::ranks.world])
    counts: dict[str, dict[str, np.ndarray]] = {}  # case -> region -> (overlap, predicted, true) voxels
    for sample in (s for s in val if s.case_id in mine and not s.empty):
        image, label = load_sample(sample, stage, None)
        with autocast(stage.precision, device):
            logits = model(image[None].to(device))
        pred = to_labels(probabilities(logits.float(), stage.regions)[0].cpu(), stage.regions)
        truth = label[0].numpy()
        case = counts.setdefault(sample.case_id, {k: np.zeros(3, np.int64) for k in regions})
        for key, select in regions.items():
            p, t = select(pred), select(truth)
            case[key] += [np.count_nonzero(p & t), np.count_nonzero(p), np.count_nonzero(t)]
    sums = [sum(dice_from_counts(*c[key]) for c in counts.values()) for key in regions]
    *sums, cases = distributed.sum_across([*sums, len(counts)], ranks, device)
    scores = {key: total / cases for key, total in zip(regions, sums, strict=True)}
    scores["val_dice"] = float(np.mean(list(scores.values())))
    return scores
