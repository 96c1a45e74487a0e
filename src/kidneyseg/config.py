"""Settings as frozen, validated dataclasses; presets; conversion to and from plain dicts.

Every checkpoint and run folder stores the ``to_dict`` form of the settings that made it,
and ``from_dict`` rebuilds them exactly. Presets are data: ``preset(name)`` returns a
``Preset`` that the CLI can override field by field (``--set epochs=20``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from kidneyseg.errors import UsageError

StageName = Literal["localizer", "segmenter"]
STAGES: tuple[StageName, ...] = ("localizer", "segmenter")
LOSSES = ("dice", "dice_ce", "dice_wce", "regions")


@dataclass(frozen=True)
class NetworkConfig:
    """Isensee-2017 U-Net shape (see model.IsenseeUNet)."""

    in_channels: int = 1
    num_classes: int = 2
    base_filters: int = 16
    levels: int = 5
    dropout: float = 0.3
    deep_supervision: int = 3

    def __post_init__(self) -> None:
        _check(self.in_channels >= 1 and self.num_classes >= 2, "in_channels >= 1 and num_classes >= 2")
        _check(self.base_filters >= 1 and self.levels >= 2, "base_filters >= 1 and levels >= 2")
        _check(0 <= self.dropout < 1, "0 <= dropout < 1")
        _check(1 <= self.deep_supervision <= self.levels - 1, "1 <= deep_supervision <= levels - 1")


@dataclass(frozen=True)
class StageConfig:
    """How one stage is trained: input size, network, loss, optimiser, augmentation, budget."""

    stage: StageName
    input_size: tuple[int, int, int] = (128, 128, 128)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    class_weights: tuple[float, ...] = (0.01, 0.99)
    # dice: the paper's class-weighted soft Dice; dice_ce: + cross-entropy; dice_wce: + cross-entropy weighted by
    # class_weights; regions: sigmoid outputs for the nested regions label >= 1, label >= 2 ... (kidney+tumour,
    # tumour), soft Dice weighted by class_weights[1:] + binary cross-entropy, as nnU-Net trains KiTS21.
    loss: Literal["dice", "dice_ce", "dice_wce", "regions"] = "dice"
    deep_supervision_loss: bool = False  # False: the loss on the summed output (paper); True: at each decoder scale
    lr: float = 5e-4
    lr_decay: float = 0.985  # exponential schedule: multiplied into the learning rate after every epoch
    lr_schedule: Literal["exponential", "poly"] = "exponential"  # poly: lr * (1 - progress)**0.9 per step (nnU-Net)
    warmup_steps: int = 0  # linear warm-up of the learning rate over the first steps
    optimizer: Literal["adam", "sgd"] = "adam"  # sgd: Nesterov momentum 0.99, as nnU-Net
    weight_decay: float = 1e-5
    batch_size: int = 1
    epochs: int = 300
    samples_per_epoch: int = 0  # 0: one pass over the training samples (localizer: CTs; segmenter: kidney crops)
    val_every: int = 1  # validate after every N-th epoch and after the last; the best is chosen among those
    max_minutes: float = 0.0  # 0: no limit; else stop training (and validation) within a step of this many minutes
    val_fraction: float = 0.2
    flip_prob: float = 0.5  # per axis
    rotate_deg: float = 15.0  # uniform rotation of axial slices in [-rotate_deg, rotate_deg]
    translate_vox: int = 8  # stage 2: random shift of the crop box, per axis, in voxels
    # > 0: the box scaled about its centre by a factor drawn log-uniformly from [1 / (1 + r), 1 + r] (anatomy
    # seen larger or smaller, as at another voxel spacing or crop size); 0: never (the paper)
    scale_range: float = 0.0
    tumor_fraction: float = 0.0  # share of training draws taken from samples with tumour (0: uniform)
    # how those draws choose among the samples with tumour: "uniform", or "volume": in proportion to the tumour's
    # volume in mL (the localizer's zoom or the segmenter's crop), so that the rare large tumours, which a
    # localizer trained on uniform draws cuts off, are drawn more often (on the localizer, 30 % of draws so: recall
    # on those tumours up, but false boxes, in which stage 2 labels kidney, cost the whole pipeline more; 10 %: a
    # gain on the independent renderer in the proxy; in the full run its recall 0.896 -> 0.990, its kidney+tumour
    # 0.743 -> 0.715: README)
    tumor_weight: Literal["uniform", "volume"] = "uniform"
    # stage 2: share of training draws (on average) that are crops beside the kidneys rather than on them: a box of a
    # kidney's size centred in the body next to them, labelled with whatever it holds (mostly nothing), as a false
    # box of the localizer would give the segmenter (kidneyseg.training.cache.empty_boxes). 0: never (the paper;
    # 0.1 for 480 steps did not teach stage 2 to leave such boxes empty: README, benchmarks/false_boxes.py)
    empty_fraction: float = 0.0
    intensity_prob: float = 0.0  # chance of each intensity augmentation (shift, scale, noise, blur) per sample
    # chance of each texture augmentation per sample, as nnU-Net's: a gamma curve (0.7-1.5, mean and SD kept) and a
    # simulated lower resolution (down to 0.5-1 of the size, nearest, and back, trilinear)
    texture_prob: float = 0.0
    # chance per sample of a nephrographic-phase look: the kidney's (label 1) corticomedullary pattern smoothed
    # away, its voxel noise kept (kidneyseg.training.augment.homogenise_kidney); 0: never (the paper)
    phase_prob: float = 0.0
    # the nephrographic kidney's level against the mean of its corticomedullary voxels, drawn uniformly from this
    # range (normalised units, about 100 HU each): (-0.1, 0.3) about as bright as that mean or like the cortex; a
    # lower first value also draws kidneys dimmer than their tumours, as weaker or later enhancement shows them
    # ((-0.6, 0.3) did worse on both renderers in the recipe proxy: README)
    phase_offset: tuple[float, float] = (-0.1, 0.3)
    # the SD of a smooth field (over about 3 mm) added to the nephrographic kidney, drawn uniformly from this
    # range (normalised units, about 100 HU each): parenchyma that enhances unevenly, as the independent renderer's
    # kidneys do (SD 6.7-9.4 HU after smoothing over 3 mm, `benchmarks/phantom_difficulty.py --texture`; the
    # training renderer's tumours 3.7-49 HU, its flattened kidneys only voxel noise, which that blur removes: a
    # flat kidney teaches that any slow variation is tumour); (0, 0): flat, only the voxel noise (the default)
    phase_texture: tuple[float, float] = (0.0, 0.0)
    # chance that a nephrographic look also fills the sinus fat and urine inside label 1 with the parenchyma's level
    # (a kidney label without a darker hilum); 0: the sinus stays as drawn
    phase_sinus_prob: float = 0.0
    # chance per sample of another tumour look: the tumour's (label 2) level redrawn relative to the kidney's, from
    # much darker to a little brighter, its texture partly smoothed (kidneyseg.training.augment.redraw_tumour)
    tumor_look_prob: float = 0.0
    # stage 2: chance per sample of a synthetic tumour drawn into the kidney: random size (mostly small), outline and
    # look, labelled tumour (kidneyseg.training.augment.insert_tumour); 0: never (the paper). The localizer ignores
    # it: in the demo, a localizer trained with it found a false second region on one held-out case
    synthetic_tumor_prob: float = 0.0
    # chance per sample of soft tissue against the kidney: part of the fat within reach of the kidney and tumour
    # becomes smooth blobs of soft tissue (muscle, bowel, duodenum, pancreas: about 10-100 HU for a 180 HU kidney) that
    # may touch it, labelled background (kidneyseg.training.augment.add_viscera); 0: never (the paper)
    viscera_prob: float = 0.0
    # chance per sample of an intensity curve of its own for each class (background, kidney, tumour): SLAug's
    # class-level location-scale augmentation (kidneyseg.training.augment.class_curves), which redraws how each class
    # looks while its shape stays, for renderers, scanners and phases never seen; 0: never (the paper)
    class_curve_prob: float = 0.0
    # stage 2: chance per sample of a crop box cut short: one or two of its faces moved inwards by 10-40 % of its
    # side (kidneyseg.training.augment.cut_box), so the kidney or its tumour runs into the crop's face, as where the
    # localizer missed part of a large tumour; the network learns to label up to the face, which
    # pipeline.refine_boxes reads as "the box is too small here". 0: never (the paper)
    cut_box_prob: float = 0.0
    # stage 2: each crop shifted in level so that the 75th percentile of its kidney-and-tumour voxels reads 200 HU
    # (kidneyseg.stage_input.level_shift): in training from the true labels, in prediction from a first pass of
    # stage 2 (no flips) on the crop as it is, then the labels of a second pass on the shifted crop. A kidney then
    # reads alike whatever its enhancement, and a tumour by its level against the kidney. False: the crop as
    # normalised (the paper)
    level_reference: bool = False
    # bf16: autocast matrix work to bfloat16 (weights stay fp32); fp16: float16 with a gradient scaler, for GPUs
    # without bf16
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", tuple(int(n) for n in self.input_size))
        object.__setattr__(self, "class_weights", tuple(float(w) for w in self.class_weights))
        object.__setattr__(self, "phase_offset", tuple(float(v) for v in self.phase_offset))
        object.__setattr__(self, "phase_texture", tuple(float(v) for v in self.phase_texture))
        _check(self.stage in STAGES, f"stage must be one of {STAGES}")
        _check(len(self.input_size) == 3, "input_size has 3 values")
        divisor = 2 ** (self.network.levels - 1)
        _check(all(n % divisor == 0 for n in self.input_size),
               f"input_size {self.input_size} divisible by 2**(levels-1) = {divisor}")
        _check(len(self.class_weights) == self.network.num_classes,
               f"one class weight per class ({self.network.num_classes})")
        _check(all(w >= 0 for w in self.class_weights) and sum(self.class_weights) > 0, "class weights >= 0")
        _check(self.loss in LOSSES, f"loss is one of {LOSSES}")
        _check(self.precision in ("fp32", "bf16", "fp16"), "precision is 'fp32', 'bf16' or 'fp16'")
        _check(self.lr_schedule in ("exponential", "poly") and self.optimizer in ("adam", "sgd"),
               "lr_schedule is 'exponential' or 'poly', optimizer 'adam' or 'sgd'")
        _check(self.tumor_weight in ("uniform", "volume"), "tumor_weight is 'uniform' or 'volume'")
        _check(0 <= self.empty_fraction < 1, "0 <= empty_fraction < 1")
        _check(self.stage == "segmenter" or self.empty_fraction == 0, "empty_fraction is a segmenter setting")
        _check(self.stage == "segmenter" or not self.level_reference, "level_reference is a segmenter setting")
        _check(self.warmup_steps >= 0, "warmup_steps >= 0")
        _check(self.lr > 0 and 0 < self.lr_decay <= 1 and self.weight_decay >= 0, "lr > 0, 0 < lr_decay <= 1")
        _check(self.batch_size >= 1 and self.epochs >= 1 and self.samples_per_epoch >= 0 and self.val_every >= 1,
               "positive counts")
        _check(self.max_minutes >= 0 and 0 < self.val_fraction < 1, "max_minutes >= 0, 0 < val_fraction < 1")
        _check(0 <= self.flip_prob <= 1 and self.rotate_deg >= 0 and self.translate_vox >= 0
               and 0 <= self.scale_range < 1, "augmentation (0 <= scale_range < 1)")
        _check(len(self.phase_offset) == 2 and self.phase_offset[0] <= self.phase_offset[1],
               "phase_offset is two values, the first at most the second")
        _check(len(self.phase_texture) == 2 and 0 <= self.phase_texture[0] <= self.phase_texture[1],
               "phase_texture is two values, 0 <= the first <= the second")
        _check(all(0 <= p <= 1 for p in (self.tumor_fraction, self.intensity_prob, self.texture_prob,
                                          self.phase_prob, self.phase_sinus_prob, self.tumor_look_prob,
                                          self.synthetic_tumor_prob, self.cut_box_prob, self.viscera_prob,
                                          self.class_curve_prob)),
               "0 <= tumor_fraction, intensity_prob, texture_prob, phase_prob, phase_sinus_prob, tumor_look_prob, "
               "synthetic_tumor_prob, cut_box_prob, viscera_prob, class_curve_prob <= 1")

    @property
    def regions(self) -> bool:
        """The network outputs nested regions (sigmoid per channel) instead of classes (softmax)."""
        return self.loss == "regions"

    @property
    def out_channels(self) -> int:
        """Network output channels: one per class, or one per nested region (classes - 1)."""
        return self.network.num_classes - 1 if self.regions else self.network.num_classes


@dataclass(frozen=True)
class PipelineConfig:
    """Inference settings shared by both stages (the paper's values by default)."""

    hu_min: float = -95.0
    hu_max: float = 155.0
    margin_vox: int = 10
    min_box_vox: int = 64
    margin_mm: float = 0.0  # > 0: margin in mm per axis instead of margin_vox (an ablation; the paper uses voxels)
    min_box_mm: float = 0.0  # > 0: minimum box side in mm instead of min_box_vox
    min_region_fraction: float = 0.05
    resize_probabilities: bool = False  # stage-2 output back to the crop: probabilities (linear) or labels
    tta_flips: bool = False
    # < 0.5: a kidney's box also covers the voxels where the localizer gives kidney a probability of at least
    # this much and that touch its kidney (hysteresis), e.g. a tumour's bulge the localizer is unsure of.
    box_threshold: float = 0.5
    # > 0: up to this many rounds of growing a box whose stage-2 labels run into one of its faces (the kidney
    # or its tumour goes on past the box) and segmenting again (kidneyseg.inference.segment_box).
    refine_boxes: int = 0
    # True: a box whose stage-2 labels (after any refinement) still cover at least 1 cm² of one of its faces inside
    # the CT is dropped, with a warning (kidneyseg.inference.drop_open_boxes). A kidney lies inside its crop box with
    # a margin; in a false box stage 2 labels whatever organ it is shown, up to the faces. Off by default: on the
    # whole pipeline (benchmarks/box_refinement.py, after refine_boxes=2) it dropped one kidney's box for each of
    # two stage-2 runs and no false box (README).
    drop_open_boxes: bool = False

    def __post_init__(self) -> None:
        _check(self.hu_min < self.hu_max, "hu_min < hu_max")
        _check(self.margin_vox >= 0 and self.min_box_vox >= 1, "margin_vox >= 0, min_box_vox >= 1")
        _check(self.margin_mm >= 0 and self.min_box_mm >= 0, "margin_mm >= 0, min_box_mm >= 0")
        _check(0 <= self.min_region_fraction < 1, "0 <= min_region_fraction < 1")
        _check(0 < self.box_threshold <= 0.5, "0 < box_threshold <= 0.5")
        _check(self.refine_boxes >= 0, "refine_boxes >= 0")


@dataclass(frozen=True)
class Preset:
    name: str
    localizer: StageConfig
    segmenter: StageConfig
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    def stage(self, name: StageName) -> StageConfig:
        return self.localizer if name == "localizer" else self.segmenter


def _paper() -> Preset:
    loc = StageConfig("localizer", network=NetworkConfig(num_classes=2), class_weights=(0.01, 0.99))
    seg = StageConfig("segmenter", network=NetworkConfig(num_classes=3), class_weights=(0.01, 0.14, 0.85))
    return Preset("paper", loc, seg)


def _small(name: str, size: int, base: int, levels: int, epochs: tuple[int, int], minutes: tuple[float, float],
           pipeline: PipelineConfig, tumor_fraction: float = 0.0, localizer_size: int = 0, **recipe) -> Preset:
    """CPU presets: smaller inputs and networks, Dice + cross-entropy, a higher learning rate and bf16
    autocast (a training step 1.5x faster than fp32 at 96³ on a CPU with AVX512-BF16); ``recipe``
    adds settings to both stages, ``tumor_fraction`` to the segmenter (the localizer draws its CTs uniformly);
    ``localizer_size`` (0: ``size``) is the localizer's input side."""
    common = {**dict(input_size=(size,) * 3, loss="dice_ce", lr=3e-3, samples_per_epoch=32, precision="bf16"),
              **recipe}
    net = dict(base_filters=base, levels=levels, dropout=0.1, deep_supervision=min(3, levels - 1))
    loc = StageConfig("localizer", network=NetworkConfig(num_classes=2, **net), class_weights=(0.01, 0.99),
                      epochs=epochs[0], max_minutes=minutes[0],
                      **{**common, "input_size": (localizer_size or size,) * 3})
    seg = StageConfig("segmenter", network=NetworkConfig(num_classes=3, **net),
                      class_weights=(0.01, 0.14, 0.85), translate_vox=4, epochs=epochs[1], max_minutes=minutes[1],
                      tumor_fraction=tumor_fraction, **common)
    return Preset(name, loc, seg, pipeline)


# The demo phantoms have voxels of about 3.3 mm, some 4x coarser than KiTS19 in-plane. The tiny preset
# (48³) uses boxes in mm of about the size its earlier voxel rules (6 and 32 voxels) had there: a 20 mm
# margin and a 100 mm minimum side; one demo run each gave held-out tumour Dice 0.456 with these and
# 0.548 with the voxel rules, 0.464 with the paper's 8 / 51.2 mm: differences within the run-to-run
# spread of an 8-case demo (README). Resizing probabilities and flip averaging raised the demo's held-out
# kidney+tumour Dice from 0.900 to 0.914 at a negligible cost at this size (see README).
# Boxes in mm: the paper's 10 and 64 voxels at KiTS19's typical 0.8 mm in-plane spacing, so that a crop
# covers the same anatomy at any spacing (at 3 mm a 64-voxel minimum would be a 19 cm crop). With the
# probabilities resized and flips averaged this was the best inference of the 60-minute accuracy run
# (kidney+tumour 0.768 vs 0.730 for the paper's inference; README).
MM_BOXES = {"margin_mm": 8.0, "min_box_mm": 51.2}
# nnU-Net's window for KiTS19 (0.5 and 99.5 percentiles of the foreground). The paper's [-95, 155] clips
# enhancing cortex and clear-cell tumours (both often above 155 HU) to one value. On the recipe proxy
# (240 steps, 2 seeds, README) it raised stage 2's tumour Dice from 0.057 to 0.134 (independent renderer
# 0.028 to 0.140) with Dice + CE and from 0.173 to 0.254 with the weighted Dice, kidney+tumour unchanged.
WIDE_HU = {"hu_min": -79.0, "hu_max": 304.0}
PRESETS = {
    "paper": _paper,
    # 96 draws per epoch, validated after every 4th: validating 20 % of the cases after every 32 draws took a
    # third of the time, after every 96 about 15 %; at 4 x 96 it is under 5 %. The localizer sees the whole CT
    # at 64³ (a step 0.19 s instead of 0.65-0.73 s at 96³), so that 10 minutes buy it 3,000 steps and the
    # segmenter, whose tumour Dice rises with its steps, gets 50. In the 60-minute accuracy run this took
    # kidney+tumour from 0.913 (96³, 15 / 45 minutes) to 0.960 and tumour from 0.708 to 0.840: the 96³
    # localizer had missed most of three large tumours (README).
    "small": lambda: _small("small", 96, 8, 5, (300, 300), (10.0, 50.0),
                            PipelineConfig(**MM_BOXES, **WIDE_HU, resize_probabilities=True, tta_flips=True),
                            tumor_fraction=0.75, localizer_size=64,
                            intensity_prob=0.15, samples_per_epoch=96, val_every=4),
    # The demo: with the HU window, tumour-aware sampling and 64 draws per epoch its held-out Dice went from
    # 0.895 / 0.456 (kidney+tumour / tumour) to 0.936 / 0.594 in 243 s; 90 segmenter epochs gave 0.934 / 0.570.
    # The localizer then limited it: with the true boxes the same segmenter scored 0.984 / 0.749 (one case had
    # a false second box, one a box that cut off a tumour's bulge). 30 and 40 localizer epochs instead of 10
    # (64 draws each) gave 0.973 / 0.691 and 0.973 / 0.706 with that segmenter; whole demo runs gave 0.973 / 0.616
    # in 560 s with 40 and 0.971 / 0.628 in 486 s with 30 (README).
    "tiny": lambda: _small("tiny", 48, 8, 4, (30, 40), (0.0, 0.0),
                           PipelineConfig(margin_mm=20.0, min_box_mm=100.0, **WIDE_HU, resize_probabilities=True,
                                          tta_flips=True),
                           tumor_fraction=0.75, samples_per_epoch=64, val_every=2),
}


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


def override(config: Any, assignments: list[str]) -> Any:
    """Apply ``key=value`` overrides (e.g. ``epochs=20``, ``input_size=64,64,64``,
    ``network.base_filters=4``) to a settings dataclass, with type conversion and validation."""
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UsageError(f"override {item!r} is not of the form key=value")
        config = _set(config, key.strip().split("."), raw.strip())
    return config


def override_preset(chosen: Preset, stage: StageName, assignments: list[str]) -> tuple[StageConfig, PipelineConfig]:
    """The stage and pipeline settings of ``chosen`` with overrides; ``pipeline.KEY=VALUE`` items
    go to the pipeline (e.g. ``pipeline.min_box_vox=32``), ``localizer.KEY=VALUE`` and
    ``segmenter.KEY=VALUE`` items to that stage alone, all others to the stage."""
    pipeline_items = [a.removeprefix("pipeline.") for a in assignments if a.startswith("pipeline.")]
    stage_items = []
    for item in assignments:
        named = next((name for name in STAGES if item.startswith(f"{name}.")), None)
        if named == stage:
            stage_items.append(item.removeprefix(f"{stage}."))
        elif named is None and not item.startswith("pipeline."):
            stage_items.append(item)
    return override(chosen.stage(stage), stage_items), override(chosen.pipeline, pipeline_items)


def _set(obj: Any, keys: list[str], raw: str) -> Any:
    names = {f.name: f for f in fields(obj)}
    if keys[0] not in names:
        raise UsageError(f"unknown setting {keys[0]!r}; known: {', '.join(sorted(names))}")
    current = getattr(obj, keys[0])
    value = _set(current, keys[1:], raw) if len(keys) > 1 else _parse(raw, current, keys[0])
    try:
        return replace(obj, **{keys[0]: value})
    except (ValueError, TypeError) as exc:
        raise UsageError(f"invalid setting {keys[0]}={raw}: {exc}") from exc


def _parse(raw: str, current: Any, key: str) -> Any:
    try:
        if isinstance(current, bool):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if isinstance(current, tuple):
            kind = type(current[0]) if current else float
            return tuple(kind(v) for v in raw.split(","))
        return type(current)(raw)
    except ValueError as exc:
        raise UsageError(f"cannot parse {key}={raw!r} as {type(current).__name__}") from exc


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def stage_from_dict(data: dict[str, Any]) -> StageConfig:
    data = dict(data)
    data["network"] = NetworkConfig(**data["network"])
    return StageConfig(**data)


def pipeline_from_dict(data: dict[str, Any]) -> PipelineConfig:
    return PipelineConfig(**data)


def differences(first: Any, second: Any) -> list[str]:
    """``name: a vs b`` for every field in which two settings dataclasses of one type differ."""
    return [f"{f.name}: {getattr(first, f.name)!r} vs {getattr(second, f.name)!r}" for f in fields(first)
            if getattr(first, f.name) != getattr(second, f.name)]


def to_json(obj: Any) -> str:
    return json.dumps(to_dict(obj), indent=2, sort_keys=True)


def _check(condition: bool, requirement: str) -> None:
    if not condition:
        raise ValueError(f"invalid settings: need {requirement}")
