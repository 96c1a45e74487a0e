"""Localize -> boxes -> segment -> paste -> post-process: the Python API users call.

    >>> model = load_model_dir("my-model")                      # doctest: +SKIP
    >>> result = segment("case_00123/imaging.nii.gz", model)    # doctest: +SKIP
    >>> result.save("case_00123.nii.gz")                        # doctest: +SKIP

Arrays are (X, Y, Z) in RAS+ voxel order (see io.Volume); the written label map is on
the input file's exact grid.
"""

from __future__ import annotations

import json
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from kidneyseg import io
from kidneyseg.allocator import keep_freed_memory
from kidneyseg.config import PipelineConfig, StageConfig, differences, pipeline_from_dict, stage_from_dict
from kidneyseg.errors import ModelFileError, UsageError
from kidneyseg.geometry import Box, bounding_box, paste_max, resize_image, resize_labels, uncrop, upsampled_window
from kidneyseg.model import place
from kidneyseg.outputs import foreground, probabilities, to_labels
from kidneyseg.postprocess import clean_labels, crop_box, cut_faces, hysteresis, kidney_boxes, large_components, widen
from kidneyseg.preprocess import clipped_stats
from kidneyseg.profile import read_profile
from kidneyseg.stage_input import Source, level_shift, stage_image
from kidneyseg.weights import autocast, check_precision, load_model, run_pipeline, supported_precision


@dataclass
class TwoStageModel:
    """Both trained networks and the pipeline settings of a model directory."""

    localizer: torch.nn.Module
    localizer_config: StageConfig
    segmenter: torch.nn.Module
    segmenter_config: StageConfig
    pipeline: PipelineConfig
    device: str = "cpu"
    data_profile: dict | None = None  # the training data's ranges (kidneyseg.profile), None if not recorded

    def __post_init__(self) -> None:
        # Each stage runs in a precision the device has, however the model was put together (load_model_dir,
        # benchmarks, tests): a stage trained in bf16 runs in fp32, with a warning, on a device without bf16.
        self.localizer_config, self.segmenter_config = (
            replace(cfg, precision=supported_precision(cfg.precision, self.device))
            for cfg in (self.localizer_config, self.segmenter_config))
        if isinstance(self.localizer, torch.nn.Module):  # PyTorch (not an ONNX Runtime session)
            self.localizer = place(self.localizer, self.device)  # on the device, channels-last
        if isinstance(self.segmenter, torch.nn.Module):
            self.segmenter = place(self.segmenter, self.device)


@dataclass
class Localization:
    """Result of stage 1 (``locate``): the kidney boxes, and the localizer's mask (nonzero: kidney or
    tumour) resized to the CT's canonical grid, kept only over the window around its nonzero voxels:
    ``mask`` starts at voxel ``origin`` of the CT; outside it the mask is 0 (``mask`` is None when the
    localizer found nothing)."""

    boxes: list[Box]
    mask: np.ndarray | None
    origin: tuple[int, int, int]


@dataclass
class Segmentation:
    """Result of ``segment``: canonical labels, the input CT (read from a file: float32, or int16 where the
    file stores HU so, see ``io.load_ct``), the kidney boxes, timings (s)."""

    labels: np.ndarray
    volume: io.Volume
    boxes: list[Box]
    timings: dict[str, float] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write the label map (uint8 NIfTI) on the input's exact grid, atomically."""
        return io.save_label_map(self.labels, self.volume, path)


def load_model_dir(model_dir: str | Path, device: str = "cpu", precision: str | None = None,
                   backend: str = "torch", **pipeline_overrides) -> TwoStageModel:
    """Load ``model_dir/{localizer,segmenter}/best.safetensors``, ``model_dir/pipeline.json`` and, where
    training wrote it, ``model_dir/data_profile.json``.

    ``precision`` ("fp32", "bf16" or "fp16") replaces the precision the stages were trained with for
    prediction; bf16 falls back to fp32, with a warning, on a device without bf16 support, fp16 on a
    CPU.
    ``pipeline_overrides`` replace pipeline settings (e.g. ``tta_flips=True``). ``backend``
    "onnxruntime" loads a directory written by ``kidneyseg export`` (kidneyseg.export): the networks
    run in ONNX Runtime, in fp32, on the CPU.
    """
    model_dir = Path(model_dir)
    if backend not in ("torch", "onnxruntime"):
        raise UsageError(f"backend must be torch or onnxruntime, got {backend!r}")
    if backend == "onnxruntime":
        return _load_onnx_dir(model_dir, device, precision, pipeline_overrides)
    pipeline_path = model_dir / "pipeline.json"
    if not pipeline_path.is_file():
        raise ModelFileError("not a model directory (pipeline.json missing); train both stages into it first",
                             model_dir)
    try:
        pipeline = pipeline_from_dict(json.loads(pipeline_path.read_text()))
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"unreadable pipeline settings ({exc})", pipeline_path) from exc
    _check_stages_agree(model_dir, pipeline)
    pipeline = replace(pipeline, **pipeline_overrides)
    loc, loc_cfg, _ = load_model(model_dir / "localizer" / "best.safetensors")
    seg, seg_cfg, _ = load_model(model_dir / "segmenter" / "best.safetensors")
    for path, cfg, classes in ((model_dir / "localizer", loc_cfg, 2), (model_dir / "segmenter", seg_cfg, 3)):
        if cfg.network.num_classes != classes:
            raise ModelFileError(f"expected a {classes}-class {path.name}, found {cfg.network.num_classes} classes",
                                 path)
    # Each stage runs in ``precision`` if given, else in its own; TwoStageModel falls back to fp32 where the
    # device lacks it (a GPU-trained fp16 stage on a CPU, bf16 on a CPU without it).
    if precision is not None:
        check_precision(precision)
        loc_cfg, seg_cfg = (replace(cfg, precision=precision) for cfg in (loc_cfg, seg_cfg))
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels once
    return TwoStageModel(loc, loc_cfg, seg, seg_cfg, pipeline, device, read_profile(model_dir))


def _load_onnx_dir(model_dir: Path, device: str, precision: str | None, overrides: dict) -> TwoStageModel:
    from kidneyseg.export import OnnxNetwork, require_onnx_extra

    require_onnx_extra("onnxruntime")
    if torch.device(device).type != "cpu" or precision in ("bf16", "fp16"):
        raise UsageError("the onnxruntime backend runs in fp32 on the CPU; drop --device and --precision")
    pipeline_path = model_dir / "pipeline.json"
    networks = [model_dir / f"{stage}.onnx" for stage in ("localizer", "segmenter")]
    for path in (pipeline_path, *networks):
        if not path.is_file():
            raise ModelFileError(f"not an exported model directory ({path.name} missing); write one with "
                                 "'kidneyseg export MODEL_DIR OUT --format onnx'", model_dir)
    try:
        pipeline = replace(pipeline_from_dict(json.loads(pipeline_path.read_text())), **overrides)
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"unreadable pipeline settings ({exc})", pipeline_path) from exc
    loc, seg = (OnnxNetwork(path) for path in networks)
    loc_cfg, seg_cfg = (replace(stage_from_dict(net.stage_dict), precision="fp32") for net in (loc, seg))
    return TwoStageModel(loc, loc_cfg, seg, seg_cfg, pipeline, "cpu", read_profile(model_dir))


def _check_stages_agree(model_dir: Path, pipeline: PipelineConfig) -> None:
    """Refuse a model directory whose stages were trained with pipeline settings that differ from
    each other or from ``pipeline.json`` (e.g. one stage retrained with another preset)."""
    for stage in ("localizer", "segmenter"):
        path = model_dir / stage / "config.json"
        trained = run_pipeline(model_dir / stage)
        if trained is None:
            raise ModelFileError(f"the {stage} has no config.json; train both stages into it first", path)
        changed = differences(trained, pipeline)
        if changed:
            raise ModelFileError(f"the {stage} was trained with other pipeline settings than pipeline.json "
                                 f"({'; '.join(changed)}; the {stage}'s first); retrain it with the other "
                                 "stage's preset and overrides", path)


def segment(ct: str | Path | io.Volume | np.ndarray, model: TwoStageModel | str | Path,
            affine: np.ndarray | None = None, boxes: list[Box] | None = None) -> Segmentation:
    """Segment kidneys (1) and tumours (2) in a CT.

    ``ct`` is a NIfTI path, a DICOM folder, a Volume, or an array in HU with its 4x4 ``affine``
    (file voxel order, as nibabel gives it). ``boxes`` (canonical voxel boxes, e.g. from the ground
    truth with ``kidney_boxes``) replace the localizer: stage 2 alone, for oracle measurements.
    Returns a Segmentation; warns when no kidney is found. The process's malloc keeps freed memory for
    reuse from then on (kidneyseg.allocator).
    """
    keep_freed_memory()
    if not isinstance(model, TwoStageModel):
        model = load_model_dir(model)
    volume = _as_volume(ct, affine)
    cfg, timings = model.pipeline, {"network": 0.0}
    start = time.perf_counter()
    source, zoomed = _inputs(volume, cfg, model.localizer_config.input_size if boxes is None else None)
    if boxes is None:
        boxes = localize(zoomed, volume.shape, volume.spacing_mm, model, timings).boxes
    labels = volume.zeros(np.uint8)
    segmented = [segment_box(source, box, volume.spacing_mm, model, timings) for box in boxes]
    if cfg.drop_open_boxes:
        segmented = drop_open_boxes(segmented, volume.shape, volume.spacing_mm, volume.name)
    boxes = [box for box, _ in segmented]  # a new list: the caller's boxes= stay as they were
    for box, patch in segmented:
        paste_max(labels, patch, box)
    if not boxes:
        warnings.warn(f"{volume.name}: no kidney found; the output is all background", stacklevel=2)
    else:  # cleaned where the boxes put labels (the same result as over the whole volume, which is 0 elsewhere)
        inner = [b.inside(labels.shape) for b in boxes]
        where = tuple(slice(min(b.lo[a] for b in inner), max(b.hi[a] for b in inner)) for a in range(3))
        labels[where] = clean_labels(labels[where], cfg.min_region_fraction)
    timings["total"] = time.perf_counter() - start
    return Segmentation(labels, volume, boxes, timings)


def _inputs(volume: io.Volume, cfg: PipelineConfig,
            zoom: tuple[int, int, int] | None) -> tuple[Source, torch.Tensor | None]:
    """The CT as stage 2 reads it (normalised with the whole CT's clipped statistics; outside the CT its
    lowest value, normalised alike) and, for a ``zoom`` size, the localizer's input.

    Both stages' inputs come from kidneyseg.stage_input, as in training: the localizer's zoom and each crop
    from the voxels next to their sample points only (no float32 copy of the whole CT), normalised with the
    whole CT's statistics (the same values, elementwise). A CT still arriving (``io.load_ct(...,
    background=True)``, as ``predict`` reads) is read as it comes: the statistics in a second thread, the
    zoom's voxels here, each plane once it is in, while the reading thread decompresses the next planes;
    the zoom's voxels are normalised once the statistics are complete. The values are the same as from a
    complete CT."""
    data, ready = volume.arriving()
    with ThreadPoolExecutor(1, thread_name_prefix="statistics") as pool:
        try:
            stats = pool.submit(clipped_stats, data, cfg.hu_min, cfg.hu_max, ready)
            zoomed = None
            if zoom is not None:
                # The whole CT's box: every sample point lies inside the CT (stage_input clamps them to its
                # voxel centres), so ``pad`` is never read here; the true one needs every voxel.
                early = Source(data, pad=0.0, window=lambda: (cfg.hu_min, cfg.hu_max, *stats.result()),
                               ready=ready)
                zoomed = stage_image(early, Box((0, 0, 0), volume.shape), zoom)
            window = (cfg.hu_min, cfg.hu_max, *stats.result())
            array = volume.array  # every voxel in and checked
        except BaseException:
            volume.close()  # a CT still arriving stops being read (and the statistics with it)
            raise
    return Source(array, pad=float(array.min()), window=window), zoomed


def localize(zoomed: torch.Tensor, shape: tuple[int, int, int], spacing_mm: tuple[float, float, float],
             model: TwoStageModel, timings: dict[str, float]) -> Localization:
    """Stage 1 on the normalised CT zoomed to the localizer's input (1, X, Y, Z): its kidney mask on the
    CT's grid ``shape`` and one paper crop box per kept kidney region."""
    stage = model.localizer_config
    probs = _predict(model.localizer, zoomed, model, stage, timings)
    mask = to_labels(probs, stage.regions)
    if model.pipeline.box_threshold < 0.5:
        mask = hysteresis(mask > 0, foreground(probs, stage.regions) >= model.pipeline.box_threshold).astype(np.uint8)
    # The kidney mask at full resolution only where it is nonzero (the same boxes as from the whole
    # resized mask, without a CT-sized array).
    window = upsampled_window(mask, shape)
    if window is None:
        return Localization([], None, (0, 0, 0))
    mask, origin = window
    return Localization(kidney_boxes(mask, model.pipeline, spacing_mm, origin, shape), mask, origin)


def locate(ct: str | Path | io.Volume | np.ndarray, model: TwoStageModel | str | Path,
           affine: np.ndarray | None = None) -> Localization:
    """Stage 1 alone on a CT (the arguments as for ``segment``): the localizer's kidney mask on the CT's
    canonical grid and the boxes ``segment`` would crop, without running stage 2."""
    if not isinstance(model, TwoStageModel):
        model = load_model_dir(model)
    volume = _as_volume(ct, affine)
    _, zoomed = _inputs(volume, model.pipeline, model.localizer_config.input_size)
    return localize(zoomed, volume.shape, volume.spacing_mm, model, {"network": 0.0})


# A box's labels must cover at least this much of one of its faces (1 cm²) for the box to count as cut there.
CUT_AREA_MM2 = 100.0


def segment_box(source: Source, box: Box, spacing_mm: tuple[float, float, float], model: TwoStageModel,
                timings: dict[str, float]) -> tuple[Box, np.ndarray]:
    """Stage 2 on one kidney's box of the CT that ``source`` holds (whole, at origin 0): (the box, its labels
    on the box's grid).

    With ``pipeline.refine_boxes`` = n > 0, up to n rounds of: if the largest labelled region covers at least
    CUT_AREA_MM2 of a face of the box that lies inside the CT (``cut_faces``: the kidney or its tumour goes on
    past the box, as where the coarse localizer missed part of a large tumour), segment a box widened by half
    its side at those faces (``widen``), keep what of it is joined to what the box had labelled, and segment again in
    the crop box around that (the margin and minimum size of every box, so that stage 2 sees the kidney at
    the scale it was trained on). The box and labels of the last round are returned.
    """
    shape = source.array.shape
    patch = _segment_in(source, box, model, timings)
    for _ in range(model.pipeline.refine_boxes):
        main, _ = large_components(patch, 1.0)  # the largest region: stray labels at a face cut nothing
        faces = cut_faces(main, box, shape, spacing_mm, CUT_AREA_MM2)
        if not faces:
            break
        wide = widen(box, faces, shape)
        seen = uncrop(patch > 0, box.shifted(tuple(-w for w in wide.lo)), wide.size_vox)
        found = _segment_in(source, wide, model, timings) > 0
        joined = hysteresis(seen & found, found)
        if not joined.any():
            break
        grown = crop_box(bounding_box(joined).shifted(wide.lo), model.pipeline, spacing_mm, shape)
        if grown == box:
            break
        box, patch = grown, _segment_in(source, grown, model, timings)
    return box, patch


def drop_open_boxes(segmented: list[tuple[Box, np.ndarray]], shape: tuple[int, int, int],
                    spacing_mm: tuple[float, float, float], name: str) -> list[tuple[Box, np.ndarray]]:
    """The (box, labels) pairs of ``segment_box`` whose labels cover less than CUT_AREA_MM2 of every face of
    their box inside the CT (``cut_faces``); each one dropped is named in a warning (``pipeline.drop_open_boxes``)."""
    kept = []
    for box, patch in segmented:
        faces = cut_faces(patch > 0, box, shape, spacing_mm, CUT_AREA_MM2)
        if faces:
            warnings.warn(f"{name}: dropped the box {box.lo}-{box.hi}: its labels run into {len(faces)} of its "
                          "faces, as in a box that holds no kidney (pipeline.drop_open_boxes)", stacklevel=3)
        else:
            kept.append((box, patch))
    return kept


def _segment_in(source: Source, box: Box, model: TwoStageModel, timings: dict[str, float]) -> np.ndarray:
    x = stage_image(source, box, model.segmenter_config.input_size)
    if model.segmenter_config.level_reference:
        x = _level_referenced(x, source, model, timings)
    return _segment_patch(x, box.size_vox, model, timings)


def _level_referenced(x: torch.Tensor, source: Source, model: TwoStageModel, timings: dict[str, float]) -> torch.Tensor:
    """A segmenter trained with ``level_reference`` sees each crop shifted by the level of its kidney and tumour
    (kidneyseg.stage_input.level_shift); here those are stage 2's labels of a first pass on the crop as it is
    (without flips: it only has to find the kidney's outline)."""
    stage = model.segmenter_config
    first = to_labels(_predict(model.segmenter, x, model, stage, timings, tta=False), stage.regions)
    return x + level_shift(x[0], first > 0, source.window_values())


def _segment_patch(x: torch.Tensor, crop_shape: tuple[int, int, int], model: TwoStageModel,
                   timings: dict[str, float]) -> np.ndarray:
    """Stage 2 on one crop's network input (1, X, Y, Z): labels (uint8) on the crop's own grid."""
    stage = model.segmenter_config
    probs = _predict(model.segmenter, x, model, stage, timings)
    if model.pipeline.resize_probabilities:
        return to_labels(resize_image(probs, crop_shape), stage.regions)
    return resize_labels(to_labels(probs, stage.regions), crop_shape)


@torch.inference_mode()
def _predict(net: torch.nn.Module, image: torch.Tensor, model: TwoStageModel, stage: StageConfig,
             timings: dict[str, float], tta: bool | None = None) -> np.ndarray:
    """Probabilities (C, X, Y, Z) for a (1, X, Y, Z) input (softmax over classes, or sigmoid per
    region: see kidneyseg.outputs), averaged over flips if ``tta`` (None: ``pipeline.tta_flips``)."""
    start = time.perf_counter()
    x = image[None].to(model.device)
    flips = [()] + ([(2,), (3,), (4,)] if (model.pipeline.tta_flips if tta is None else tta) else [])
    total = None
    for dims in flips:
        flipped = torch.flip(x, dims) if dims else x
        with autocast(stage.precision, model.device):
            logits = net(flipped)
        probs = probabilities(logits.float(), stage.regions)
        probs = torch.flip(probs, dims) if dims else probs
        total = probs if total is None else total + probs
    # .contiguous(): a channels-last network returns channels-last tensors; NumPy code downstream
    # (resizing, argmax, pasting) is much slower on those strides.
    out = (total / len(flips))[0].float().contiguous().cpu().numpy()
    timings["network"] += time.perf_counter() - start
    return out


def _as_volume(ct, affine: np.ndarray | None) -> io.Volume:
    if isinstance(ct, io.Volume):
        return ct
    if isinstance(ct, np.ndarray):
        if affine is None:
            raise ValueError("an array input needs its 4x4 affine")
        return io.ct_from_array(ct, affine)
    # HU stored as int16 stay int16, read in the background: see load_ct
    return io.load_ct(ct, keep_integers=True, background=True)
