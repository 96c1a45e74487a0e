import numpy as np
import pytest

from kidneyseg.geometry import (
    Box,
    bounding_box,
    crop,
    expand_box,
    nearest_indices,
    paste_max,
    resize_image,
    resize_labels,
    uncrop,
    upsampled_window,
)


def test_bounding_box_is_tight_and_half_open():
    mask = np.zeros((10, 12, 8), bool)
    mask[2:5, 3, 1:7] = True
    assert bounding_box(mask) == Box((2, 3, 1), (5, 4, 7))
    with pytest.raises(ValueError):
        bounding_box(np.zeros((4, 4, 4), bool))


def test_margin_is_ten_voxels_when_box_is_big_enough():
    box = Box((100, 100, 100), (180, 190, 170))
    assert expand_box(box, 10, 64, (512, 512, 512)) == Box((90, 90, 90), (190, 200, 180))


def test_minimum_side_grows_evenly_around_centre():
    box = Box((100, 200, 50), (110, 230, 60))  # 10 x 30 x 10 -> +20 margin -> 30 x 50 x 30 -> 64 each
    out = expand_box(box, 10, 64, (512, 512, 512))
    assert out.size_vox == (64, 64, 64)
    assert out.lo == (100 - 10 - 17, 200 - 10 - 7, 50 - 10 - 17)


def test_box_is_shifted_inside_at_the_edge_and_still_covers_the_kidney():
    box = Box((0, 500, 3), (20, 512, 30))
    out = expand_box(box, 10, 64, (512, 512, 100))
    assert out.lo[0] == 0 and out.hi[1] == 512 and out.size_vox == (64, 64, 64)
    assert all(o_lo <= b_lo and o_hi >= b_hi for o_lo, b_lo, o_hi, b_hi in zip(out.lo, box.lo, out.hi, box.hi))


def test_box_overhangs_when_volume_is_thinner_than_the_minimum():
    out = expand_box(Box((10, 10, 5), (40, 40, 20)), 10, 64, (200, 200, 34))  # KiTS has 34-slice cases
    assert out.size_vox[2] == 64 and out.lo[2] <= 0 and out.hi[2] >= 34


@pytest.mark.parametrize("box", [Box((-5, 3, -20), (20, 40, 50)), Box((10, 10, 10), (30, 30, 30)),
                                 Box((25, -3, 5), (60, 15, 22))])
def test_crop_uncrop_inverse_at_edges(box):
    rng = np.random.default_rng(0)
    vol = rng.integers(1, 100, (40, 30, 20)).astype(np.int16)
    patch = crop(vol, box, pad_value=-1)
    assert patch.shape == box.size_vox
    inner = box.inside(vol.shape)
    restored = uncrop(patch, box, vol.shape, fill=0)
    region = tuple(slice(lo, hi) for lo, hi in zip(inner.lo, inner.hi, strict=True))  # by hand, not Box.slices
    assert np.array_equal(restored[region], vol[region])
    assert np.count_nonzero(restored) == np.count_nonzero(vol[region])
    assert np.count_nonzero(patch == -1) == patch.size - np.prod(inner.size_vox)


def test_crop_keeps_channel_axes():
    vol = np.arange(2 * 6 * 6 * 6).reshape(2, 6, 6, 6)
    patch = crop(vol, Box((1, 1, 1), (4, 5, 6)))
    assert patch.shape == (2, 3, 4, 5) and np.array_equal(patch, vol[:, 1:4, 1:5, 1:6])


def test_paste_max_prefers_tumour_and_drops_overhang():
    target = np.zeros((10, 10, 10), np.uint8)
    target[0:3, 0:3, 0:3] = 2
    patch = np.ones((6, 6, 6), np.uint8)
    paste_max(target, patch, Box((-2, -2, -2), (4, 4, 4)))
    assert target[1, 1, 1] == 2 and target[3, 3, 3] == 1 and target[4, 4, 4] == 0
    assert np.count_nonzero(target) == 4**3


def test_nearest_indices_align_voxel_centres():
    assert nearest_indices(4, 8).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert nearest_indices(8, 4).tolist() == [1, 3, 5, 7]
    assert nearest_indices(5, 5).tolist() == list(range(5))


def test_resize_labels_roundtrip_and_dtype():
    labels = np.random.default_rng(1).integers(0, 3, (8, 6, 4)).astype(np.uint8)
    up = resize_labels(labels, (16, 12, 8))
    assert up.dtype == np.uint8 and up.shape == (16, 12, 8)
    assert np.array_equal(resize_labels(up, (8, 6, 4)), labels)
    assert set(np.unique(up)) <= {0, 1, 2}


def test_resize_image_is_linear_and_keeps_constant():
    image = np.full((8, 8, 8), 3.5, np.float32)
    out = resize_image(image, (5, 7, 9))
    assert out.shape == (1, 5, 7, 9) and np.allclose(out.numpy(), 3.5)
    ramp = np.broadcast_to(np.arange(8, dtype=np.float32)[:, None, None], (8, 4, 4)).copy()
    mid = resize_image(ramp, (16, 4, 4))[0, :, 0, 0].numpy()
    # linear, pixel centres aligned (align_corners=False): output i samples input x = i / 2 - 0.25,
    # clamped to the edge voxels; a nearest resize would give whole numbers only
    assert mid == pytest.approx(np.clip(np.arange(16) / 2 - 0.25, 0, 7), abs=1e-6)


@pytest.mark.parametrize("shape", [(300, 280, 90), (128, 128, 128), (61, 400, 211)])
def test_upsampled_window_is_the_full_resize_around_its_labels(shape):
    """Enlarging, equal and shrinking axes: the window equals the full nearest resize there, and the
    full resize is zero outside it."""
    rng = np.random.default_rng(sum(shape))
    labels = np.zeros((128, 128, 128), np.uint8)
    labels[30:70, 50:61, 40:90] = rng.integers(0, 3, (40, 11, 50))
    labels[100, 20, 7] = 2
    full = resize_labels(labels, shape)
    window, origin = upsampled_window(labels, shape)
    region = tuple(slice(o, o + n) for o, n in zip(origin, window.shape))
    assert np.array_equal(full[region], window)
    outside = full.copy()
    outside[region] = 0
    assert not outside.any() and window.any()
    assert upsampled_window(np.zeros((8, 8, 8), np.uint8), shape) is None
