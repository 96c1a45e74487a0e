"""Training on several processes (GPUs, or CPU processes with gloo) under torchrun.

``torchrun --nproc_per_node=N -m kidneyseg train ...`` starts N copies of the same command with
RANK, LOCAL_RANK and WORLD_SIZE set. Each rank trains a copy of the network on its share of every
global batch of one deterministic draw order (kidneyseg.training.fit), so that N ranks with
``batch_size`` B train exactly as one process with batch N x B would: the loss is a mean over
samples, and after each backward pass ``average_gradients`` replaces every gradient by its mean
over the ranks. Only rank 0 writes files.

Why not DistributedDataParallel: in torch 2.13 it keeps the process group alive after
``destroy_process_group`` (nothing in Python holds it, and deleting the DDP module and the network
does not free it; ``torch._dynamo`` imported after the group exists does the same, see ``setup``).
With gloo the group's threads then run until the process exits, and a process that exits with them
running aborts now and then ("terminate called without an active exception", no Python frame): 2
of 60 two-rank runs of a 3-step DDP script, and a finished test run in CI.
One all-reduce of all gradients after the backward pass gives up DDP's overlap of communication
with the backward pass; for these networks (2.4 M parameters in ``small``, 9.5 M in ``paper``: 10
to 38 MB of fp32 gradients a step) that is one collective per step.
"""

from __future__ import annotations

import datetime
import importlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from kidneyseg.errors import ResourceError, UsageError


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = Ranks()


def setup(device: str) -> tuple[Ranks, str]:
    """Join the process group torchrun describes in the environment (nccl for CUDA, gloo otherwise)
    and return this rank with its device (``cuda:LOCAL_RANK`` when ``device`` is cuda). Without
    torchrun (no WORLD_SIZE, or 1): ``SINGLE`` and ``device`` unchanged."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE, device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if local >= torch.cuda.device_count():
            raise UsageError(f"rank {rank} wants GPU {local}, but this machine has {torch.cuda.device_count()}")
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # torch._dynamo, imported after the group exists (the first optimizer imports it), keeps the group
        # alive after destroy_process_group (torch 2.13): imported before, it does not.
        importlib.import_module("torch._dynamo")
        # A rank that waits longer than this for the others (one died, or hangs) stops with an error.
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=10))
    return Ranks(rank, world), device


def barrier(ranks: Ranks) -> None:
    if ranks.world > 1:
        _collective(dist.barrier)


def any_rank(flag: bool, ranks: Ranks, device: str) -> bool:
    """True on every rank if ``flag`` is true on any (so that all ranks stop at the same step)."""
    if ranks.world == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    _collective(dist.all_reduce, value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def sum_across(values: list[float], ranks: Ranks, device: str) -> list[float]:
    """Element-wise sums of ``values`` over all ranks (each rank passes the same number)."""
    if ranks.world == 1:
        return [float(v) for v in values]  # plain floats: they go into the resume state, which holds no NumPy types
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    _collective(dist.all_reduce, tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def broadcast_parameters(net: torch.nn.Module, ranks: Ranks) -> None:
    """Every rank's parameters and buffers become rank 0's (the ranks start alike whatever each one
    built or loaded)."""
    if ranks.world == 1:
        return
    for tensor in [*net.parameters(), *net.buffers()]:
        _collective(dist.broadcast, tensor.data, src=0)


def average_gradients(net: torch.nn.Module, ranks: Ranks) -> None:
    """Replace each parameter's gradient by its mean over the ranks: one all-reduce of all gradients,
    flattened. A parameter without a gradient on this rank counts as zeros, so every rank sends the
    same layout."""
    if ranks.world == 1:
        return
    params = [p for p in net.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    _collective(dist.all_reduce, flat, op=dist.ReduceOp.SUM)
    flat /= ranks.world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def gather_objects(obj, ranks: Ranks) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if ranks.world == 1:
        return [obj]
    out = [None] * ranks.world
    _collective(dist.all_gather_object, out, obj)
    return out


def _collective(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except RuntimeError as exc:  # gloo and nccl raise RuntimeError subclasses (DistBackendError ...)
        raise stopped_error(exc) from exc


def stopped_error(exc: BaseException) -> ResourceError:
    """The one-line error of a rank whose partners stopped (killed, out of memory) or cannot be reached."""
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return ResourceError(f"another training process stopped or cannot be reached ({first}); the checkpoints of "
                         "the last finished epoch are intact: rerun with --resume")


def shutdown(ranks: Ranks) -> None:
    if ranks.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
