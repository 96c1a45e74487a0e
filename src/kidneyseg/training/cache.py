"""The preprocessing cache: every case decoded, validated and normalised once, stored as .npy.

Stage 1 stores each whole CT at the localizer's input size; stage 2 stores, for each kidney
of the ground truth, the paper's crop box plus ``translate_vox`` spare voxels on every side
(for translation jitter) at full resolution. The index records a fingerprint of the settings,
the source files' sizes and times, and the source code of every module that shapes the cached
arrays; a cache whose fingerprint differs (a setting, a file or that code changed) is rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kidneyseg import io
from kidneyseg.config import PipelineConfig, StageConfig
from kidneyseg.errors import InvalidInputError
from kidneyseg.geometry import Box, crop, resize_image, resize_labels
from kidneyseg.postprocess import kidney_boxes
from kidneyseg.preprocess import normalize_ct

# The modules whose code decides what the cache holds: reading and validating files, normalising,
# boxes, cropping and resizing, and this module. A change to any of them rebuilds every cache.
CODE_MODULES = ("kidneyseg.training.cache", "kidneyseg.preprocess", "kidneyseg.geometry", "kidneyseg.postprocess",
                "kidneyseg.labels", "kidneyseg.io", "kidneyseg.io.nifti", "kidneyseg.io.volume",
                "kidneyseg.io.validate")


@dataclass(frozen=True)
class Sample:
    """One training sample in the cache: arrays (X, Y, Z) and, for stage 2, the crop box
    inside the stored region (the region has ``translate_vox`` spare voxels around it).
    ``has_tumor``: the sample's label contains tumour (class 2)."""

    case_id: str
    image: Path
    label: Path
    box: Box | None = None
    has_tumor: bool = False


def fingerprint(cases: list[io.layout.Case], stage: StageConfig, pipeline: PipelineConfig) -> dict:
    relevant = {"code": CODE_HASH, "stage": stage.stage, "hu": [pipeline.hu_min, pipeline.hu_max]}
    if stage.stage == "localizer":
        relevant["input_size"] = list(stage.input_size)
    else:
        relevant.update(margin_vox=pipeline.margin_vox, min_box_vox=pipeline.min_box_vox, margin_mm=pipeline.margin_mm,
                        min_box_mm=pipeline.min_box_mm, min_region_fraction=pipeline.min_region_fraction,
                        translate_vox=stage.translate_vox)
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
                progress: bool = True) -> list[Sample]:
    """Return the cached samples for ``stage``, building the cache first if it is missing or stale."""
    wanted = fingerprint(cases, stage, pipeline)
    index_path = cache_dir / "index.json"
    if index_path.exists() and json.loads(index_path.read_text()).get("fingerprint") == wanted:
        return _read_index(index_path)
    if cache_dir.exists():
        shutil.rmtree(cache_dir)
    cache_dir.mkdir(parents=True)
    records, failures = [], []
    for case in tqdm(cases, desc=f"caching {stage.stage}", unit="case", disable=not progress):
        try:
            image, labels = io.load_case(case)
        except InvalidInputError as exc:
            failures.append(str(exc))
            continue
        norm = normalize_ct(image.array, pipeline.hu_min, pipeline.hu_max)
        if stage.stage == "localizer":
            records.append(_cache_whole(cache_dir, case.case_id, norm, labels.array, stage.input_size))
        else:
            boxes = kidney_boxes(labels.array > 0, pipeline, image.spacing_mm)
            records.extend(_cache_kidneys(cache_dir, case.case_id, norm, labels.array, boxes, stage.translate_vox))
    if failures:
        shutil.rmtree(cache_dir)
        raise InvalidInputError(f"{len(failures)} of {len(cases)} cases failed the input checks (run "
                                "'kidneyseg check' on the folder for the full report):\n  " + "\n  ".join(failures))
    io.atomic_write_text(index_path, json.dumps({"fingerprint": wanted, "samples": records}, indent=1))
    return _read_index(index_path)


def _cache_whole(cache_dir: Path, case_id: str, norm: np.ndarray, labels: np.ndarray, size) -> dict:
    image = resize_image(norm, size)[0].numpy().astype(np.float16)
    target = resize_labels((labels > 0).astype(np.uint8), size)
    return _save(cache_dir, case_id, image, target, None)


def _cache_kidneys(cache_dir: Path, case_id: str, norm: np.ndarray, labels: np.ndarray, boxes: list[Box],
                   pad: int) -> list[dict]:
    """Each kidney's crop box (ground truth, paper rules) plus ``pad`` spare voxels on every side."""
    records = []
    for k, box in enumerate(boxes):
        region = Box(tuple(v - pad for v in box.lo), tuple(v + pad for v in box.hi))
        image = crop(norm, region, pad_value=float(norm.min())).astype(np.float16)
        target = crop(labels, region, pad_value=0)
        inner = Box((pad,) * 3, tuple(pad + n for n in box.size_vox))
        records.append(_save(cache_dir, f"{case_id}_k{k}", image, target, inner, case_id))
    return records


def _save(cache_dir: Path, name: str, image: np.ndarray, target: np.ndarray, box: Box | None,
          case_id: str | None = None) -> dict:
    np.save(cache_dir / f"{name}_image.npy", image)
    np.save(cache_dir / f"{name}_label.npy", target)
    record = {"case_id": case_id or name, "image": f"{name}_image.npy", "label": f"{name}_label.npy",
              "has_tumor": bool(np.any(target == 2))}
    if box is not None:
        record["box"] = [list(box.lo), list(box.hi)]
    return record


def _read_index(index_path: Path) -> list[Sample]:
    records = json.loads(index_path.read_text())["samples"]
    folder = index_path.parent
    return [
        Sample(r["case_id"], folder / r["image"], folder / r["label"],
               Box(tuple(r["box"][0]), tuple(r["box"][1])) if "box" in r else None, r["has_tumor"])
        for r in records
    ]
