"""Faults: bad input through the CLI, kills and divergence during training, full disks, folder runs."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import MICRO, micro_stage
from safetensors.torch import load_file

from kidneyseg import io
from kidneyseg import weights as weights_module
from kidneyseg.config import preset
from kidneyseg.errors import InvalidInputError, ResourceError, TrainingDivergedError
from kidneyseg.training import fit as fit_module
from kidneyseg.training.checkpoint import load_state
from kidneyseg.training.fit import fit
from kidneyseg.weights import load_model


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kidneyseg", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def _one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("kidneyseg: error:")]
    assert len(error_lines) == 1, proc.stderr
    for needle in needles:
        assert needle in error_lines[0], (needle, proc.stderr)


def test_cli_bad_inputs_exit_codes(trained_model, tmp_path):
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    _one_line_error(run_cli("predict", empty, tmp_path / "out", "--model", trained_model), 3, str(empty),
                    "empty (0 bytes)")
    assert not (tmp_path / "out").exists()
    _one_line_error(run_cli("predict", empty, tmp_path / "out", "--model", tmp_path), 4, str(tmp_path),
                    "pipeline.json")
    _one_line_error(run_cli("train", tmp_path / "nowhere", "--stage", "localizer", "--out", tmp_path / "m"), 3,
                    "nowhere", "not found")
    _one_line_error(run_cli("train", tmp_path, "--stage", "localizer", "--preset", "huge", "--out", tmp_path), 2,
                    "unknown preset")
    _one_line_error(run_cli("synth", tmp_path / "s", "--cases", "0"), 2, "--cases")


def test_check_reports_every_bad_case(phantom_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(phantom_dir, data)
    label = data / "case_00001" / "segmentation.nii.gz"
    image = nib.load(label)
    bad = np.asanyarray(image.dataobj).copy()
    bad[0, 0, 0] = 5
    nib.save(nib.Nifti1Image(bad, image.affine, image.header), label)
    (data / "case_00002" / "imaging.nii.gz").write_bytes(b"\x1f\x8b garbage")
    proc = run_cli("check", data)
    assert proc.returncode == 3
    assert "case_00000: ok" in proc.stdout and "case_00003: ok" in proc.stdout
    assert "values [5] outside" in proc.stdout and "case_00002" in proc.stdout
    assert "4 cases checked: 2 with errors" in proc.stdout
    with pytest.raises(InvalidInputError, match="2 of 4 cases failed"):
        fit(data, tmp_path / "model", micro_stage("localizer"), preset("tiny").pipeline, progress=False)


def _train_args(data: Path, out: Path, epochs: int) -> list[str]:
    """A micro segmenter run whose inputs two worker processes prepare."""
    sets = [arg for item in MICRO if not item.startswith("epochs") for arg in ("--set", item)]
    return ["train", data, "--stage", "segmenter", "--preset", "tiny", "--out", out, "--epochs", str(epochs),
            "--workers", "2", *sets]


def test_sigkill_during_training_then_resume_matches_uninterrupted_run(phantom_dir, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert run_cli(*_train_args(phantom_dir, full, 4)).returncode == 0
    log = killed / "segmenter" / "log.csv"
    for attempt in range(3):  # kill at different moments of the run, each time after at least one epoch
        proc = subprocess.Popen([sys.executable, "-m", "kidneyseg", *map(str, _train_args(phantom_dir, killed, 4)),
                                 *(["--resume"] if attempt else [])], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        rows_before = len(log.read_text().splitlines()) if log.exists() else 1
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and len(log.read_text().splitlines()) > rows_before:
                time.sleep(0.05 * attempt)
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = load_state(killed / "segmenter" / "last_state.pt")  # intact after the kill
        load_model(killed / "segmenter" / "last.safetensors")
        assert state["epoch"] >= 1
    assert run_cli(*_train_args(phantom_dir, killed, 4), "--resume").returncode == 0
    assert not list((killed / "segmenter").glob(".*tmp*"))
    a = load_file(str(full / "segmenter" / "last.safetensors"))
    b = load_file(str(killed / "segmenter" / "last.safetensors"))
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    losses = [(full / "segmenter" / "log.csv"), (killed / "segmenter" / "log.csv")]
    col = [[row.split(",")[1] for row in p.read_text().splitlines()[1:]] for p in losses]
    assert col[0] == col[1] and len(col[0]) == 4


def test_nan_loss_stops_and_keeps_the_best_checkpoint(phantom_dir, tmp_path, monkeypatch):
    pipeline = preset("tiny").pipeline
    fit(phantom_dir, tmp_path, micro_stage("localizer", "epochs=1"), pipeline, progress=False)
    best = tmp_path / "localizer" / "best.safetensors"
    before = best.read_bytes()
    real = fit_module.make_loss

    def poisoned(stage):
        loss = real(stage)
        return lambda logits, target: loss(logits, target) * float("nan")

    monkeypatch.setattr(fit_module, "make_loss", poisoned)
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at epoch 2, iteration 1 \(case case_") as info:
        fit(phantom_dir, tmp_path, micro_stage("localizer", "epochs=2"), pipeline, resume=True, progress=False)
    assert info.value.exit_code == 6
    assert best.read_bytes() == before


def test_unreadable_cached_sample_names_the_case(phantom_dir, tmp_path):
    stage, pipeline = micro_stage("localizer", "epochs=1"), preset("tiny").pipeline
    fit(phantom_dir, tmp_path, stage, pipeline, progress=False)
    victim = sorted((tmp_path / "cache" / "localizer").glob("*_image.npy"))[0]
    victim.write_bytes(b"broken")
    with pytest.raises(InvalidInputError, match=f"case {victim.name.split('_image')[0]}"):
        fit(phantom_dir, tmp_path, micro_stage("localizer", "epochs=2"), pipeline, resume=True, progress=False)


def test_disk_full_while_saving_a_checkpoint(phantom_dir, tmp_path, monkeypatch):
    pipeline = preset("tiny").pipeline
    fit(phantom_dir, tmp_path, micro_stage("localizer", "epochs=1"), pipeline, progress=False)
    run = tmp_path / "localizer"
    before = {name: (run / name).read_bytes() for name in ("last.safetensors", "last_state.pt")}

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(weights_module, "save_file", no_space)
    with pytest.raises(ResourceError, match="no space left") as info:
        fit(phantom_dir, tmp_path, micro_stage("localizer", "epochs=2"), pipeline, resume=True, progress=False)
    assert info.value.exit_code == 5
    assert {name: (run / name).read_bytes() for name in before} == before
    assert not list(run.glob(".*tmp*"))


def test_folder_prediction_isolates_bad_cases_and_respects_existing_outputs(phantom_dir, trained_model, tmp_path):
    inputs = tmp_path / "in"
    for case in ("case_00000", "case_00001"):
        (inputs / case).mkdir(parents=True)
        shutil.copy(phantom_dir / case / "imaging.nii.gz", inputs / case / "imaging.nii.gz")
    (inputs / "case_00009").mkdir()
    (inputs / "case_00009" / "imaging.nii.gz").write_bytes(b"truncated")
    out = tmp_path / "out"
    proc = run_cli("predict", inputs, out, "--model", trained_model)
    assert proc.returncode == 7, proc.stderr
    assert "predicted 2, skipped 0" in proc.stdout and "FAILED case_00009" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "case_00000.nii.gz", "case_00000.qa.html", "case_00000.report.json",
        "case_00001.nii.gz", "case_00001.qa.html", "case_00001.report.json", "report.csv"]
    stamp = (out / "case_00000.nii.gz").stat().st_mtime_ns
    shutil.rmtree(inputs / "case_00009")
    proc = run_cli("predict", inputs, out, "--model", trained_model)
    assert proc.returncode == 0 and "predicted 0, skipped 2" in proc.stdout
    assert (out / "case_00000.nii.gz").stat().st_mtime_ns == stamp
    proc = run_cli("predict", inputs, out, "--model", trained_model, "--overwrite")
    assert proc.returncode == 0 and "predicted 2, skipped 0" in proc.stdout
    assert io.load_label_map(out / "case_00000.nii.gz").array.dtype == np.uint8


@pytest.mark.parametrize("command", ["synth", "check", "train", "predict", "evaluate", "demo"])
def test_every_command_has_help(command):
    proc = run_cli(command, "--help")
    assert proc.returncode == 0 and "usage: kidneyseg " + command in proc.stdout and "exit codes" in proc.stdout


def test_demo_refuses_a_bad_setting_before_any_work(tmp_path):
    proc = run_cli("demo", "--out", tmp_path / "demo", "--set", "loss=hinge")
    _one_line_error(proc, 2, "loss")
    assert not (tmp_path / "demo").exists()
