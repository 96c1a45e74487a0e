"""Training augmentation: the geometric part of a draw (flips on all three axes, a rotation of axial
slices, optionally a scale and, for stage 2, a shift of the crop box) as a Warp that kidneyseg.stage_input folds into
the draw's one interpolation; with ``intensity_prob`` > 0, intensity changes of the image (shift,
scale, noise, blur), and with ``texture_prob`` > 0 texture changes (gamma, lower resolution), with MONAI;
with ``phase_prob`` > 0 a nephrographic-phase look of the kidney (``homogenise_kidney``), with
``tumor_look_prob`` > 0 another enhancement and texture of the tumour (``redraw_tumour``), and with
``synthetic_tumor_prob`` > 0 (stage 2) a tumour of random size, shape and look drawn into the kidney
(``insert_tumour``), with ``viscera_prob`` > 0 soft tissue in the fat against the kidney (``add_viscera``), and
with ``cut_box_prob`` > 0 (stage 2) a crop box cut short (``cut_box``), and with ``class_curve_prob`` > 0 each class
its own random intensity curve (``class_curves``).

Each call draws from a NumPy RandomState the caller passes in, so a draw's augmentation is fixed by
the generator's seed (kidneyseg.training.data seeds it with (seed, epoch, draw)).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    RandAdjustContrast,
    RandGaussianNoise,
    RandGaussianSmooth,
    RandHistogramShift,
    RandScaleIntensity,
    RandShiftIntensity,
    RandSimulateLowResolution,
)
from scipy import ndimage

from kidneyseg.config import StageConfig
from kidneyseg.geometry import Box
from kidneyseg.labels import KIDNEY, TUMOR
from kidneyseg.stage_input import Warp

# Parenchyma threshold: with the HU window [-79, 304] and a cortex near 200 HU, about 20 HU, above urine
# and sinus fat and below the medulla of the late-arterial phase (65-125 HU).
PHASE_PARENCHYMA = 0.35
# The smoothing (voxels) of the nephrographic kidney's uneven enhancement (StageConfig.phase_texture): about 3 mm
# in the segmenter's 96³ input over a kidney's box, the scale of the independent renderer's parenchyma field.
PHASE_TEXTURE_SIGMA = 2.5
# A redrawn tumour's level: the parenchyma's mean plus this share of its height above the input's floor (with
# the HU window [-79, 304] and a 160 HU kidney: about -7 to 190 HU, from a fluid-like core through hypo-enhancing
# papillary tumours to a clear-cell tumour a little brighter than the kidney), and the share of its own texture
# (around its mean) it keeps.
TUMOUR_LEVEL = (-0.7, 0.15)
TUMOUR_TEXTURE = (0.0, 1.0)
# A synthetic tumour's radius as a share of the kidney's equivalent-sphere radius (log-uniform): for a 150 mL
# kidney about 5 to 20 mm (0.5 to 33 mL), the small tumours the data have fewest of and models miss first.
SYNTHETIC_RADIUS = (0.15, 0.6)
# Its level against the kidney parenchyma's, as a share of the parenchyma's height above the input's floor: darker
# (hypo-enhancing, necrotic or cystic; three draws in four) or brighter (hyper-enhancing), never level with it, so
# that every synthetic tumour is visible; and the SD of its own smooth texture, as a share of that height.
SYNTHETIC_DARKER = (-0.7, -0.08)
SYNTHETIC_BRIGHTER = (0.06, 0.2)
SYNTHETIC_TEXTURE = (0.02, 0.15)
# Soft tissue against the kidney (add_viscera): its level against the kidney parenchyma's mean, as a share of that
# mean's height above the input's floor (for a 180 HU kidney and the HU window [-79, 304]: about 10 to 100 HU, the
# muscle, bowel wall, duodenum and unenhanced organs that lie against kidneys in thin patients); the SD of its smooth
# texture, as a share of that height; how far from the kidney it may lie, and the blobs' smoothness, each as a share
# of the kidney's equivalent-sphere radius; the share of the fat within reach that becomes tissue.
VISCERA_LEVEL = (-0.65, -0.3)
VISCERA_TEXTURE = (0.0, 0.05)
VISCERA_REACH = (0.3, 1.2)
VISCERA_SMOOTHNESS = (0.2, 0.5)
VISCERA_SHARE = (0.2, 0.7)
# Fat: background voxels whose blur over one voxel (kidney and tumour taken as the floor) is below this share of
# the way from the input's floor to the kidney's 90th percentile (fat lies at the floor of the HU window
# [-79, 304]; water at about a fifth of the way).
VISCERA_FAT = 0.12
# How far a cut face of a crop box moves inwards, as a share of the box's side.
CUT_SHARE = (0.1, 0.4)
# The control points (fewest, most) of each class's intensity curve (class_curves): with fewer the curve bends more.
CURVE_POINTS = (3, 5)


def draw_warp(stage: StageConfig, rng: np.random.RandomState) -> Warp:
    """Flips (each axis with ``flip_prob``), a uniform axial rotation in [-rotate_deg, rotate_deg], with
    ``scale_range`` a log-uniform scale, and, for the segmenter, a whole-voxel shift in
    [-translate_vox, translate_vox] per axis."""
    flip = tuple(bool(f) for f in rng.random_sample(3) < stage.flip_prob)
    angle = math.radians(rng.uniform(-stage.rotate_deg, stage.rotate_deg)) if stage.rotate_deg else 0.0
    shift = (0.0, 0.0, 0.0)
    if stage.stage == "segmenter" and stage.translate_vox:
        shift = tuple(float(v) for v in rng.randint(-stage.translate_vox, stage.translate_vox + 1, size=3))
    scale = 1.0
    if stage.scale_range:
        scale = float(np.exp(rng.uniform(-1, 1) * np.log1p(stage.scale_range)))
    return Warp(shift, angle, flip, scale)


def cut_box(box: Box, rng: np.random.RandomState) -> Box:
    """``box`` with one face (two with chance 1/2, on different axes) moved inwards by a share of the box's side
    drawn from CUT_SHARE: the crop a localizer gives when it misses part of the kidney or tumour, which then
    runs into the crop's face. The crop is resampled to the network's input as every box is, so the part
    still in it is seen somewhat larger, as at inference."""
    axes = rng.permutation(3)[: 1 + int(rng.random_sample() < 0.5)]
    sides, shares = rng.randint(0, 2, size=2), rng.uniform(*CUT_SHARE, size=2)
    lo, hi = list(box.lo), list(box.hi)
    for axis, side, share in zip(axes, sides[: len(axes)], shares[: len(axes)], strict=True):
        step = max(1, int(round(share * box.size_vox[axis])))
        if side == 0:
            lo[axis] += step
        else:
            hi[axis] -= step
    return Box(tuple(lo), tuple(hi))


def make_intensity(stage: StageConfig) -> Compose | None:
    """Each applied with chance ``intensity_prob``, on the normalised image (z-scored over the clipped HU
    window, where one unit is roughly 100 HU): shift by up to +-0.2 (about +-20 HU, a global HU offset),
    scale by up to +-15 % (contrast timing), Gaussian noise of SD up to 0.1 (about 10 HU, added to
    the noise already in the scan) and Gaussian blur of 0.5-1 voxel (partial volume, soft kernels).
    Then each with chance ``texture_prob`` (nnU-Net's texture augmentations): a gamma curve with
    gamma in [0.7, 1.5] on the image scaled to [0, 1], its mean and SD restored (contrast between
    tissues changes, not the overall level), and a simulated lower resolution (the image resized down
    to 0.5-1 of its size, nearest, and back up, trilinear: the fine texture of a soft kernel or thick
    slices). The paper uses none of these; they keep a model from fitting one scanner's (or
    renderer's) look. None when both chances are 0."""
    prob, texture = stage.intensity_prob, stage.texture_prob
    transforms = []
    if prob:
        transforms += [RandShiftIntensity(offsets=0.2, prob=prob), RandScaleIntensity(factors=0.15, prob=prob),
                       RandGaussianNoise(std=0.1, prob=prob),
                       RandGaussianSmooth(sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=prob)]
    if texture:
        transforms += [RandAdjustContrast(gamma=(0.7, 1.5), retain_stats=True, prob=texture),
                       RandSimulateLowResolution(zoom_range=(0.5, 1.0), prob=texture)]
    return Compose(transforms) if transforms else None


def augment_intensity(transform: Compose, image: torch.Tensor, rng: np.random.RandomState) -> torch.Tensor:
    transform.set_random_state(state=rng)
    out = transform(image)
    # MONAI returns MetaTensors; their __torch_function__ hook on every operation of the network's
    # forward and backward passes made training steps about 1.5x slower, so hand back a plain tensor.
    plain = out.as_tensor() if isinstance(out, MetaTensor) else out
    return plain.contiguous()


def homogenise_kidney(image: torch.Tensor, label: torch.Tensor, rng: np.random.RandomState,
                      sinus: bool = False, offset: tuple[float, float] = StageConfig.phase_offset,
                      texture: tuple[float, float] = StageConfig.phase_texture) -> torch.Tensor:
    """The kidney (label 1) as it looks in the nephrographic phase, when cortex and medulla enhance alike.

    The parenchyma (``_parenchyma``: not the sinus fat or urine that KiTS labels include) becomes its mean,
    moved by an offset drawn uniformly from ``offset`` (StageConfig.phase_offset), plus fresh noise of the
    image's own level (``_noise_sd``) and, where ``texture`` (StageConfig.phase_texture) is not (0, 0), a
    field smoothed over PHASE_TEXTURE_SIGMA voxels with an SD drawn uniformly from it; blended by the kidney
    mask blurred over one voxel, so that the kidney's outline stays as soft as the scan made it. With
    ``sinus`` every label-1 voxel does, the sinus fat and urine too: a kidney whose label holds no darker
    hilum (label maps that leave the hilum out, or a scan that shows none), which would otherwise be told
    from a tumour by that alone. Tumour (label 2) and everything else are untouched.
    Without it, a renderer of the late-arterial phase (or KiTS19's late-arterial scans) teaches that a
    kidney without the pattern is tumour. The localizer's samples keep kidney and tumour apart until they
    are drawn, so that there too only the kidney is flattened.
    """
    kidney = (label[0] == KIDNEY).numpy()
    shift = rng.uniform(*offset)
    noise = rng.standard_normal(kidney.shape).astype(np.float32)
    found = _kidney_parenchyma(image, kidney)
    if found is None:
        return image
    x, parenchyma, _ = found
    changed = kidney if sinus else parenchyma
    target = float(x[parenchyma].mean()) + shift + _noise_sd(x, label, kidney) * noise[changed]
    if texture[1] > 0:  # drawn only when asked, so that a flat kidney's draws stay as they were
        field = _smooth_unit(rng.standard_normal(kidney.shape).astype(np.float32), PHASE_TEXTURE_SIGMA)
        target = target + rng.uniform(*texture) * field[changed]
    return _blend(x, kidney, changed, target)


def redraw_tumour(image: torch.Tensor, label: torch.Tensor, rng: np.random.RandomState) -> torch.Tensor:
    """The tumour (label 2) with another enhancement and a smoother texture, as tumours of other types,
    phases and scanners look (papillary tumours enhance less than clear-cell ones; necrosis and cysts
    are darker still).

    Its level becomes the kidney parenchyma's mean (``_parenchyma``) plus a share, drawn from
    TUMOUR_LEVEL, of that mean's height above the input's floor; it keeps a share, drawn from
    TUMOUR_TEXTURE, of its own texture around its mean, and fresh noise of the image's level
    (``_noise_sd``) makes up the rest of the voxel noise; blended by the tumour mask blurred over one
    voxel. Kidney and everything else are untouched; a sample without tumour or parenchyma is returned
    as it is. In the localizer it teaches that a kidney-or-tumour region can hold a tumour of any look.
    """
    tumour, kidney = (label[0] == TUMOR).numpy(), (label[0] == KIDNEY).numpy()
    level, keep = rng.uniform(*TUMOUR_LEVEL), rng.uniform(*TUMOUR_TEXTURE)
    noise = rng.standard_normal(tumour.shape).astype(np.float32)
    found = _kidney_parenchyma(image, kidney) if tumour.any() else None
    if found is None:
        return image
    x, parenchyma, _ = found
    floor, kidney_level, own = float(x.min()), float(x[parenchyma].mean()), x[tumour]
    fresh = _noise_sd(x, label, tumour) * np.sqrt(1.0 - keep**2) * noise[tumour]
    target = kidney_level + level * (kidney_level - floor) + keep * (own - own.mean()) + fresh
    return _blend(x, tumour, tumour, target)


def insert_tumour(image: torch.Tensor, label: torch.Tensor, rng: np.random.RandomState,
                  tumour_label: int = TUMOR) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, label) with a synthetic tumour drawn into the kidney, labelled ``tumour_label``.

    Renderers and scanners differ in how a tumour looks, not in the fact that it is a roundish region of
    other tissue growing from the parenchyma. The tumour is centred on a random parenchyma voxel
    (``_parenchyma``); its radius is a share of the kidney's equivalent-sphere radius (SYNTHETIC_RADIUS),
    stretched by up to a third per axis and its outline roughened by a smooth random field, so it may bulge
    out of the kidney's outline as exophytic tumours do. Its level is the parenchyma's mean plus a share of
    that mean's height above the input's floor (SYNTHETIC_DARKER or SYNTHETIC_BRIGHTER), with a smooth texture
    (SYNTHETIC_TEXTURE) and fresh noise of the image's level (``_noise_sd``), blended by its mask blurred over
    one voxel. Every voxel of it becomes ``tumour_label``; voxels of a real tumour keep their look. Synthetic tumours
    add the small tumours the data have few of (Hu et al. 2023 trained liver-tumour models on synthetic
    tumours alone). A sample without kidney parenchyma is returned as it is.
    """
    share = float(np.exp(rng.uniform(*np.log(SYNTHETIC_RADIUS))))
    stretch = rng.uniform(0.75, 1.33, size=3)
    level = rng.uniform(*SYNTHETIC_DARKER) if rng.random_sample() < 0.75 else rng.uniform(*SYNTHETIC_BRIGHTER)
    texture_sd, pick = rng.uniform(*SYNTHETIC_TEXTURE), rng.random_sample()
    fields = rng.standard_normal((3, *label.shape[1:])).astype(np.float32)  # outline, texture, voxel noise
    kidney = (label[0] == KIDNEY).numpy()
    found = _kidney_parenchyma(image, kidney)
    if found is None:
        return image, label
    x, parenchyma, _ = found
    centre = np.argwhere(parenchyma)[int(pick * np.count_nonzero(parenchyma))]
    radius = share * _equivalent_radius(kidney) * stretch
    reach = np.ceil(1.3 * radius).astype(int) + 2
    box = tuple(slice(max(0, c - r), min(n, c + r + 1)) for c, r, n in zip(centre, reach, kidney.shape, strict=True))
    grid = np.ogrid[box]
    distance = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius, strict=True)))
    outline = _smooth_unit(fields[0][box], max(1.0, float(radius.mean()) / 2))
    blob = np.zeros_like(kidney)
    blob[box] = distance + 0.15 * outline <= 1
    blob &= (label[0] != TUMOR).numpy()  # a real tumour keeps its own look
    if not blob.any():
        return image, label
    floor, kidney_level = float(x.min()), float(x[parenchyma].mean())
    height = kidney_level - floor
    texture = _smooth_unit(fields[1][box], 1.5)[blob[box]]
    target = (kidney_level + level * height + texture_sd * height * texture
              + _noise_sd(x, label, kidney) * fields[2][blob])
    out_label = label.clone()
    out_label[0][torch.from_numpy(blob)] = tumour_label
    return _blend(x, blob, blob, target), out_label


def add_viscera(image: torch.Tensor, label: torch.Tensor, rng: np.random.RandomState) -> torch.Tensor:
    """The image with part of the fat near the kidney replaced by smooth blobs of soft tissue, labelled background.

    The phantoms wrap every kidney in perirenal fat; in real abdomens muscle, bowel, the duodenum, the pancreas,
    liver and spleen often lie against a kidney with no fat between, at soft-tissue levels a hypo-enhancing tumour
    shares. A model that has only seen fat around kidneys takes such tissue for kidney or tumour. Here the fat
    (background voxels near the input's floor, VISCERA_FAT) within reach of the kidney and tumour (VISCERA_REACH
    of the kidney's equivalent-sphere radius) where a smooth random field (VISCERA_SMOOTHNESS of that radius) is
    highest (VISCERA_SHARE of it) becomes tissue at a level below the parenchyma's (VISCERA_LEVEL) with a smooth
    texture (VISCERA_TEXTURE) and fresh noise of the image's level (``_noise_sd``), blended by its mask and the
    kidney's blurred over one voxel, so that it meets the kidney without a seam of fat, as such organs do. Labels
    are untouched. A sample without kidney parenchyma or fat within reach is returned as it is.
    """
    level, texture_sd = rng.uniform(*VISCERA_LEVEL), rng.uniform(*VISCERA_TEXTURE)
    reach_share, smooth_share, share = (rng.uniform(*r) for r in (VISCERA_REACH, VISCERA_SMOOTHNESS, VISCERA_SHARE))
    fields = rng.standard_normal((3, *label.shape[1:])).astype(np.float32)  # blobs, texture, voxel noise
    kidney, organ = (label[0] == KIDNEY).numpy(), (label[0] > 0).numpy()
    found = _kidney_parenchyma(image, kidney)
    if found is None:
        return image
    x, parenchyma, top = found
    floor, kidney_level = float(x.min()), float(x[parenchyma].mean())
    height = top - floor
    radius = _equivalent_radius(kidney)
    near = ndimage.distance_transform_edt(~organ) <= max(1.0, reach_share * radius)
    # Blurred with the kidney and tumour at the floor, so that the fat right against them, brightened by the
    # scan's blur of the kidney, still counts as fat and the tissue can touch the kidney.
    smooth = ndimage.gaussian_filter(np.where(organ, floor, x), 1.0)
    fat = near & ~organ & (smooth < floor + VISCERA_FAT * height)
    if not fat.any():
        return image
    blobs = _smooth_unit(fields[0], max(1.0, smooth_share * radius))
    tissue = fat & (blobs >= np.quantile(blobs[fat], 1.0 - share))
    if not tissue.any():
        return image
    target = (kidney_level + level * (kidney_level - floor) + texture_sd * height * _smooth_unit(fields[1], 1.5)[tissue]
              + _noise_sd(x, label, kidney) * fields[2][tissue])
    # Blended by tissue and organ together: no darker seam is left where the tissue meets the kidney.
    return _blend(x, tissue | organ, tissue, target)


def class_curves(image: torch.Tensor, label: torch.Tensor, rng: np.random.RandomState) -> torch.Tensor:
    """The image with each class (background, kidney, tumour) passed through an intensity curve of its own: the
    class-level location-scale augmentation of SLAug (Su et al., AAAI 2023), which trains for scanners, phases and
    renderers never seen by drawing each class's intensities anew while its shape stays.

    Each curve is MONAI's ``RandHistogramShift`` over the image's range (CURVE_POINTS control points: increasing,
    ends fixed), so a class's level moves against the others' and its texture is flattened or stretched where its
    curve is flat or steep; a kidney's cortex-medulla pattern may go smooth while its tumour keeps or gains texture,
    or the tumour may end brighter than the kidney. Applied to the whole image and blended by the class masks
    blurred over one voxel (weights that sum to one), so that every outline stays as soft as the scan made it.
    Three curves are drawn whatever the sample holds, so that one random state gives one set of curves. Labels
    are untouched; a constant image is returned as it is."""
    x = image[0].numpy()
    classes = label[0].numpy()
    low, high = float(x.min()), float(x.max())
    if high <= low:  # a constant crop: no curve to draw
        return image
    curve = RandHistogramShift(num_control_points=CURVE_POINTS, prob=1.0)
    curve.set_random_state(state=rng)

    def drawn() -> tuple[np.ndarray, np.ndarray]:
        """The next curve's control points in the image's units (MONAI draws them)."""
        curve.randomize()
        return tuple(low + (high - low) * np.asarray(p) for p in (curve.reference_control_points,
                                                                  curve.floating_control_points))

    # np.interp applies a curve: MONAI's own call converts the crop to a tensor and interpolates there, three times
    # slower on a 96³ crop. The blurred masks of all classes sum to one everywhere (the blur of a constant), so the
    # background's weight is what the kidney's and tumour's leave: out = background + sum of weight * (class's curve
    # - background's); a class the crop lacks has its curve drawn, not applied.
    background = np.interp(x, *drawn()).astype(np.float32)
    out = background.copy()
    for value in (KIDNEY, TUMOR):
        points = drawn()
        mask = classes == value
        if mask.any():
            mapped = np.interp(x, *points).astype(np.float32)
            out += ndimage.gaussian_filter(mask.astype(np.float32), 1.0) * (mapped - background)
    return torch.from_numpy(out)[None]


def _smooth_unit(noise: np.ndarray, sigma: float) -> np.ndarray:
    """White noise blurred over ``sigma`` voxels and rescaled to unit SD."""
    smooth = ndimage.gaussian_filter(noise, sigma)
    return smooth / max(float(smooth.std()), 1e-6)


def _equivalent_radius(mask: np.ndarray) -> float:
    """The radius (voxels) of the sphere with as many voxels as ``mask``."""
    return (3 * np.count_nonzero(mask) / (4 * np.pi)) ** (1 / 3)


def _kidney_parenchyma(image: torch.Tensor, kidney: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(the image's (X, Y, Z) array, the kidney's parenchyma mask, the kidney's 90th percentile), or None where
    the sample has no kidney or its kidney no parenchyma: the augmentations that draw relative to the kidney then
    leave the sample as it is."""
    if not kidney.any():
        return None
    x = image[0].numpy()
    parenchyma, top = _parenchyma(x, kidney)
    return (x, parenchyma, top) if parenchyma.any() else None


def _parenchyma(x: np.ndarray, kidney: np.ndarray) -> tuple[np.ndarray, float]:
    """(kidney voxels whose blur over one voxel is above PHASE_PARENCHYMA of the way from the input's lowest
    value (the HU window's floor, where fat and air are) to the kidney's 90th percentile: the parenchyma,
    not the sinus fat or urine that KiTS labels include; that percentile)."""
    floor, top = float(x.min()), float(np.percentile(x[kidney], 90))
    smooth = ndimage.gaussian_filter(x, 1.0)  # decides which voxels are parenchyma without speckle from noise
    return kidney & (smooth > floor + PHASE_PARENCHYMA * (top - floor)), top


def _noise_sd(x: np.ndarray, label: torch.Tensor, fallback: np.ndarray) -> float:
    """The image's voxel noise: a robust SD (1.4826 x the median absolute deviation) of the differences
    between neighbouring voxels outside kidney and tumour, where most tissue is flat, over sqrt(2); inside
    ``fallback`` where nothing is outside."""
    outside = (label[0] == 0).numpy()
    pairs = outside[1:] & outside[:-1] if outside[1:].any() else fallback[1:] & fallback[:-1]
    steps = np.diff(x, axis=0)[pairs]
    return 1.4826 * float(np.median(np.abs(steps - np.median(steps)))) / np.sqrt(2) if steps.size else 0.0


def _blend(x: np.ndarray, region: np.ndarray, changed: np.ndarray, target: np.ndarray) -> torch.Tensor:
    """``x`` with the ``changed`` voxels moved to ``target``, weighted by ``region`` blurred over one voxel."""
    weight = ndimage.gaussian_filter(region.astype(np.float32), 1.0)[changed]
    out = x.copy()
    out[changed] += weight * (target - x[changed])
    return torch.from_numpy(out)[None]
