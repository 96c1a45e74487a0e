import json

import pytest

from kidneyseg.config import PRESETS, override, override_preset, preset, stage_from_dict, to_dict
from kidneyseg.errors import UsageError


def test_paper_preset_is_the_published_setting():
    p = preset("paper")
    for stage in (p.localizer, p.segmenter):
        assert stage.input_size == (128, 128, 128) and stage.batch_size == 1
        assert stage.lr == 5e-4 and stage.lr_decay == 0.985 and stage.weight_decay == 1e-5
        assert stage.network.base_filters == 16 and stage.network.levels == 5 and stage.network.dropout == 0.3
        assert stage.loss == "dice" and stage.flip_prob > 0 and stage.rotate_deg > 0
    assert p.localizer.class_weights == (0.01, 0.99) and p.segmenter.class_weights == (0.01, 0.14, 0.85)
    assert (p.pipeline.hu_min, p.pipeline.hu_max) == (-95, 155)
    assert (p.pipeline.margin_vox, p.pipeline.min_box_vox, p.pipeline.min_region_fraction) == (10, 64, 0.05)
    assert p.segmenter.translate_vox > 0


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_roundtrip_through_json(name):
    for stage in (preset(name).localizer, preset(name).segmenter):
        assert stage_from_dict(json.loads(json.dumps(to_dict(stage)))) == stage


def test_overrides_parse_types_and_nested_keys():
    stage = override(preset("tiny").segmenter, ["epochs=7", "input_size=32,32,32", "network.base_filters=4",
                                                "lr=0.01"])
    assert stage.epochs == 7 and stage.input_size == (32, 32, 32) and stage.network.base_filters == 4
    assert stage.lr == 0.01


@pytest.mark.parametrize("bad", ["epochs", "nope=1", "epochs=x", "input_size=30,30,30", "class_weights=1,2,3",
                                 "network.levels=1"])
def test_bad_overrides_are_usage_errors(bad):
    with pytest.raises(UsageError):
        override(preset("tiny").localizer, [bad])


@pytest.mark.parametrize("bad", ["box_threshold=0.6", "box_threshold=0", "refine_boxes=-1"])
def test_box_settings_outside_their_range_are_usage_errors(bad):
    with pytest.raises(UsageError, match=bad.split("=")[0]):
        override(preset("tiny").pipeline, [bad])


@pytest.mark.parametrize("bad", ["cut_box_prob=1.5", "cut_box_prob=-0.1", "class_curve_prob=1.2",
                                 "class_curve_prob=-0.5"])
def test_augmentation_chance_outside_zero_to_one_is_a_usage_error(bad):
    with pytest.raises(UsageError, match=bad.split("=")[0]):
        override(preset("tiny").segmenter, [bad])


@pytest.mark.parametrize("bad", ["empty_fraction=1.0", "empty_fraction=-0.1"])
def test_empty_crops_are_a_segmenter_share_below_one(bad):
    with pytest.raises(UsageError, match="empty_fraction < 1"):
        override(preset("tiny").segmenter, [bad])
    with pytest.raises(UsageError, match="empty_fraction is a segmenter setting"):
        override(preset("tiny").localizer, ["empty_fraction=0.1"])
    assert override(preset("tiny").segmenter, ["empty_fraction=0.1"]).empty_fraction == 0.1


@pytest.mark.parametrize("bad", ["phase_texture=0.2,0.1", "phase_texture=-0.1,0.2", "phase_texture=0.2"])
def test_phase_texture_must_be_a_range_from_zero(bad):
    with pytest.raises(UsageError, match="phase_texture"):
        override(preset("tiny").segmenter, [bad])
    assert override(preset("tiny").segmenter, ["phase_texture=0,0.2"]).phase_texture == (0.0, 0.2)


@pytest.mark.parametrize("bad", ["phase_offset=0.3,-0.1", "phase_offset=0.1", "phase_offset=0,0.1,0.2"])
def test_phase_offset_must_be_a_range(bad):
    with pytest.raises(UsageError, match="phase_offset"):
        override(preset("tiny").segmenter, [bad])
    assert override(preset("tiny").segmenter, ["phase_offset=-0.6,0.3"]).phase_offset == (-0.6, 0.3)


def test_stage_prefixed_overrides_reach_that_stage_alone():
    assignments = ["lr=1e-3", "localizer.tumor_look_prob=0.3", "segmenter.phase_prob=0.6", "pipeline.hu_max=304"]
    localizer, pipeline = override_preset(preset("small"), "localizer", assignments)
    segmenter, _ = override_preset(preset("small"), "segmenter", assignments)
    assert localizer.lr == segmenter.lr == 1e-3 and pipeline.hu_max == 304
    assert (localizer.tumor_look_prob, localizer.phase_prob) == (0.3, preset("small").localizer.phase_prob)
    assert (segmenter.phase_prob, segmenter.tumor_look_prob) == (0.6, preset("small").segmenter.tumor_look_prob)
    with pytest.raises(UsageError, match="localiser"):
        override_preset(preset("small"), "localizer", ["localiser.lr=1"])


def test_unknown_preset():
    with pytest.raises(UsageError, match="unknown preset"):
        preset("huge")
