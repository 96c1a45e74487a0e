"""ONNX export and the onnxruntime backend: the same labels as PyTorch through the same pipeline."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

from kidneyseg import io
from kidneyseg.errors import ModelFileError, UsageError
from kidneyseg.evaluation import case_scores
from kidneyseg.inference import load_model_dir, segment

pytest.importorskip("onnxruntime", reason="the 'onnx' extra is not installed")


@pytest.fixture(scope="module")
def exported(trained_model, tmp_path_factory):
    from kidneyseg.export import export_onnx

    return export_onnx(trained_model, tmp_path_factory.mktemp("onnx") / "model")


def test_onnxruntime_gives_the_labels_pytorch_gives(trained_model, exported, phantom_dir):
    assert sorted(p.name for p in exported.iterdir()) == ["data_profile.json", "localizer.onnx", "pipeline.json",
                                                           "segmenter.onnx"]
    torch_model = load_model_dir(trained_model, precision="fp32")
    onnx_model = load_model_dir(exported, backend="onnxruntime")
    assert onnx_model.segmenter_config.input_size == torch_model.segmenter_config.input_size
    assert onnx_model.pipeline == torch_model.pipeline and onnx_model.data_profile == torch_model.data_profile
    for case in io.layout.kits_cases(phantom_dir):
        image = io.load_ct(case.image)
        a, b = segment(image, torch_model).labels, segment(image, onnx_model).labels
        assert a.any()
        scores = case_scores(b, a)
        assert scores["kidney_tumor"] >= 0.999 and np.count_nonzero(a != b) <= 0.001 * np.count_nonzero(a)


def test_export_refuses_a_used_folder_and_predict_names_a_missing_network(trained_model, exported, tmp_path):
    from kidneyseg.export import export_onnx

    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("mine")
    with pytest.raises(UsageError, match="not an empty folder"):
        export_onnx(trained_model, tmp_path / "used")
    assert (tmp_path / "used" / "x").read_text() == "mine"
    with pytest.raises(ModelFileError, match="pipeline.json missing"):
        load_model_dir(exported.parent, backend="onnxruntime")  # a folder without the networks
    with pytest.raises(ModelFileError, match="localizer.onnx missing"):
        load_model_dir(trained_model, backend="onnxruntime")  # a PyTorch model directory


def test_a_missing_extra_is_named(trained_model, tmp_path, monkeypatch):
    from kidneyseg.export import export_onnx

    real_import = builtins.__import__

    def no_onnxscript(name, *args, **kwargs):
        if name == "onnxscript":
            raise ImportError("No module named 'onnxscript'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxscript)
    with pytest.raises(UsageError, match=r"'onnx' extra"):
        export_onnx(trained_model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_export_then_predict_with_onnxruntime(trained_model, phantom_dir, tmp_path):
    from test_reliability import run_cli

    proc = run_cli("export", str(trained_model), str(tmp_path / "onnx"), "--format", "onnx")
    assert proc.returncode == 0, proc.stderr
    image = phantom_dir / "case_00001" / "imaging.nii.gz"
    proc = run_cli("predict", str(image), str(tmp_path / "out"), "--model", str(tmp_path / "onnx"),
                   "--backend", "onnxruntime", "--no-qa")
    assert proc.returncode == 0, proc.stderr
    assert io.load_label_map(tmp_path / "out" / "imaging.nii.gz").array.any()
