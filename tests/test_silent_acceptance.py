"""Inputs and settings that used to be accepted silently, or failed late with a traceback: each test
here failed before its fix (see the README's table of refusals)."""

from __future__ import annotations

import json
import shutil
import tracemalloc
import warnings
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
from conftest import micro_stage
from test_reliability import _one_line_error, run_cli

from kidneyseg import io
from kidneyseg.config import preset
from kidneyseg.errors import InvalidInputError, ModelFileError, UsageError


def _ct(shape=(24, 20, 16), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1000, shape).astype(np.int16)


def test_output_folder_that_is_a_file_is_refused_before_the_model_is_loaded(tmp_path):
    ct = io.save_nifti(_ct(), np.eye(4), tmp_path / "ct.nii.gz")
    a_file = tmp_path / "some_file"
    a_file.write_text("not a folder")
    # the model folder does not exist either: the output is checked first, before any work
    _one_line_error(run_cli("predict", ct, a_file, "--model", tmp_path / "no-model"), 2, str(a_file), "is a file")
    _one_line_error(run_cli("predict", ct, a_file / "below", "--model", tmp_path / "no-model"), 2,
                    "cannot be created")
    assert a_file.read_text() == "not a folder"


def test_allow_4d_reads_only_the_first_volume(tmp_path):
    volumes = np.stack([_ct((64, 64, 32), seed=s) for s in range(12)], axis=-1)  # 12 x 256 KiB as int16
    path = tmp_path / "series.nii.gz"
    nib.save(nib.Nifti1Image(volumes, np.eye(4)), path)
    tracemalloc.start()
    first = io.load_ct(path, allow_4d=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.array_equal(first.array, volumes[..., 0].astype(np.float32))
    assert peak < 4 * volumes[..., 0].nbytes  # int16 + float32 copies of one volume, not all twelve


def test_a_file_without_qform_or_sform_warns(tmp_path):
    image = nib.Nifti1Image(_ct(), np.diag([0.8, 0.8, 2.5, 1]))
    image.set_qform(None, code=0)
    image.set_sform(None, code=0)
    path = tmp_path / "no-orientation.nii.gz"
    nib.save(image, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        volume = io.load_ct(path)
    assert any("neither a qform nor an sform" in str(w.message) and str(path) in str(w.message) for w in caught)
    assert volume.spacing_mm == pytest.approx((0.8, 0.8, 2.5))


def test_label_map_does_not_inherit_the_ct_display_fields(tmp_path):
    image = nib.Nifti1Image(_ct(), np.eye(4))
    image.header["cal_min"], image.header["cal_max"] = -160, 240
    image.header.set_intent("estimate", name="HU")
    image.header["descrip"] = b"CT ABDOMEN"
    nib.save(image, tmp_path / "ct.nii.gz")
    ct = io.load_ct(tmp_path / "ct.nii.gz")
    written = nib.load(io.save_label_map(np.zeros(ct.array.shape, np.uint8), ct, tmp_path / "labels.nii.gz"))
    header = written.header
    assert (float(header["cal_min"]), float(header["cal_max"])) == (0.0, 0.0)
    assert header.get_intent()[0] == "none"
    assert b"CT ABDOMEN" not in header["descrip"].tobytes()
    assert int(header["sform_code"]) == int(ct.header["sform_code"])  # the geometry is still the input's


def test_a_volume_built_through_the_public_fields_can_be_saved(tmp_path):
    affine = np.array([[0, 0, -0.8, 10], [0, -0.8, 0, -20], [-2.5, 0, 0, 30], [0, 0, 0, 1.0]])  # KiTS-like
    file_order = _ct()
    reference = io.canonical_volume(file_order.astype(np.float32), affine)
    public = io.Volume(reference.array, reference.affine, reference.file_shape, affine)
    labels = (reference.array > 0).astype(np.uint8)
    path = io.save_label_map(labels, public, tmp_path / "labels.nii.gz")
    back = nib.load(path)
    assert np.allclose(back.affine, affine)
    assert np.array_equal(np.asanyarray(back.dataobj), reference.to_file_order(labels))


@pytest.mark.parametrize(("change", "message"), [
    (lambda a: np.where(a > 500, np.nan, a), "NaN or Inf"),
    (lambda a: a - a.min(), "nothing below 0"),
    (lambda a: a[..., :1], "single slice"),
])
def test_an_array_given_to_the_api_gets_the_checks_a_file_gets(trained_model, change, message):
    from kidneyseg.inference import segment

    with pytest.raises(InvalidInputError, match=message):
        segment(change(_ct().astype(np.float32)), trained_model, affine=np.eye(4))


def test_a_stage_trained_with_other_pipeline_settings_is_refused(phantom_dir, trained_model, tmp_path):
    from kidneyseg.training.fit import fit

    model_dir = tmp_path / "model"
    shutil.copytree(trained_model, model_dir)
    before = (model_dir / "segmenter" / "config.json").read_text()
    other = replace(preset("tiny").pipeline, margin_mm=8.0)
    with pytest.raises(UsageError, match=r"margin_mm: 20\.0 vs 8\.0"):
        fit(phantom_dir, model_dir, micro_stage("segmenter"), other, overwrite=True, progress=False)
    assert (model_dir / "segmenter" / "config.json").read_text() == before  # nothing was written


def test_a_model_directory_whose_stages_disagree_is_refused_with_both_values(trained_model, tmp_path):
    from kidneyseg.inference import load_model_dir

    model_dir = tmp_path / "model"
    shutil.copytree(trained_model, model_dir)
    load_model_dir(model_dir)  # consistent as trained
    config_path = model_dir / "localizer" / "config.json"
    config = json.loads(config_path.read_text())
    config["pipeline"]["margin_mm"] = 8.0
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match=r"localizer.*margin_mm: 8\.0 vs 20\.0"):
        load_model_dir(model_dir)
    proc = run_cli("predict", tmp_path / "missing.nii.gz", tmp_path / "out", "--model", model_dir)
    assert proc.returncode in (3, 4)  # the missing input or the model, each one line


def test_the_cache_is_rebuilt_when_its_code_or_a_setting_changes(phantom_dir, tmp_path, monkeypatch):
    from kidneyseg.training import cache

    cases = io.layout.kits_cases(phantom_dir)
    stage, pipeline = micro_stage("segmenter"), preset("tiny").pipeline
    folder = tmp_path / "cache"

    def build(stage=stage) -> float:
        cache.build_cache(cases, folder, stage, pipeline, progress=False)
        return (folder / "index.json").stat().st_mtime_ns

    first = build()
    assert build() == first  # unchanged: reused
    changed_setting = build(replace(stage, translate_vox=stage.translate_vox + 2))
    assert changed_setting != first
    monkeypatch.setattr(cache, "CODE_HASH", "code after an edit to preprocessing")
    assert build(replace(stage, translate_vox=stage.translate_vox + 2)) != changed_setting


def test_code_hash_covers_the_preprocessing_source():
    from kidneyseg.training.cache import CODE_HASH, CODE_MODULES, code_hash

    assert "kidneyseg.preprocess" in CODE_MODULES and "kidneyseg.geometry" in CODE_MODULES
    assert code_hash() != code_hash(CODE_MODULES[:-1])
    assert code_hash() == CODE_HASH  # taken at import, from the code on disk (unchanged since)


_LIMITED = """
import resource, sys
from kidneyseg import cli
import kidneyseg.batch, kidneyseg.inference, kidneyseg.measure, kidneyseg.report, nibabel, torch  # what predict imports
vm = int([l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 60 * 2**20, resource.RLIM_INFINITY))
sys.exit(cli.main(["predict", sys.argv[1], sys.argv[2], "--model", sys.argv[3]]))
"""


def test_running_out_of_memory_is_a_resource_error_naming_the_case(trained_model, tmp_path):
    """With 60 MiB of address space to spare, a 384 x 384 x 160 CT (90 MiB as float32) cannot be read."""
    import subprocess
    import sys

    ct = tmp_path / "big.nii"
    nib.save(nib.Nifti1Image(_ct((384, 384, 160)), np.diag([0.8, 0.8, 1.5, 1])), ct)
    proc = subprocess.run([sys.executable, "-c", _LIMITED, str(ct), str(tmp_path / "out"), str(trained_model)],
                          capture_output=True, text=True, timeout=300)
    _one_line_error(proc, 5, str(ct), "out of memory", "384 x 384 x 160")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


_TERMINATED_WHILE_WRITING = """
import os, signal, sys
import nibabel
from kidneyseg import cli

# Every NIfTI write (nibabel.save, and to_stream through the gzip writer) goes through to_file_map.
real_write = nibabel.Nifti1Image.to_file_map
def write_then_terminate(image, *args, **kwargs):
    real_write(image, *args, **kwargs)  # the image is in the temp file when SIGTERM arrives
    os.kill(os.getpid(), signal.SIGTERM)
nibabel.Nifti1Image.to_file_map = write_then_terminate
sys.exit(cli.main(["predict", sys.argv[1], sys.argv[2], "--model", sys.argv[3]]))
"""


def test_sigterm_while_writing_leaves_no_temp_file_and_a_rerun_finishes(phantom_dir, trained_model, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", _TERMINATED_WHILE_WRITING, str(phantom_dir), str(out),
                           str(trained_model)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 143, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "STOPPED" in proc.stdout and "interrupted (Terminated)" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == []  # no temp file, no partial output
    rerun = run_cli("predict", phantom_dir, out, "--model", trained_model)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(f"{c.name}.nii.gz" for c in phantom_dir.iterdir())
    assert not list(out.glob(".*"))
