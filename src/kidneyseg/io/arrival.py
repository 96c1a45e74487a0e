"""A CT whose voxels are still being decompressed by a background thread, plane by plane.

Reading a 512 x 512 x 300 ``.nii.gz`` is about 0.35-0.5 s of gzip decompression on one core. Prediction
needs the whole CT's clipped statistics and the localizer's zoom before its first network pass, and both
read the CT one run of planes at a time: with the planes arriving in the file's order they can start on
the first planes while a second core decompresses the rest. ``Arrival`` is the meeting point: the reading
thread reports each decompressed chunk (``advance``), a reader blocks until the planes it needs are in
(``wait``), and ``finish`` blocks until all are, re-raises the reading thread's error, and runs the checks
that need every voxel (HU range), once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path


class ReadStopped(Exception):
    """Raised in the reading thread when ``close`` asked it to stop."""


class Arrival:
    """Progress of a file-order array (``file_shape``, Fortran order: planes of the last file axis arrive
    in order) whose canonical view maps file axis 2 to canonical axis ``axis``, reversed if ``flipped``.

    ``checks`` run on the complete array in ``finish`` (in the thread that calls it first)."""

    def __init__(self, path: Path, file_shape: tuple[int, int, int], axis: int, flipped: bool,
                 checks: Callable[[], None] = lambda: None):
        self.path, self.axis, self.flipped = path, axis, flipped
        self._plane = int(file_shape[0]) * int(file_shape[1])
        self._planes = int(file_shape[2])
        self._done = 0  # complete file planes
        self._ended = False
        self._error: BaseException | None = None
        self._stop = False
        self._checks: Callable[[], None] | None = checks
        self._checked = threading.Lock()
        self._cond = threading.Condition()

    # -- the reading thread's side
    def advance(self, voxels: int) -> None:
        """The first ``voxels`` voxels (file order) are in. Raises ReadStopped after ``close``."""
        with self._cond:
            if self._stop:
                raise ReadStopped
            self._done = min(self._planes, voxels // self._plane)
            self._cond.notify_all()

    def end(self, error: BaseException | None = None) -> None:
        """The reading thread is done: every voxel is in, or it failed with ``error``."""
        with self._cond:
            self._ended, self._error = True, error
            if error is None:
                self._done = self._planes
            self._cond.notify_all()

    # -- the readers' side
    def wait(self, axis: int, lo: int, hi: int) -> None:
        """Block until canonical planes [lo, hi) along canonical ``axis`` are in (every plane for another
        axis than the one the file's planes run along); re-raise the reading thread's error."""
        if axis != self.axis:
            needed = self._planes
        elif self.flipped:  # canonical plane k is file plane planes - 1 - k
            needed = self._planes - lo
        else:
            needed = hi
        with self._cond:
            while self._done < needed and not self._ended:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            if self._done < needed:  # ended without error but short: a bug in the reader
                raise RuntimeError(f"{self.path}: the reader stopped after {self._done} of {self._planes} planes")

    def finish(self) -> None:
        """Block until the whole CT is in, then run the checks that need all of it (once; their error again
        on every later call)."""
        self.wait(self.axis, 0, self._planes)
        with self._checked:
            if self._checks is not None:
                checks, self._checks = self._checks, None
                try:
                    checks()
                except BaseException as exc:
                    with self._cond:
                        self._error = exc
                    raise

    @property
    def complete(self) -> bool:
        with self._cond:
            return self._ended and self._error is None and self._checks is None

    def close(self) -> None:
        """Ask the reading thread to stop at its next chunk (the array is then never complete)."""
        with self._cond:
            self._stop = True


def start(target: Callable[[Arrival], None], arrival: Arrival) -> Arrival:
    """Run ``target(arrival)`` in a daemon thread that ends ``arrival`` with its outcome."""

    def run() -> None:
        try:
            target(arrival)
        except ReadStopped:
            arrival.end(ReadStopped())
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that waits, which raises it
            arrival.end(exc)
        else:
            arrival.end()

    threading.Thread(target=run, name=f"read {arrival.path.name}", daemon=True).start()
    return arrival
