"""The preprocessing cache: every case decoded and validated once, stored as .npy.

Stage 1 stores each whole CT normalised and zoomed to the localizer's input size (float32, exactly
what inference feeds the localizer) with its kidney and tumour labels. Stage 2 stores, for each
kidney of the ground truth, the CT's raw values (its own dtype) on the paper's crop box plus enough
spare voxels on every side for the translation jitter and the axial rotation, with the whole CT's
normalisation statistics, so that a training draw is one interpolation of full-resolution data
(kidneyseg.stage_input) and an un-augmented draw equals inference's input for that box bitwise. With a
segmenter's ``empty_fraction`` > 0 it also stores ``EMPTY_CROPS`` boxes per case beside the kidneys
(``empty_boxes``), the training's stand-ins for the localizer's false boxes. The
index records a fingerprint of the settings, the source files' sizes and times, and the source code
of every module that shapes the cached arrays; a cache whose fingerprint differs (a setting, a file
or that code changed) is rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import multiprocessing
import shutil
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kidneyseg import io
from kidneyseg.config import PipelineConfig, StageConfig
from kidneyseg.errors import InvalidInputError
from kidneyseg.geometry import Box, crop, expand_box
from kidneyseg.labels import tumor_ml
from kidneyseg.postprocess import kidney_boxes
from kidneyseg.preprocess import clipped_stats, normalize_ct
from kidneyseg.stage_input import Source, stage_image, stage_labels

# The modules whose code decides what the cache holds: reading and validating files, normalising,
# boxes, cropping and resizing, and this module. A change to any of them rebuilds every cache.
CODE_MODULES = ("kidneyseg.training.cache", "kidneyseg.preprocess", "kidneyseg.stage_input", "kidneyseg.geometry",
                "kidneyseg.postprocess", "kidneyseg.labels", "kidneyseg.io", "kidneyseg.io.nifti",
                "kidneyseg.io.volume", "kidneyseg.io.validate")

# Empty crops (segmenter, empty_fraction > 0): this many per case, each overlapping every kidney box by at most
# EMPTY_MAX_OVERLAP of its volume, centred on a voxel of the body (above BODY_HU: not the air around it).
EMPTY_CROPS = 2
EMPTY_MAX_OVERLAP = 0.1
BODY_HU = -300.0


@dataclass(frozen=True)
class Sample:
    """One training sample in the cache: image and label arrays (X, Y, Z) holding the voxels
    [origin, origin + shape) of their grid (stage 1: the zoomed CT; stage 2: the CT), the ``box``
    the network sees on that grid (stage 1: the whole zoom; stage 2: the paper's crop box), the
    value outside the stored voxels (``pad``), the normalisation ``window`` (hu_min, hu_max, mean,
    std; None: stored normalised) and the grid's ``spacing_mm``. ``tumor_ml``: the volume of the label's
    tumour (class 2) in millilitres on that grid (0: none). ``empty``: a crop beside the kidneys, not on
    one (``empty_boxes``)."""

    case_id: str
    image: Path
    label: Path
    box: Box
    origin: tuple[int, int, int] = (0, 0, 0)
    pad: float = 0.0
    window: tuple[float, float, float, float] | None = None
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    tumor_ml: float = 0.0
    empty: bool = False

    @property
    def has_tumor(self) -> bool:
        return self.tumor_ml > 0

    @property
    def image_source(self) -> Source:
        return Source(np.load(self.image, mmap_mode="r"), self.origin, self.pad, self.window)

    @property
    def label_source(self) -> Source:
        return Source(np.load(self.label, mmap_mode="r"), self.origin, 0)


def fingerprint(cases: list[io.layout.Case], stage: StageConfig, pipeline: PipelineConfig) -> dict:
    relevant = {"code": CODE_HASH, "stage": stage.stage, "hu": [pipeline.hu_min, pipeline.hu_max]}
    if stage.stage == "localizer":
        relevant["input_size"] = list(stage.input_size)
    else:
        relevant.update(margin_vox=pipeline.margin_vox, min_box_vox=pipeline.min_box_vox, margin_mm=pipeline.margin_mm,
                        min_box_mm=pipeline.min_box_mm, min_region_fraction=pipeline.min_region_fraction,
                        translate_vox=stage.translate_vox, rotate_deg=stage.rotate_deg,
                        scale_range=stage.scale_range, empty_crops=_empty_count(stage))
    files = [[c.case_id, *(_stat(p) for p in (c.image, c.label))] for c in cases]
    relevant["files"] = hashlib.sha256(json.dumps(files).encode()).hexdigest()
    return relevant


def code_hash(modules: tuple[str, ...] = CODE_MODULES) -> str:
    """SHA-256 of the source of ``modules``: the cache's record of the code that built it."""
    digest = hashlib.sha256()
    for name in modules:
        digest.update(name.encode())
        digest.update(Path(importlib.import_module(name).__file__).read_bytes())
    return digest.hexdigest()


# Taken when this module is imported, so that it describes the code this process runs (an edit to the
# files while a long run goes on must not change the run's fingerprint halfway).
CODE_HASH = code_hash()


def _stat(path: Path) -> list:
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns]


def build_cache(cases: list[io.layout.Case], cache_dir: Path, stage: StageConfig, pipeline: PipelineConfig,
                progress: bool = True, workers: int = 0) -> list[Sample]:
    """Return the cached samples for ``stage``, building the cache first if it is missing or stale.

    ``workers`` > 1 prepares that many cases at a time in worker processes (a GPU machine's spare cores:
    reading and zooming 300 CTs one at a time took minutes where the training then took seconds per
    epoch); the cache is the same either way."""
    wanted = fingerprint(cases, stage, pipeline)
    index_path = cache_dir / "index.json"
    if index_path.exists() and json.loads(index_path.read_text()).get("fingerprint") == wanted:
        return _read_index(index_path)
    if cache_dir.exists():
        shutil.rmtree(cache_dir)
    cache_dir.mkdir(parents=True)
    one = partial(_cache_case, cache_dir=cache_dir, stage=stage, pipeline=pipeline)
    bar = dict(total=len(cases), desc=f"caching {stage.stage}", unit="case", disable=not progress)
    if workers > 1:
        # fork, as the training's DataLoader workers: the children share the parent's imports; one thread each
        with ProcessPoolExecutor(min(workers, len(cases)), mp_context=multiprocessing.get_context("fork"),
                                 initializer=_one_thread) as pool:
            results = list(tqdm(pool.map(one, cases), **bar))
    else:
        results = [one(case) for case in tqdm(cases, **bar)]
    records = [record for found, _ in results for record in found]
    failures = [failure for _, failure in results if failure]
    if failures:
        shutil.rmtree(cache_dir)
        raise InvalidInputError(f"{len(failures)} of {len(cases)} cases failed the input checks (run "
                                "'kidneyseg check' on the folder for the full report):\n  " + "\n  ".join(failures))
    io.atomic_write_text(index_path, json.dumps({"fingerprint": wanted, "samples": records}, indent=1))
    return _read_index(index_path)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _cache_case(case: io.layout.Case, cache_dir: Path, stage: StageConfig,
                pipeline: PipelineConfig) -> tuple[list[dict], str | None]:
    """The records of one case's cached samples, or its input error's message."""
    try:
        image, labels = io.load_case(case)
    except InvalidInputError as exc:
        return [], str(exc)
    window = (pipeline.hu_min, pipeline.hu_max, *clipped_stats(image.array, pipeline.hu_min, pipeline.hu_max))
    source = Source(image.array, pad=float(image.array.min()), window=window)
    if stage.stage == "localizer":
        return [_cache_whole(cache_dir, case.case_id, source, labels.array, image.spacing_mm, stage.input_size)], None
    boxes = kidney_boxes(labels.array > 0, pipeline, image.spacing_mm)
    records = _cache_kidneys(cache_dir, case.case_id, source, labels.array, boxes, image.spacing_mm, stage)
    empties = empty_boxes(image.array, boxes, case.case_id, _empty_count(stage))
    records += _cache_kidneys(cache_dir, case.case_id, source, labels.array, empties, image.spacing_mm, stage,
                              empty=True)
    return records, None


def _empty_count(stage: StageConfig) -> int:
    return EMPTY_CROPS if stage.empty_fraction > 0 else 0


def empty_boxes(image: np.ndarray, kidneys: list[Box], case_id: str, count: int, tries: int = 50) -> list[Box]:
    """Up to ``count`` boxes beside the ``kidneys`` (crop boxes) of a CT: each the size of one of them, drawn
    at random, centred on a body voxel (above BODY_HU; every 4th voxel per axis considered) at most one box
    side from the kidneys' boxes, then shifted inside the CT where it fits (as every crop box is,
    ``expand_box``), overlapping each kidney box by at most EMPTY_MAX_OVERLAP of its volume. Fixed by
    ``case_id`` (the same boxes on every build); fewer where ``count`` x ``tries`` draws find no room."""
    if not count or not kidneys:
        return []
    rng = np.random.RandomState(zlib.crc32(case_id.encode()))
    body = np.argwhere(image[::4, ::4, ::4] > BODY_HU) * 4
    lo = np.min([np.subtract(b.lo, b.size_vox) for b in kidneys], axis=0)
    hi = np.max([np.add(b.hi, b.size_vox) for b in kidneys], axis=0)
    body = body[np.all((body >= lo) & (body < hi), axis=1)]
    found: list[Box] = []
    for _ in range(count * tries):
        if len(found) == count or not len(body):
            break
        size = np.array(kidneys[rng.randint(len(kidneys))].size_vox)
        start = body[rng.randint(len(body))] - size // 2
        box = expand_box(Box(tuple(int(v) for v in start), tuple(int(v) for v in start + size)), 0, 1, image.shape)
        if all(_overlap(box, other) <= EMPTY_MAX_OVERLAP * np.prod(size) for other in kidneys):
            found.append(box)
    return found


def _overlap(a: Box, b: Box) -> int:
    """Voxels shared by two boxes."""
    return int(np.prod([max(0, min(ah, bh) - max(al, bl)) for al, ah, bl, bh in zip(a.lo, a.hi, b.lo, b.hi,
                                                                                     strict=True)]))


def _cache_whole(cache_dir: Path, case_id: str, source: Source, labels: np.ndarray,
                 spacing_mm: tuple[float, float, float], size) -> dict:
    """The whole CT as the localizer sees it: normalised, zoomed to ``size`` (float32). Its labels keep
    kidney and tumour apart (nearest voxel), so that augmentations can treat them apart; the localizer's
    one foreground class is made of both when a sample is drawn (kidneyseg.training.data.load_sample)."""
    whole = Box((0, 0, 0), tuple(labels.shape))
    image = stage_image(source, whole, size)[0].numpy()
    target = stage_labels(Source(labels.astype(np.uint8)), whole, size)[0].numpy().astype(np.uint8)
    hu_min, hu_max, mean, std = source.window
    outside = float(normalize_ct(np.array([source.pad]), hu_min, hu_max, (mean, std))[0])  # air beyond the CT
    zoom_spacing = tuple(float(s * n / m) for s, n, m in zip(spacing_mm, labels.shape, size, strict=True))
    return _save(cache_dir, case_id, image, target, Box((0, 0, 0), tuple(size)), (0, 0, 0), outside, None,
                 zoom_spacing)


def spare_vox(box: Box, spacing_mm: tuple[float, float, float], stage: StageConfig) -> tuple[int, int, int]:
    """Voxels to store around a crop box so that every warped draw samples stored data: the shift, the
    growth of the box under the largest scale and of its axial corners under the largest rotation,
    and 2 for rounding and the interpolation's neighbours."""
    theta = np.radians(stage.rotate_deg)
    half = [(n - 1) / 2 * s * (1 + stage.scale_range) for n, s in zip(box.size_vox, spacing_mm, strict=True)]
    reach = [half[0] * np.cos(theta) + half[1] * np.sin(theta), half[1] * np.cos(theta) + half[0] * np.sin(theta),
             half[2]]
    own = [(n - 1) / 2 * s for n, s in zip(box.size_vox, spacing_mm, strict=True)]
    return tuple(stage.translate_vox + int(np.ceil(max(r - o, 0.0) / s)) + 2
                 for r, o, s in zip(reach, own, spacing_mm, strict=True))


def _cache_kidneys(cache_dir: Path, case_id: str, source: Source, labels: np.ndarray, boxes: list[Box],
                   spacing_mm: tuple[float, float, float], stage: StageConfig, empty: bool = False) -> list[dict]:
    """Each kidney's crop box (ground truth, pipeline rules) with ``spare_vox`` around it, raw values; with
    ``empty`` the boxes are empty crops (``empty_boxes``)."""
    records = []
    for k, box in enumerate(boxes):
        spare = spare_vox(box, spacing_mm, stage)
        region = Box(tuple(v - p for v, p in zip(box.lo, spare, strict=True)),
                     tuple(v + p for v, p in zip(box.hi, spare, strict=True)))
        image = crop(source.array, region, pad_value=source.pad)
        target = crop(labels, region, pad_value=0).astype(np.uint8)
        records.append(_save(cache_dir, f"{case_id}_{'e' if empty else 'k'}{k}", image, target, box, region.lo,
                             source.pad, source.window, spacing_mm, case_id, empty))
    return records


def _save(cache_dir: Path, name: str, image: np.ndarray, target: np.ndarray, box: Box, origin, pad: float,
          window, spacing_mm, case_id: str | None = None, empty: bool = False) -> dict:
    np.save(cache_dir / f"{name}_image.npy", image)
    np.save(cache_dir / f"{name}_label.npy", target)
    return {"case_id": case_id or name, "image": f"{name}_image.npy", "label": f"{name}_label.npy",
            "box": [list(box.lo), list(box.hi)], "origin": [int(v) for v in origin], "pad": float(pad),
            "window": None if window is None else [float(v) for v in window],
            "spacing_mm": [float(v) for v in spacing_mm],
            "tumor_ml": tumor_ml(target, spacing_mm), "empty": empty}


def _read_index(index_path: Path) -> list[Sample]:
    records = json.loads(index_path.read_text())["samples"]
    folder = index_path.parent
    return [
        Sample(r["case_id"], folder / r["image"], folder / r["label"], Box(tuple(r["box"][0]), tuple(r["box"][1])),
               tuple(r["origin"]), r["pad"], None if r["window"] is None else tuple(r["window"]),
               tuple(r["spacing_mm"]), r["tumor_ml"], r["empty"])
        for r in records
    ]
