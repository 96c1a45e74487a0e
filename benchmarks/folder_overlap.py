"""Does a folder run gain from reading the next CT and writing the last outputs beside the networks?

    .venv/bin/python benchmarks/folder_overlap.py MODEL_DIR DATA_DIR [--cases 10] [--precision bf16]

Runs the per-case work of ``kidneyseg predict`` on the first ``--cases`` CTs of the KiTS-layout
DATA_DIR (the accuracy benchmark's validation folder, say) twice, from one process:
- in turn: read (``io.load_ct``), ``segment``, then the outputs (volume report, label map, QA page);
- overlapped: one thread reads the next CT and one writes the last case's outputs while the main
  thread segments (gzip, NumPy and matplotlib release the GIL for most of their work).
Every file is read once beforehand, so both runs read from the page cache.
Prints both wall times, their ratio and what each part costs on its own. The folder run in
``kidneyseg.batch`` works in turn; this measures whether overlapping would be worth its complexity on
this machine. Timings need a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kidneyseg import io
from kidneyseg.inference import load_model_dir, segment
from kidneyseg.measure import measure
from kidneyseg.qa import write_qa_page


def write_outputs(result, model, out: Path, case_id: str) -> None:
    report = measure(result.labels, result.volume, model.data_profile)
    io.atomic_write_text(out / f"{case_id}.report.json", json.dumps({"case_id": case_id, **report.to_dict()}))
    result.save(out / f"{case_id}.nii.gz")
    write_qa_page(out / f"{case_id}.qa.html", case_id, result.volume, result.labels, report, [], case_id)


def in_turn(cases, model, out: Path, parts: dict[str, float]) -> float:
    start = time.perf_counter()
    for case in cases:
        t = time.perf_counter()
        volume = io.load_ct(case.image)
        parts["read"] += time.perf_counter() - t
        t = time.perf_counter()
        result = segment(volume, model)
        parts["segment"] += time.perf_counter() - t
        t = time.perf_counter()
        write_outputs(result, model, out, case.case_id)
        parts["write"] += time.perf_counter() - t
    return time.perf_counter() - start


def overlapped(cases, model, out: Path) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        pending_read = reader.submit(io.load_ct, cases[0].image)
        pending_write = None
        for k, case in enumerate(cases):
            volume = pending_read.result()
            if k + 1 < len(cases):
                pending_read = reader.submit(io.load_ct, cases[k + 1].image)
            result = segment(volume, model)
            if pending_write is not None:
                pending_write.result()
            pending_write = writer.submit(write_outputs, result, model, out, case.case_id)
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
    segment(io.load_ct(cases[0].image), model)  # warm-up: the first pass allocates and initialises
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
