"""kidneyseg.allocator: freed tensor memory stays in the process for reuse, and the user's choices win."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kidneyseg import allocator

LIBC = os.confstr("CS_GNU_LIBC_VERSION") if sys.platform.startswith("linux") else None  # "glibc 2.41"
GLIBC = tuple(int(n) for n in LIBC.split()[1].split(".")[:2]) if LIBC and LIBC.startswith("glibc") else None

# Eight 8 MiB tensors alive at once, then freed, eight times over (as network passes allocate and free their
# activations); print whether the setting is in effect, the heap's free bytes after the first round (glibc's
# mallinfo2: freed memory still in the process) and the page faults of each round.
PROBE = """
import ctypes, resource, torch
from kidneyseg.allocator import keep_freed_memory

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Info
on = keep_freed_memory()
faults, kept = [], None
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensors = [torch.empty(2 * 2**20).fill_(1.0) for _ in range(8)]
    del tensors
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    kept = mallinfo2().fordblks if kept is None else kept
print(on, kept, *faults)
"""
MIB = 2**20


def _probe(**env: str) -> tuple[bool, int, list[int]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != allocator.OPT_OUT}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", int(out[1]), [int(n) for n in out[2:]]


@pytest.mark.skipif(GLIBC is None or GLIBC < (2, 33),
                    reason="glibc's malloc (2.33 or later: mallinfo2) on Linux only")
def test_freed_tensors_stay_in_the_process_for_reuse():
    on, kept, faults = _probe()
    off, returned, _ = _probe(**{allocator.OPT_OUT: "1"})
    assert on and not off
    assert returned < 16 * MIB  # glibc's own rules: the blocks were unmapped when freed
    assert kept >= 64 * MIB  # kept: all eight blocks are free memory of the process
    # and later rounds reuse them: at most two tensors' pages faulted in again (where a free block was split)
    assert max(faults[4:]) <= 2 * 8 * MIB // 4096


@pytest.mark.parametrize("env", [{"MALLOC_MMAP_MAX_": "65536"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"},
                                 {"LD_PRELOAD": "libjemalloc.so.2"}, {allocator.OPT_OUT: "1"}])
def test_the_users_malloc_choices_are_left_alone(monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert allocator._apply() is False


def test_other_platforms_are_left_alone(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert allocator._apply() is False
