"""Keep the memory that tensors free, for the next ones to reuse (glibc's malloc, Linux).

glibc's malloc gives a block above its mmap threshold a mapping of its own and unmaps it when it is
freed, and it returns the free memory at the heap's top to the kernel once there is more of it than
twice the largest block freed so far. A network pass allocates and frees activations of several MiB
each, so every pass takes them back from the kernel one 4 KiB page at a time, each page zeroed first:
on a 512 x 512 x 300 CT with the ``paper`` preset in bf16 about 900,000 page faults per prediction
(1.9 s of kernel time with other processes on the same cores; the README says what it buys on a quiet
machine). With the mmap threshold fixed at its largest (32 MiB) and the heap never trimmed, freed blocks
up to that size stay in the process and later passes reuse them without a fault; larger blocks are
still mapped and unmapped as before.

The price is that the process keeps the memory those blocks took until it exits, instead of returning
it between passes. A long-lived process that must give memory back sets ``KIDNEYSEG_SYSTEM_MALLOC=1``;
settings the user made (glibc's ``MALLOC_*_`` variables or malloc tunables, or another allocator through
``LD_PRELOAD``, such as jemalloc or tcmalloc) are left alone. ``kidneyseg.segment`` and
``kidneyseg.fit`` call ``keep_freed_memory`` on entry.
"""

from __future__ import annotations

import ctypes
import os
import sys

OPT_OUT = "KIDNEYSEG_SYSTEM_MALLOC"
# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
NEVER_TRIM = 2**31 - 1  # bytes free at the heap's top before malloc returns them: the largest int, never
MMAP_THRESHOLD = 32 * 2**20  # the largest glibc accepts on 64-bit systems (half its heap size, 64 MiB)
_USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

_state: bool | None = None


def keep_freed_memory() -> bool:
    """Make this process's malloc keep freed memory for reuse (see the module docstring), once; True
    where it is in effect. A no-op (False) off Linux and glibc, with ``KIDNEYSEG_SYSTEM_MALLOC`` set, or
    where the user chose malloc settings or another allocator."""
    global _state
    if _state is None:
        _state = _apply()
    return _state


def _apply() -> bool:
    env = os.environ
    if not sys.platform.startswith("linux") or env.get(OPT_OUT, "") not in ("", "0"):
        return False
    if any(name in env for name in _USER_SETTINGS) or "malloc" in env.get("GLIBC_TUNABLES", "") \
            or env.get("LD_PRELOAD"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl's mallopt does nothing  # noqa: B018
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # Either setting also stops glibc from moving both thresholds with the blocks it frees.
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
