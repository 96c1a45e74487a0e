"""Does a folder run gain from reading the next CT and writing the last outputs beside the networks?

    .venv/bin/python benchmarks/folder_overlap.py MODEL_DIR DATA_DIR [--cases 10] [--precision bf16]

Runs the per-case work of ``kidneyseg predict`` on the first ``--cases`` CTs of the KiTS-layout
DATA_DIR (the accuracy benchmark's validation folder, say) twice, from one process:
- in turn: read (``batch.read_ct``), ``segment``, then the outputs (volume report, label map, QA page);
- overlapped: one thread reads the next CT and one writes the last case's outputs while the main
  thread segments (gzip, NumPy and matplotlib release the GIL for most of their work).
Every file is read once beforehand, so both runs read from the page cache.
Prints both wall times, their ratio and what each part costs on its own. The folder run in
``kidneyseg.batch`` works in turn; this measures whether overlapping would be worth its complexity on
this machine. Timings need a quiet machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kidneyseg import batch, io
from kidneyseg.inference import load_model_dir, segment


def write_outputs(result, model, out: Path, case) -> None:
    """The outputs ``predict`` writes for a case: label map, volume report, QA page."""
    batch.write_outputs(result, model, case.image, {"nifti": out / f"{case.case_id}.nii.gz"},
                        out / f"{case.case_id}{batch.REPORT_SUFFIX}", out / f"{case.case_id}{batch.QA_SUFFIX}")


def in_turn(cases, model, out: Path, parts: dict[str, float]) -> float:
    start = time.perf_counter()
    for case in cases:
        t = time.perf_counter()
        volume = batch.read_ct(case.image)
        parts["read"] += time.perf_counter() - t
        t = time.perf_counter()
        result = segment(volume, model)
        parts["segment"] += time.perf_counter() - t
        t = time.perf_counter()
        write_outputs(result, model, out, case)
        parts["write"] += time.perf_counter() - t
    return time.perf_counter() - start


def overlapped(cases, model, out: Path) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        pending_read = reader.submit(batch.read_ct, cases[0].image)
        pending_write = None
        for k, case in enumerate(cases):
            volume = pending_read.result()
            if k + 1 < len(cases):
                pending_read = reader.submit(batch.read_ct, cases[k + 1].image)
            result = segment(volume, model)
            if pending_write is not None:
                pending_write.result()
            pending_write = writer.submit(write_outputs, result, model, out, case)
        pending_write.result()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--precision", default=None, help="override the model's precision (fp32, bf16)")
    args = parser.parse_args()
    cases = io.layout.kits_cases(args.data_dir, need_labels=False)[:max(1, args.cases)]
    for case in cases:  # both runs read from the page cache, neither from the disk
        case.image.read_bytes()
    model = load_model_dir(args.model_dir, precision=args.precision)
    segment(batch.read_ct(cases[0].image), model)  # warm-up: the first pass allocates and initialises
    parts = dict.fromkeys(("read", "segment", "write"), 0.0)
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        sequential = in_turn(cases, model, Path(a), parts)
        parallel = overlapped(cases, model, Path(b))
    n = len(cases)
    print(f"{n} cases: in turn {sequential:.1f} s ({sequential / n:.2f} s/case: read {parts['read'] / n:.2f}, "
          f"segment {parts['segment'] / n:.2f}, outputs {parts['write'] / n:.2f}); overlapped {parallel:.1f} s "
          f"({parallel / n:.2f} s/case); overlapped / in turn {parallel / sequential:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
