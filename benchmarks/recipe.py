"""A quick proxy for choosing the stage-2 training recipe: a fixed number of training steps, several
seeds, scored at full resolution on both renderers, with spreads and bootstrap intervals.

    .venv/bin/python benchmarks/recipe.py [--steps 240] [--seeds 0 1] [--rows NAME ...] [--threads N]

Each row is one setting on top of the ``small`` preset's segmenter (96³, base 8, bf16, Adam 3e-3) with
the paper's HU window [-95, 155] (``small`` has since moved to [-79, 304], the row that won).
Every (row, seed) trains stage 2 alone on the ground-truth kidney crops of the 150 training cases
of benchmarks/kits19_split.json for exactly ``--steps`` steps (epochs of ``--draws`` draws; the
budget is counted in steps, so a busy machine changes the wall time, never the result), validates
once at the end on 5 % of the training cases and keeps those final weights. It is then scored on
the 30 validation cases, as rendered by ``kidneyseg synth --from-labels`` and by
benchmarks/independent_phantoms.py, at full resolution through ``segment(..., boxes=)`` with
the ground-truth boxes of the preset's box rules (probabilities resized, no test-time flips).

Per row: the mean over seeds of the case-mean Dice, the spread of the seed means (min to max), and
a bootstrap 95 % interval over cases of the seed-averaged per-case Dice. A row is better than
another only when the difference is outside both rows' spreads. Each result records the precision it
trained in (bf16 where the CPU runs it natively, else fp32: ``small`` asks for bf16), and the table keeps
the two apart: they differ as seeds do.

Run benchmarks/accuracy.py first (or at least let it render the cases). Each run is stored in
WORK/recipe/RUN/ (model) and WORK/recipe/RUN.json (scores) and reused when present (a run stopped
halfway continues from its last finished epoch); two processes with different ``--rows`` or ``--seeds``
and ``--threads 1`` use both cores. Every call prints the table of all rows scored so far and writes
WORK/recipe/table.md.

With ``--stage localizer`` the rows are LOCALIZER_ROWS, each on top of the ``small`` preset's localizer
as it is (64³, HU window [-79, 304]): stage 1 alone is trained for ``--steps`` steps on the 150
training CTs and scored on both renderers' 30 validation cases through ``kidneyseg.locate`` (the preset's
inference, stage 1 alone): localization recall (the share of each case's true kidney+tumour voxels inside
the predicted boxes), the number of boxes against the true kidneys, the precision of the localizer's mask at
full resolution (the share of it that is kidney or tumour) and the volume the boxes cover against the true
boxes' (the preset's box rules on the truth): a localizer that spills onto other tissue grows its boxes.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from accuracy import bootstrap_interval, box_recall, shared_cache
from confusion import segmenter_only

from kidneyseg import io
from kidneyseg.config import override_preset, preset, stage_from_dict
from kidneyseg.evaluation import case_scores
from kidneyseg.geometry import Box
from kidneyseg.inference import Localization, TwoStageModel, locate, segment
from kidneyseg.labels import tumor_ml
from kidneyseg.postprocess import kidney_boxes
from kidneyseg.training.cache import build_cache, fingerprint
from kidneyseg.training.fit import fit
from kidneyseg.weights import build_model, load_model, supported_precision

HERE = Path(__file__).resolve().parent
# Each row: the segmenter settings it changes from the small preset (its loss is Dice + cross-entropy).
ROWS = {
    "small: Dice + CE": [],
    "paper's weighted Dice alone": ["loss=dice"],
    "Dice + class-weighted CE": ["loss=dice_wce"],
    "regions: Dice + BCE": ["loss=regions", "class_weights=0,1,1"],
    "Dice + CE, deep supervision loss": ["deep_supervision_loss=true"],
    "regions, deep supervision loss": ["loss=regions", "class_weights=0,1,1", "deep_supervision_loss=true"],
    "Dice + CE, tumour sampling 0.5": ["tumor_fraction=0.5"],
    "Dice + CE, lr 1e-3": ["lr=1e-3"],
    "Dice + CE, HU window [-79, 304]": ["pipeline.hu_min=-79", "pipeline.hu_max=304"],
    "Dice + CE, poly schedule": ["lr_schedule=poly"],
    "weighted Dice, HU window [-79, 304]": ["loss=dice", "pipeline.hu_min=-79", "pipeline.hu_max=304"],
    "SGD 1e-2 Nesterov, poly schedule": ["optimizer=sgd", "lr=1e-2", "lr_schedule=poly"],
    "regions, tumour-weighted Dice (0.14, 0.85)": ["loss=regions"],
    "weighted Dice, poly schedule": ["loss=dice", "lr_schedule=poly"],
    "weighted Dice, deep supervision loss": ["loss=dice", "deep_supervision_loss=true"],
    "Dice + CE, HU [-79, 304], scale +-20 %": ["pipeline.hu_min=-79", "pipeline.hu_max=304", "scale_range=0.2"],
    "Dice + CE, HU [-79, 304], intensity 0.5": ["pipeline.hu_min=-79", "pipeline.hu_max=304", "intensity_prob=0.5"],
    "Dice + CE, HU [-79, 304], texture 0.3": ["pipeline.hu_min=-79", "pipeline.hu_max=304", "texture_prob=0.3"],
    "Dice + CE, HU [-79, 304], phase 0.3": ["pipeline.hu_min=-79", "pipeline.hu_max=304", "phase_prob=0.3"],
    "Dice + CE, HU [-79, 304], phase 0.3, tumour look 0.3": ["pipeline.hu_min=-79", "pipeline.hu_max=304",
                                                             "phase_prob=0.3", "tumor_look_prob=0.3"],
    "Dice + CE, HU [-79, 304], phase 0.3, scale +-20 %": ["pipeline.hu_min=-79", "pipeline.hu_max=304",
                                                          "phase_prob=0.3", "scale_range=0.2"],
    "Dice + CE, HU [-79, 304], phase 0.3, synthetic tumour 0.3": ["pipeline.hu_min=-79", "pipeline.hu_max=304",
                                                                  "phase_prob=0.3", "synthetic_tumor_prob=0.3"],
    "Dice + CE, HU [-79, 304], phase 0.6": ["pipeline.hu_min=-79", "pipeline.hu_max=304", "phase_prob=0.6"],
    "Dice + CE, HU [-79, 304], phase 0.3, sinus filled": ["pipeline.hu_min=-79", "pipeline.hu_max=304",
                                                          "phase_prob=0.3", "phase_sinus_prob=1.0"],
    "Dice + CE, HU [-79, 304], phase 0.6, cut box 0.3": ["pipeline.hu_min=-79", "pipeline.hu_max=304",
                                                         "phase_prob=0.6", "cut_box_prob=0.3"],
    "Dice + CE, HU [-79, 304], phase 0.6, dimmer kidney": ["pipeline.hu_min=-79", "pipeline.hu_max=304",
                                                           "phase_prob=0.6", "phase_offset=-0.6,0.3"],
    "Dice + CE, HU [-79, 304], empty crops 0.1": ["pipeline.hu_min=-79", "pipeline.hu_max=304", "empty_fraction=0.1"],
    "Dice + CE, HU [-79, 304], empty crops 0.3": ["pipeline.hu_min=-79", "pipeline.hu_max=304", "empty_fraction=0.3"],
    "Dice + CE, HU [-79, 304], level reference": ["pipeline.hu_min=-79", "pipeline.hu_max=304", "level_reference=true"],
    "Dice + CE, HU [-79, 304], phase 0.3, level reference": ["pipeline.hu_min=-79", "pipeline.hu_max=304",
                                                             "phase_prob=0.3", "level_reference=true"],
    "Dice + CE, HU [-79, 304], phase 0.3, viscera 0.3": ["pipeline.hu_min=-79", "pipeline.hu_max=304",
                                                         "phase_prob=0.3", "viscera_prob=0.3"],
    "Dice + CE, HU [-79, 304], viscera 0.3": ["pipeline.hu_min=-79", "pipeline.hu_max=304", "viscera_prob=0.3"],
    "Dice + CE, HU [-79, 304], phase 0.3 uneven, viscera 0.3": ["pipeline.hu_min=-79", "pipeline.hu_max=304",
                                                                "phase_prob=0.3", "phase_texture=0,0.25",
                                                                "viscera_prob=0.3"],
    "Dice + CE, HU [-79, 304], class curves 0.3": ["pipeline.hu_min=-79", "pipeline.hu_max=304",
                                                   "class_curve_prob=0.3"],
    "Dice + CE, HU [-79, 304], phase 0.3, viscera 0.3, class curves 0.3": ["pipeline.hu_min=-79",
                                                                           "pipeline.hu_max=304", "phase_prob=0.3",
                                                                           "viscera_prob=0.3", "class_curve_prob=0.3"],
}
# Each localizer row: the settings it changes from the small preset's localizer.
LOCALIZER_ROWS = {
    "small localizer": [],
    "tumour look 0.3": ["tumor_look_prob=0.3"],
    "phase 0.3, sinus filled, tumour look 0.3": ["phase_prob=0.3", "phase_sinus_prob=1.0", "tumor_look_prob=0.3"],
    "intensity 0.5": ["intensity_prob=0.5"],
    "large tumours 0.3": ["tumor_fraction=0.3", "tumor_weight=volume"],
    "large tumours 0.1": ["tumor_fraction=0.1", "tumor_weight=volume"],
    "large tumours 0.3, tumour look 0.3": ["tumor_fraction=0.3", "tumor_weight=volume", "tumor_look_prob=0.3"],
    "viscera 0.3": ["viscera_prob=0.3"],
    "large tumours 0.1, viscera 0.3": ["tumor_fraction=0.1", "tumor_weight=volume", "viscera_prob=0.3"],
}
# How training inputs were built: 1, a resize of the full-resolution crop, then MONAI's rotation of the resized
# cube (voxel space) and flips; 2, kidneyseg.stage_input: one interpolation for crop, zoom, shift, rotation
# (in mm) and flips. Rows measured with one are not compared with rows measured with the other.
INPUTS = 2
RENDERERS = {"validation": "training renderer", "independent": "independent renderer"}
REGIONS = ("kidney_tumor", "tumor")
INFERENCE = ["pipeline.resize_probabilities=true", "pipeline.tta_flips=false"]
# Every row starts from small with the paper's HU window, as small was when the rows in the README were
# measured; a row's own settings come after and override it.
BASE = ["pipeline.hu_min=-95", "pipeline.hu_max=155"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "accuracy")
    parser.add_argument("--steps", type=int, default=240, help="training steps per run")
    parser.add_argument("--draws", type=int, default=48, help="draws per epoch (steps must be a multiple)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--rows", nargs="*", help="row names or numbers (ROWS, or LOCALIZER_ROWS with --stage "
                        "localizer; default: the first 4)")
    parser.add_argument("--stage", choices=("segmenter", "localizer"), default="segmenter",
                        help="the stage the rows train (default segmenter)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--table-only", action="store_true", help="print the table of the runs stored so far")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps % args.draws:
        parser.error("--steps must be a multiple of --draws")
    for folder in ("train", *RENDERERS):
        if not (args.work / folder).is_dir():
            print(f"{args.work / folder} is missing: run benchmarks/accuracy.py first", file=sys.stderr)
            return 2
    out = args.work / "recipe"
    out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        names = list(ROWS if args.stage == "segmenter" else LOCALIZER_ROWS)
        chosen = [names[int(r)] if r.isdigit() else r for r in args.rows] if args.rows else names[:4]
        unknown = [name for name in chosen if name not in names]
        if unknown:
            parser.error(f"unknown rows for the {args.stage}: {unknown}")
        for name in chosen:
            for seed in args.seeds:
                (run if args.stage == "segmenter" else run_localizer)(name, seed, args.work, out, args.steps,
                                                                       args.draws)
    table = markdown(out) + "\n" + localizer_markdown(out)
    (out / "table.md").write_text(table)
    print(table)
    return 0


def run(name: str, seed: int, work: Path, out: Path, steps: int, draws: int) -> dict:
    """Train (row, seed) for ``steps`` steps and score it on both renderers; reuse a stored result."""
    small = preset("small")
    stage, pipeline = override_preset(small, "segmenter", [*BASE, *ROWS[name], *INFERENCE,
                                                           *step_budget(seed, steps, draws)])
    model_dir, precision, stored = run_slot(out, name.split(":")[0], steps, seed, stage,
                                            "" if INPUTS == 1 else f"-v{INPUTS}")
    if stored is not None:
        return stored
    train_seconds = train_once(work, model_dir, stage, pipeline)
    # The localizer is never run: segment(..., boxes=) replaces it with the ground-truth boxes.
    model = segmenter_only(model_dir)
    scores = {folder: score(work / folder, model) for folder in RENDERERS}
    result = {"row": name, "settings": ROWS[name], "inputs": INPUTS, "seed": seed, "steps": steps,
              "draws_per_epoch": draws, "train_precision": precision,
              "threads": torch.get_num_threads(), "train_seconds": train_seconds, "per_case": scores}
    (out / f"{model_dir.name}.json").write_text(json.dumps(result, indent=1))
    return result


def run_localizer(name: str, seed: int, work: Path, out: Path, steps: int, draws: int) -> dict:
    """Train the localizer of (row, seed) for ``steps`` steps and score its boxes on both renderers."""
    small = preset("small")
    stage, pipeline = override_preset(small, "localizer", [*LOCALIZER_ROWS[name], *step_budget(seed, steps, draws)])
    model_dir, precision, stored = run_slot(out, f"localizer {name}", steps, seed, stage)
    if stored is not None:
        return stored
    train_seconds = train_once(work, model_dir, stage, pipeline)
    net, trained, _ = load_model(model_dir / "localizer" / "best.safetensors")
    model = TwoStageModel(net, trained, build_model(small.segmenter), small.segmenter, pipeline)
    scores = {}
    for folder in RENDERERS:
        scores[folder] = {}
        for case in io.layout.kits_cases(work / folder):
            image, truth = io.load_case(case)
            found = locate(image, model)  # stage 1 alone: the boxes segment() would crop
            true_boxes = kidney_boxes(truth.array > 0, pipeline, image.spacing_mm)
            scores[folder][case.case_id] = {
                "recall": box_recall(truth.array > 0, found.boxes), "boxes": len(found.boxes),
                "kidneys": len(true_boxes), "precision": mask_precision(found, truth.array),
                "box_ml": boxes_ml(found.boxes, image), "true_box_ml": boxes_ml(true_boxes, image)}
    result = {"row": name, "stage": "localizer", "settings": LOCALIZER_ROWS[name], "seed": seed, "steps": steps,
              "draws_per_epoch": draws, "train_precision": precision,
              "threads": torch.get_num_threads(), "train_seconds": train_seconds,
              "per_case": scores}
    (out / f"{model_dir.name}.json").write_text(json.dumps(result, indent=1))
    return result


def run_slot(out: Path, row: str, steps: int, seed: int, stage, suffix: str = "") -> tuple[Path, str, dict | None]:
    """Where (row, steps, seed) keeps its run: the run folder OUT/SLUG (its scores in OUT/SLUG.json), the
    precision it trains in on this machine, and its stored result (None: not run yet)."""
    slug = f"{re.sub('[^a-z0-9]+', '-', row.lower()).strip('-')}-{steps}{suffix}-s{seed}"
    precision = trained_precision(stage)
    slug, stored = stored_result(out, slug, precision)
    return out / slug, precision, stored


def stored_result(out: Path, slug: str, precision: str) -> tuple[str, dict | None]:
    """Where (row, steps, seed) trained in ``precision`` keeps its result, and that result if stored.

    A row's first result is ``OUT/SLUG.json`` whatever its precision; a run in another precision (the
    same work folder on a machine with or without native bf16) goes to ``OUT/SLUG-PRECISION.json``
    instead of reusing it. Results from before the precision was recorded count as ``precision``'s."""
    for candidate in (slug, f"{slug}-{precision}"):
        path = out / f"{candidate}.json"
        if not path.exists():
            return candidate, None
        stored = json.loads(path.read_text())
        if stored.get("train_precision", precision) == precision:
            return candidate, stored
    raise RuntimeError(f"{path}: a {stored['train_precision']} result under the slug kept for {precision}")


def trained_precision(stage) -> str:
    """The precision this machine trains ``stage`` in (fit's rule: bf16 only where the CPU runs it natively),
    stored with each result: bf16 and fp32 runs of one row differ as much as seeds do, so the table keeps
    them apart. Silent: fit itself warns where bf16 falls back to fp32."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return supported_precision(stage.precision, "cpu", "training")


def mask_precision(found: Localization, truth: np.ndarray) -> float:
    """The share of the localizer's mask (at full resolution) that is kidney or tumour in ``truth``; 1.0 for
    an empty mask (nothing claimed, nothing wrong; recall says what was missed)."""
    if found.mask is None:
        return 1.0
    window = tuple(slice(o, o + n) for o, n in zip(found.origin, found.mask.shape, strict=True))
    claimed = found.mask > 0
    return float(np.count_nonzero(truth[window][claimed]) / np.count_nonzero(claimed))


def boxes_ml(boxes: list[Box], image: io.Volume) -> float:
    """The volume of the CT (mL) that the boxes cover, each box counted inside the CT; overlaps count once."""
    inside = [box.inside(image.shape) for box in boxes]
    if not inside:
        return 0.0
    # A mask over the boxes' joint extent only, not the whole CT.
    lo = np.min([box.lo for box in inside], axis=0)
    hi = np.max([box.hi for box in inside], axis=0)
    covered = np.zeros(hi - lo, bool)
    for box in inside:
        covered[box.shifted(tuple(-lo)).slices] = True
    return float(np.count_nonzero(covered) * np.prod(image.spacing_mm) / 1000.0)


def step_budget(seed: int, steps: int, draws: int) -> list[str]:
    """Settings for exactly ``steps`` steps in epochs of ``draws`` draws, validated once at the end on 5 %
    of the training cases, with no time limit."""
    epochs = steps // draws
    return [f"seed={seed}", f"epochs={epochs}", f"samples_per_epoch={draws}", f"val_every={epochs}",
            "val_fraction=0.05", "max_minutes=0"]


def train_once(work: Path, model_dir: Path, stage, pipeline) -> float | None:
    """Train ``stage`` into ``model_dir`` on WORK/train unless a finished run of it is there (one that
    stopped before its scoring); the seconds it took, or None. A run of exactly these settings that stopped
    halfway (killed, or its cache rebuilt under it) continues from its last finished epoch: each draw depends
    on (seed, epoch, draw) alone and the resume state holds the rest, so the result is an unbroken run's
    (tests/test_reliability.py checks that for ``kidneyseg train --resume``)."""
    cases = io.layout.kits_cases(work / "train")
    # One cache folder per fingerprint (settings, files, code), so that rows with other HU windows or
    # box rules, run in parallel, never rebuild a cache another row is reading.
    cache = "cache-" + hashlib.sha256(json.dumps(fingerprint(cases, stage, pipeline)).encode()).hexdigest()[:10]
    shared_cache(work, model_dir, cache)
    run_dir = model_dir / stage.stage
    if trained_already(run_dir, stage):
        return None
    resume = same_settings(run_dir, stage) and (run_dir / "last_state.pt").exists()
    start = time.perf_counter()
    with open(work / f"{cache}.lock", "w") as lock:  # parallel runs build the shared cache once
        fcntl.flock(lock, fcntl.LOCK_EX)
        build_cache(cases, work / cache / stage.stage, stage, pipeline)
    fit(work / "train", model_dir, stage, pipeline, resume=resume, overwrite=not resume)
    return time.perf_counter() - start


def same_settings(run_dir: Path, stage) -> bool:
    """The run folder was started with exactly ``stage``."""
    config = run_dir / "config.json"
    return config.exists() and stage_from_dict(json.loads(config.read_text())["stage"]) == stage


def trained_already(run_dir: Path, stage) -> bool:
    """The run folder holds a finished run of exactly ``stage``: its settings and all its epochs."""
    log = run_dir / "log.csv"
    if not (same_settings(run_dir, stage) and log.exists() and (run_dir / "best.safetensors").exists()):
        return False
    return len(log.read_text().strip().splitlines()) - 1 == stage.epochs


def score(folder: Path, model: TwoStageModel) -> dict[str, dict[str, float]]:
    """Kidney+tumour and tumour Dice per case, stage 2 on the ground-truth boxes, full resolution."""
    per_case = {}
    for case in io.layout.kits_cases(folder):
        image, truth = io.load_case(case)
        boxes = kidney_boxes(truth.array > 0, model.pipeline, image.spacing_mm)
        scores = case_scores(segment(image, model, boxes=boxes).labels, truth.array)
        per_case[case.case_id] = {region: scores[region] for region in REGIONS}
    return per_case


def summarize_row(runs: list[dict], folder: str, region: str, draws: int = 2000) -> dict[str, float]:
    """Mean over seeds of the case-mean Dice, the seed means' min and max, and a bootstrap 95 %
    interval over cases of the seed-averaged per-case Dice (``draws`` resamples, fixed seed)."""
    cases = sorted(runs[0]["per_case"][folder])
    table = np.array([[r["per_case"][folder][c][region] for c in cases] for r in runs])  # (seeds, cases)
    seed_means = table.mean(axis=1)
    low, high = bootstrap_interval(table.mean(axis=0), draws)
    return {"mean": float(seed_means.mean()), "seed_min": float(seed_means.min()),
            "seed_max": float(seed_means.max()), "ci_low": low, "ci_high": high}


def markdown(out: Path) -> str:
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    # the runs' results only (false_boxes.py keeps its own results in this folder too)
    runs = [r for r in runs if "row" in r and r.get("stage", "segmenter") == "segmenter"]
    groups: dict[tuple[str, int, int, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["row"], r["steps"], r.get("inputs", 1), r.get("train_precision", "?")), []).append(r)
    header = " | ".join(f"{RENDERERS[f]}: {'kidney+tumour' if g == 'kidney_tumor' else 'tumour'}"
                        for f in RENDERERS for g in REGIONS)
    lines = [f"| recipe (stage 2, ground-truth boxes) | inputs | precision | steps | seeds | {header} |",
             "|---|---|---|---|---|" + "---|" * (len(RENDERERS) * len(REGIONS))]
    order = {name: i for i, name in enumerate(ROWS)}
    for (name, steps, inputs, precision), group in sorted(
            groups.items(), key=lambda kv: (kv[0][2], kv[0][3], kv[0][1], order.get(kv[0][0], 99))):
        cells = []
        for folder in RENDERERS:
            for region in REGIONS:
                s = summarize_row(group, folder, region)
                cells.append(f"{s['mean']:.3f} ({s['seed_min']:.3f}-{s['seed_max']:.3f}; "
                             f"CI {s['ci_low']:.2f}-{s['ci_high']:.2f})")
        lines.append(f"| {name} | v{inputs} | {precision} | {steps} | {len(group)} | {' | '.join(cells)} |")
    # Wall-clock minutes per run are in each run's JSON (train_seconds) but not here: runs share the
    # machine, so they say nothing about a row's cost; that follows from steps x the step time of
    # benchmarks/train_speed.py, measured on a quiet machine.
    return ("Each cell: mean over seeds (seed means min-max; bootstrap 95 % interval over the 30 cases). Inputs v1:\n"
            "resize, then rotation of the resized cube; v2: one interpolation (kidneyseg.stage_input).\n"
            "Precision: what the machine trained in (?: not recorded, runs before it was).\n\n"
            + "\n".join(lines) + "\n")


LARGE_TUMOUR_ML = 300.0  # the localizer's misses are tumours above this (KiTS19 split: 13 of 150 training cases)


def large_tumour_cases(folder: Path) -> list[str]:
    """The cases of ``folder`` whose true tumour is larger than LARGE_TUMOUR_ML."""
    large = []
    for case in io.layout.kits_cases(folder):
        labels = io.load_label_map(case.label)
        if tumor_ml(labels.array, labels.spacing_mm) > LARGE_TUMOUR_ML:
            large.append(case.case_id)
    return large


def localizer_markdown(out: Path) -> str:
    """The localizer rows: per renderer, the recall (mean over seeds, seed means min-max, bootstrap 95 %
    interval over cases of the seed-averaged recall), the same mean over the cases with a large tumour, the
    cases whose box count differs from the true kidneys' (summed over seeds), the mask's precision and the
    boxes' volume against the true boxes' (case means, mean over seeds and min-max)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for path in sorted(out.glob("localizer-*.json")):
        r = json.loads(path.read_text())
        groups.setdefault((r["row"], r["steps"]), []).append(r)
    if not groups:
        return ""
    large = large_tumour_cases(out.parent / "validation")  # both renderers draw the same label maps
    header = " | ".join(f"{RENDERERS[f]}: recall | {RENDERERS[f]}: recall, tumours > {LARGE_TUMOUR_ML:.0f} mL | "
                        f"{RENDERERS[f]}: wrong box count | {RENDERERS[f]}: mask precision | "
                        f"{RENDERERS[f]}: box volume / true"
                        for f in RENDERERS)
    lines = [f"| localizer recipe | steps | seeds | {header} |", "|---|---|---|" + "---|" * (5 * len(RENDERERS))]
    order = {name: i for i, name in enumerate(LOCALIZER_ROWS)}
    for (name, steps), group in sorted(groups.items(), key=lambda kv: (kv[0][1], order.get(kv[0][0], 99))):
        cells = []
        for folder in RENDERERS:
            cases = sorted(group[0]["per_case"][folder])
            table = np.array([[r["per_case"][folder][c]["recall"] for c in cases] for r in group])
            means = table.mean(axis=1)
            low, high = bootstrap_interval(table.mean(axis=0))
            wrong = sum(v["boxes"] != v["kidneys"] for r in group for v in r["per_case"][folder].values())
            big = table[:, [cases.index(c) for c in large]].mean(axis=1)
            cells += [f"{means.mean():.3f} ({means.min():.3f}-{means.max():.3f}; CI {low:.2f}-{high:.2f})",
                      f"{big.mean():.3f} ({big.min():.3f}-{big.max():.3f}; {len(large)} cases)",
                      f"{wrong} of {len(group) * len(cases)}"]
            for per_case in (lambda v: v["precision"], lambda v: v["box_ml"] / v["true_box_ml"]):
                try:
                    seed_means = np.array([np.mean([per_case(r["per_case"][folder][c]) for c in cases])
                                           for r in group])
                except KeyError:  # a run scored before these were measured
                    cells.append("-")
                    continue
                cells.append(f"{seed_means.mean():.2f} ({seed_means.min():.2f}-{seed_means.max():.2f})")
        lines.append(f"| {name} | {steps} | {len(group)} | {' | '.join(cells)} |")
    return ("Localizer rows: recall, box counts, mask precision and box volume on each renderer's 30 validation "
            "cases.\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
