import numpy as np

from kidneyseg.config import PipelineConfig
from kidneyseg.geometry import Box
from kidneyseg.postprocess import clean_labels, hysteresis, kidney_boxes, large_components


def _blob(mask, lo, hi):
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True


def test_components_below_five_percent_of_largest_are_dropped():
    mask = np.zeros((60, 60, 60), bool)
    _blob(mask, (0, 0, 0), (20, 20, 20))  # 8000
    _blob(mask, (30, 30, 30), (50, 50, 48))  # 7200
    _blob(mask, (55, 0, 0), (60, 10, 9))  # 450 (5.6 %: kept)
    _blob(mask, (0, 50, 50), (5, 60, 57))  # 350 (4.4 %: dropped)
    kept, boxes = large_components(mask, 0.05)
    assert boxes == [Box((0, 0, 0), (20, 20, 20)), Box((30, 30, 30), (50, 50, 48)), Box((55, 0, 0), (60, 10, 9))]
    assert not kept[2, 55, 55] and kept[57, 5, 5]
    assert np.array_equal(kept, mask & ~np.pad(np.ones((5, 10, 7), bool), ((0, 55), (50, 0), (50, 3))))


def test_diagonal_touch_is_one_component_with_26_connectivity():
    mask = np.zeros((10, 10, 10), bool)
    _blob(mask, (0, 0, 0), (3, 3, 3))
    _blob(mask, (3, 3, 3), (6, 6, 6))
    assert len(large_components(mask, 0.0)[1]) == 1


def test_empty_mask_has_no_boxes():
    assert large_components(np.zeros((5, 5, 5), bool), 0.05)[1] == []


def test_clean_labels_removes_specks_and_demotes_small_tumours():
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[5:25, 5:25, 5:25] = 1
    labels[10:20, 10:20, 10:20] = 2
    labels[22:23, 22:23, 22:24] = 2  # small tumour inside the kidney -> kidney
    labels[35, 35, 35] = 1  # speck -> background
    out = clean_labels(labels, 0.05)
    assert out[35, 35, 35] == 0 and out[22, 22, 22] == 1 and out[15, 15, 15] == 2
    assert np.count_nonzero(out) == 20**3


def test_components_match_scipy_away_from_the_origin():
    from scipy import ndimage

    rng = np.random.default_rng(3)
    mask = np.zeros((50, 40, 30), bool)
    mask[10:40, 8:35, 5:25] = ndimage.binary_opening(rng.random((30, 27, 20)) > 0.55)
    kept, boxes = large_components(mask, 0.0)
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    expected = sorted(((sl[0].start, sl[1].start, sl[2].start), (sl[0].stop, sl[1].stop, sl[2].stop))
                      for sl in ndimage.find_objects(labels))
    assert len(boxes) == count and sorted((b.lo, b.hi) for b in boxes) == expected
    assert np.array_equal(kept, mask)


def test_components_of_a_full_size_mask_use_one_byte_per_voxel():
    """A full-resolution CT has up to 0.28 G voxels: the only full-size array made is a boolean one
    (a uint32 component map would be 4 bytes a voxel, 1.1 GB for the largest KiTS19 case)."""
    import tracemalloc

    mask = np.zeros((256, 256, 160), bool)
    mask[100:140, 100:130, 60:90] = True
    tracemalloc.start()
    kept, _ = large_components(mask, 0.05)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert kept.dtype == bool and np.array_equal(kept, mask)
    assert peak < 1.5 * mask.size


def test_kidney_boxes_of_a_window_equal_those_of_the_whole_mask():
    """A mask given as its nonzero window (origin and the grid's shape) gives the whole mask's boxes,
    with the boxes' growth and shifting at the grid's edges too (a kidney at the volume's border)."""
    mask = np.zeros((90, 80, 70), bool)
    _blob(mask, (2, 10, 30), (20, 30, 69))
    _blob(mask, (50, 40, 5), (75, 60, 30))
    _blob(mask, (60, 5, 60), (62, 7, 62))  # a speck, dropped
    for cfg in (PipelineConfig(), PipelineConfig(margin_mm=8.0, min_box_mm=51.2)):
        whole = kidney_boxes(mask, cfg, (0.8, 0.8, 2.5))
        window = kidney_boxes(mask[2:75, 5:60, 5:70], cfg, (0.8, 0.8, 2.5), origin=(2, 5, 5), shape=mask.shape)
        assert window == whole and len(whole) == 2


def test_hysteresis_keeps_weak_voxels_joined_to_a_core_only():
    core, weak = np.zeros((30, 30, 30), bool), np.zeros((30, 30, 30), bool)
    _blob(core, (5, 5, 5), (10, 10, 10))
    _blob(weak, (10, 5, 5), (16, 10, 10))  # touches the core's face: kept
    _blob(weak, (16, 10, 10), (18, 12, 12))  # touches the bulge only at a corner (26-connected): kept
    _blob(weak, (25, 25, 25), (28, 28, 28))  # an island: dropped
    out = hysteresis(core, weak)
    assert out.dtype == bool and out.sum() == 125 + 150 + 8
    assert out[12, 7, 7] and out[17, 11, 11] and not out[26, 26, 26]
    assert not hysteresis(np.zeros_like(core), weak).any()
