"""Faults under load: a folder prediction of 52 cases with faults injected while it runs.

    .venv/bin/python benchmarks/faults.py [--cases 52] [--work DIR]

Synthesises the cases, trains a micro model (2 epochs per stage: accuracy is not the point), then:

1. a run over a folder of the 52 CTs as NIfTI files in which, while it runs, one input not yet
   reached is deleted, another is overwritten with garbage (unreadable), and SIGTERM stops the
   process after three fifths of the cases; its summary must name both broken inputs;
2. a rerun of the same command, which must write exactly the cases still missing and name the
   unreadable input again (exit 7; the deleted one is no longer listed);
3. a run onto a real full filesystem (a tmpfs at WORK/full with room for a third of the outputs;
   needs root, else this part is reported as not run): exit 5 and only complete outputs;
4. two ``predict`` processes writing to one OUT_DIR at once.

After each: every output is a readable label map on its input's grid, no temp or partial file
remains, and the summary names every failure. Prints one line per check and exits 1 if any fails.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kidneyseg import io
from kidneyseg.config import override, preset
from kidneyseg.synthetic import synthesize_dataset
from kidneyseg.training.fit import fit

MICRO = ["input_size=32,32,32", "network.base_filters=4", "network.deep_supervision=2", "network.levels=3",
         "samples_per_epoch=8", "epochs=2", "val_fraction=0.25"]
RESULTS: list[tuple[str, bool]] = []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=52)
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a new temp folder)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="kidneyseg-faults-"))
    data, model = work / "data", work / "model"
    if not (data / f"case_{args.cases - 1:05d}").is_dir():
        synthesize_dataset(data, args.cases, seed=5, progress=False)
    if not (model / "segmenter" / "best.safetensors").is_file():
        for stage in ("localizer", "segmenter"):
            fit(data, model, override(preset("tiny").stage(stage), MICRO), preset("tiny").pipeline, overwrite=True,
                progress=False)
    flat = work / "inputs"  # a folder of NIfTI files, listed once when a run starts
    shutil.rmtree(flat, ignore_errors=True)
    flat.mkdir()
    for case in io.layout.kits_cases(data):
        shutil.copy(case.image, flat / f"{case.case_id}.nii.gz")
    inputs = {p.name[: -len(".nii.gz")]: p for p in sorted(flat.glob("*.nii.gz"))}
    print(f"{len(inputs)} inputs in {flat}, micro model in {model}")

    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    order = sorted(inputs)
    deleted, garbled = order[len(order) * 2 // 5], order[len(order) * 9 // 20]
    run = start_predict(flat, out, model)
    wait_for_outputs(out, 1, run)
    inputs[deleted].unlink()
    inputs[garbled].write_bytes(b"\x1f\x8b not really gzip")
    wait_for_outputs(out, len(order) * 3 // 5, run)
    run.send_signal(signal.SIGTERM)
    stdout, stderr = run.communicate(timeout=300)
    done = outputs(out)
    check("SIGTERM: exit 143, the summary says the run stopped", run.returncode == 143 and "STOPPED" in stdout,
          f"exit {run.returncode}, {len(done)} written")
    check("deleted and unreadable inputs named in the summary",
          f"FAILED {deleted}" in stdout and f"FAILED {garbled}" in stdout and "Traceback" not in stderr, "")
    check("after SIGTERM: every output complete, no temp files", valid(out, inputs), "")

    rerun = subprocess.run(predict_cmd(flat, out, model), capture_output=True, text=True, timeout=1800)
    expected = set(inputs) - {deleted, garbled}
    check("rerun: exit 7, names the unreadable input", rerun.returncode == 7 and f"FAILED {garbled}" in rerun.stdout,
          next((line for line in rerun.stdout.splitlines() if line.startswith("predicted")), rerun.stderr[-200:]))
    check("rerun: wrote exactly the missing cases, skipped the finished ones",
          outputs(out) == expected and f"predicted {len(expected) - len(done)}, skipped {len(done)}" in rerun.stdout,
          f"{len(outputs(out))} of {len(expected)} readable inputs have outputs")
    check("rerun: every output complete, no temp files", valid(out, inputs), "")
    size = sum(p.stat().st_size for p in out.glob("*.nii.gz")) / len(expected)

    full_disk(work, flat, model, inputs, size)
    two_writers(work, flat, model, inputs, expected)
    failed = [name for name, ok in RESULTS if not ok]
    print(f"\n{len(RESULTS) - len(failed)} of {len(RESULTS)} checks passed" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


def full_disk(work: Path, data: Path, model: Path, inputs: dict, output_bytes: float) -> None:
    """A tmpfs with room for about a third of the outputs."""
    mount = work / "full"
    mount.mkdir(exist_ok=True)
    kib = max(16, int(output_bytes * len(inputs) / 3 / 1024))
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(mount)],
                      capture_output=True).returncode:
        print("full filesystem: NOT RUN (mounting a tmpfs needs root on this machine)")
        return
    try:
        out = mount / "out"
        proc = subprocess.run(predict_cmd(data, out, model), capture_output=True, text=True, timeout=1800)
        written = outputs(out)
        check("full filesystem: exit 5 with one line naming the file and 'no space left'",
              proc.returncode == 5 and "no space left on device" in proc.stderr and "Traceback" not in proc.stderr,
              proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
        check("full filesystem: the outputs that fit are complete, no temp files", valid(out, inputs),
              f"{len(written)} of {len(inputs)} outputs fit in {kib} KiB")
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(["umount", str(mount)], check=False)


def two_writers(work: Path, data: Path, model: Path, inputs: dict, expected: set[str]) -> None:
    out = work / "shared-out"
    shutil.rmtree(out, ignore_errors=True)
    runs = [start_predict(data, out, model) for _ in range(2)]
    results = [run.communicate(timeout=1800) + (run.returncode,) for run in runs]
    codes = [code for _, _, code in results]
    check("two writers: both finish (exit 7: the unreadable input) without a traceback",
          codes == [7, 7] and not any("Traceback" in err for _, err, _ in results), f"exits {codes}")
    check("two writers: every case written once, complete, no temp files",
          outputs(out) == expected and valid(out, inputs), f"{len(outputs(out))} outputs")


def predict_cmd(data: Path, out: Path, model: Path) -> list[str]:
    return [sys.executable, "-m", "kidneyseg", "predict", str(data), str(out), "--model", str(model)]


def start_predict(data: Path, out: Path, model: Path) -> subprocess.Popen:
    return subprocess.Popen(predict_cmd(data, out, model), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_outputs(out: Path, count: int, run: subprocess.Popen) -> None:
    while len(outputs(out)) < count and run.poll() is None:
        time.sleep(0.2)


def outputs(out: Path) -> set[str]:
    return {p.name[: -len(".nii.gz")] for p in out.glob("*.nii.gz")} if out.is_dir() else set()


def valid(out: Path, inputs: dict) -> bool:
    """Every file in ``out`` is a complete output: a label map on the grid of its input."""
    if not out.is_dir():
        return True
    for path in out.iterdir():
        if path.name == "report.csv" or path.name.endswith(".report.json") and not path.name.startswith("."):
            continue
        if path.name.startswith(".") or not path.name.endswith(".nii.gz"):
            print(f"  left behind: {path.name}")
            return False
        case = path.name[: -len(".nii.gz")]
        try:
            labels = io.load_label_map(path)
            if inputs[case].exists() and inputs[case].stat().st_size > 100:
                image = io.load_ct(inputs[case])
                io.check_same_grid(image.file_affine, image.file_shape, labels.file_affine, labels.file_shape,
                                   inputs[case], path)
        except Exception as exc:  # noqa: BLE001 - any failure here is a broken output
            print(f"  broken output {path.name}: {exc}")
            return False
    return True


def check(name: str, ok: bool, detail: str) -> None:
    RESULTS.append((name, ok))
    print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f"  ({detail})" if detail else ""))


if __name__ == "__main__":
    sys.exit(main())
