"""Training on several processes (GPUs, or CPU processes with gloo) under torchrun.

``torchrun --nproc_per_node=N -m kidneyseg train ...`` starts N copies of the same command with
RANK, LOCAL_RANK and WORLD_SIZE set. Each rank trains a DistributedDataParallel copy of the network
on its share of every global batch of one deterministic draw order (kidneyseg.training.fit), so
that N ranks with ``batch_size`` B train exactly as one process with batch N x B would (the loss
is a mean over samples and DDP averages the gradients). Only rank 0 writes files.
"""

from __future__ import annotations

import datetime
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
