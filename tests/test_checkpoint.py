import json
import os
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from kidneyseg.config import override, preset, to_dict
from kidneyseg.errors import ModelFileError
from kidneyseg.model import place
from kidneyseg.training.checkpoint import load_state, save_state
from kidneyseg.weights import build_model, load_model, save_weights


def _stage():
    return override(preset("tiny").localizer, ["input_size=16,16,16", "network.base_filters=2",
                                               "network.deep_supervision=2", "network.levels=3"])


class _Payload:
    """Unpickling this object would create a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_weights_roundtrip_rebuilds_the_model(tmp_path):
    stage = _stage()
    model = build_model(stage)
    path = save_weights(tmp_path / "best.safetensors", model, stage, epoch=3)
    loaded, stage2, meta = load_model(path)
    assert stage2 == stage and meta == {"epoch": 3}
    x = torch.randn(1, 1, 16, 16, 16)
    model.eval()
    assert torch.equal(model(x), loaded(x))


def test_channels_last_model_saves_plain_weights_and_predicts_the_same(tmp_path):
    stage = _stage()
    torch.manual_seed(0)
    model = build_model(stage).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    expected = model(x)
    placed = place(build_model(stage), "cpu")
    placed.load_state_dict(model.state_dict())
    placed.eval()
    conv = next(m for m in placed.modules() if isinstance(m, torch.nn.Conv3d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d) and not conv.weight.is_contiguous()
    torch.testing.assert_close(placed(x), expected, rtol=1e-4, atol=1e-4)
    loaded, _, _ = load_model(save_weights(tmp_path / "w.safetensors", placed, stage))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


@pytest.mark.parametrize("loader", [load_model, load_state])
def test_pickle_payload_is_refused_and_never_runs(tmp_path, loader):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.safetensors"
    with open(path, "wb") as handle:
        pickle.dump({"weights": _Payload(marker)}, handle)
    torch_path = tmp_path / "evil.pt"
    torch.save({"weights": _Payload(marker)}, torch_path)
    for candidate in (path, torch_path):
        with pytest.raises(ModelFileError) as info:
            loader(candidate)
        assert info.value.exit_code == 4 and str(candidate) in str(info.value)
    assert not marker.exists()


def test_truncated_weights_are_refused(tmp_path):
    stage = _stage()
    path = save_weights(tmp_path / "w.safetensors", build_model(stage), stage)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="not a valid safetensors"):
        load_model(path)


def test_weights_of_another_architecture_are_refused(tmp_path):

    stage = _stage()
    path = save_weights(tmp_path / "w.safetensors", build_model(stage), stage)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    other = override(stage, ["network.base_filters=3"])


    metadata["config"] = json.dumps(to_dict(other))
    save_file(load_file(str(path)), str(path), metadata=metadata)
    with pytest.raises(ModelFileError, match="do not fit the architecture"):
        load_model(path)


def test_training_state_roundtrip(tmp_path):
    state = {"epoch": 4, "torch_rng": torch.get_rng_state(), "log": [{"epoch": 1, "train_loss": 0.5}]}
    save_state(tmp_path / "s.pt", state)
    back = load_state(tmp_path / "s.pt")
    assert back["epoch"] == 4 and torch.equal(back["torch_rng"], state["torch_rng"]) and back["log"] == state["log"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.pt"]
