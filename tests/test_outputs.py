"""Reading network outputs: softmax classes or nested sigmoid regions, the same in training and inference."""

import numpy as np
import pytest
import torch

from kidneyseg.config import preset
from kidneyseg.model import IsenseeUNet
from kidneyseg.outputs import probabilities, region_targets, to_labels
from kidneyseg.weights import build_model


def test_region_rule_puts_tumour_only_inside_kidney_plus_tumour():
    # channels: P(kidney+tumour), P(tumour) for four voxels
    probs = np.array([[0.4, 0.6, 0.6, 0.9],
                      [0.9, 0.9, 0.2, 0.51]], np.float32)[:, :, None, None]
    assert to_labels(probs, regions=True)[:, 0, 0].tolist() == [0, 2, 1, 2]


def test_class_rule_is_argmax():
    probs = np.array([[0.5, 0.1], [0.3, 0.2], [0.2, 0.7]], np.float32)[:, :, None, None]
    assert to_labels(probs, regions=False)[:, 0, 0].tolist() == [0, 2]
    assert to_labels(probs, regions=False).dtype == np.uint8


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_class_rule_equals_numpy_argmax_ties_included(channels):
    rng = np.random.default_rng(channels)
    probs = rng.integers(0, 4, (channels, 9, 8, 7)).astype(np.float32)  # few values: many ties
    assert np.array_equal(to_labels(probs, regions=False), np.argmax(probs, axis=0).astype(np.uint8))


def test_regions_round_trip_labels():
    labels = torch.tensor(np.random.default_rng(0).integers(0, 3, (1, 1, 5, 6, 7)))
    targets = region_targets(labels, 2)
    assert targets.shape == (1, 2, 5, 6, 7)
    assert np.array_equal(to_labels(targets[0], regions=True), labels[0, 0].numpy())
    logits = targets * 20 - 10
    assert torch.allclose(probabilities(logits, True), torch.sigmoid(logits))
    assert torch.allclose(probabilities(logits, False).sum(1), torch.ones(1, 5, 6, 7))


def test_region_segmenter_has_one_channel_per_region():
    from dataclasses import replace

    stage = replace(preset("tiny").segmenter, loss="regions")
    assert stage.network.num_classes == 3 and stage.out_channels == 2
    assert build_model(stage).num_classes == 2
    assert build_model(preset("tiny").segmenter).num_classes == 3


def test_all_scales_starts_with_the_usual_output_and_halves():
    torch.manual_seed(0)
    net = IsenseeUNet(num_classes=3, base_filters=4, levels=4, deep_supervision=3).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    scales = net(x, all_scales=True)
    assert [tuple(s.shape[2:]) for s in scales] == [(16, 16, 16), (8, 8, 8), (4, 4, 4)]
    assert torch.equal(scales[0], net(x))


class _HalfTumour(torch.nn.Module):
    """Region logits: kidney+tumour everywhere, tumour in the lower half of the first axis."""

    def forward(self, x):
        out = torch.full((1, 2, *x.shape[2:]), 10.0)
        out[:, 1, x.shape[2] // 2:] = -10.0
        return out


def test_segment_reads_a_region_segmenter_by_the_region_rule():
    from dataclasses import replace

    from kidneyseg.geometry import Box
    from kidneyseg.inference import TwoStageModel, segment

    tiny = preset("tiny")
    seg_cfg = replace(tiny.segmenter, loss="regions", precision="fp32")
    pipeline = replace(tiny.pipeline, tta_flips=False, resize_probabilities=False)
    model = TwoStageModel(build_model(tiny.localizer), tiny.localizer, _HalfTumour(), seg_cfg, pipeline)
    ct = np.full((40, 40, 40), 40.0, np.float32)
    ct[:, :, :2] = -1000.0  # air below the box: a CT in HU
    box = Box((4, 4, 4), (36, 36, 36))
    labels = segment(ct, model, affine=np.eye(4), boxes=[box]).labels
    assert np.all(labels[4:20, 4:36, 4:36] == 2) and np.all(labels[20:36, 4:36, 4:36] == 1)
    assert np.count_nonzero(labels) == 32**3
