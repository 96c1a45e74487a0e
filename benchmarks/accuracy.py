"""Accuracy benchmark on CTs rendered around the real KiTS19 label maps.

    .venv/bin/python benchmarks/accuracy.py [--minutes 60 | --steps L S] [--preset small] [--work DIR]
                                            [--set KEY=VALUE ...] [--main-only]

1. Renders a CT around each of the 180 label maps in ../shared/data/kits19-labels (fixed seed,
   cached in WORK/rendered), using the fixed 150/30 split in benchmarks/kits19_split.json.
2. Trains both stages on the 150 training cases with a CPU preset under a total training budget,
   split between the stages as the preset splits its own minutes (small: a sixth for the
   localizer); the model stays in WORK/model-TAG. With ``--steps L S`` each stage trains for a fixed
   number of steps instead (whole epochs, no time limit): the same budget on a slower or busier
   machine, so that two recipes compare at equal steps.
3. Predicts the 30 validation cases at full resolution through the real ``segment`` path and
   scores them: kidney+tumour, tumour and kidney Dice (mean and per case), localization recall
   (share of true kidney+tumour voxels inside the predicted boxes), stage-2 Dice with
   ground-truth boxes (oracle), for the pipeline as trained and for each inference ablation.
4. Scores the same model on the validation label maps drawn by a second, independent renderer
   (benchmarks/independent_phantoms.py, in WORK/independent) and on the real non-contrast CT of
   ../shared/data/real-ct (kidney Dice against TotalSegmentator's masks), both with the inference
   settings that scored best.
With ``--main-only`` only the preset's own inference is scored (steps 3-4 without ablations, oracle
or real CT), and the model directory's path is printed for reuse on other data.

5. Writes WORK/results-TAG.json, WORK/results-TAG.md and WORK/learning-curve-TAG.png (validation
   Dice against training minutes for each stage), with an extrapolation of the segmenter's curve
   to the minutes that would reach the targets (kidney+tumour 0.93, tumour 0.70).

The preprocessing caches live in WORK/cache, shared by every model trained here.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from kidneyseg import io
from kidneyseg.config import override_preset, preset, to_dict
from kidneyseg.evaluation import case_scores, summarize
from kidneyseg.inference import load_model_dir, segment
from kidneyseg.postprocess import kidney_boxes
from kidneyseg.training.fit import fit

HERE = Path(__file__).resolve().parent
LABELS = HERE.parents[1] / "shared" / "data" / "kits19-labels"
REAL_CT = HERE.parents[1] / "shared" / "data" / "real-ct"
# Inference ablations against the trained pipeline ("as trained": the preset's own inference; for `small`
# boxes in mm, probabilities resized, flips averaged). Each row switches one part back to the paper's way
# (boxes in voxels, labels resized nearest, no flips); the last switches all of them.
PAPER_INFERENCE = {"margin_mm": 0.0, "min_box_mm": 0.0, "resize_probabilities": False, "tta_flips": False}
ABLATIONS = {"as trained": {}, "boxes in voxels (10 margin, 64 minimum)": {"margin_mm": 0.0, "min_box_mm": 0.0},
             "labels resized nearest": {"resize_probabilities": False}, "no test-time flips": {"tta_flips": False},
             "the paper's inference (all three)": PAPER_INFERENCE}
TARGETS = {"kidney_tumor": 0.93, "tumor": 0.70}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, default=LABELS)
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "accuracy")
    parser.add_argument("--minutes", type=float, default=60.0, help="total training budget (both stages)")
    parser.add_argument("--steps", type=int, nargs=2, metavar=("LOCALIZER", "SEGMENTER"),
                        help="train each stage for this many steps (whole epochs of the preset's draws, rounded "
                        "up) instead of --minutes: a budget that a slower or busier machine does not shrink, for "
                        "comparing recipes across runs (the standing small row made 2996 and 4962)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seed", type=int, default=0, help="rendering seed")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="settings for both stages, or for one with a stage prefix, e.g. --set "
                        "pipeline.margin_mm=8 --set loss=dice --set localizer.tumor_look_prob=0.3")
    parser.add_argument("--tag", default="default", help="names the model and result files")
    parser.add_argument("--skip-training", action="store_true", help="evaluate an existing WORK/model-TAG")
    parser.add_argument("--resume", action="store_true",
                        help="continue the training of WORK/model-TAG where it stopped (each stage from its last "
                        "finished epoch; a finished stage is kept), with the same other options; the results' "
                        "train_seconds then count this run's part only")
    parser.add_argument("--table-only", action="store_true",
                        help="rewrite WORK/results-TAG.md from WORK/results-TAG.json and print it (no training)")
    parser.add_argument("--device", default="cpu", help="torch device for training and evaluation, e.g. cuda")
    parser.add_argument("--jobs", type=int, default=1,
                        help="processes rendering the phantoms (the training's input workers and cache follow "
                        "the device: none on a CPU, one per core beyond the first on a GPU, at most 8)")
    parser.add_argument("--no-independent", action="store_true",
                        help="skip the independent renderer (rendering it takes about 30 s per case and process)")
    parser.add_argument("--limit", type=int, default=0,
                        help="only the first N training and N validation cases of the split: a quick rehearsal")
    parser.add_argument("--main-only", action="store_true",
                        help="score only the preset's own inference (no ablations, no oracle, no real CT): render, "
                             "cache, train and evaluate fit in about 100 minutes on 2 cores")
    args = parser.parse_args()
    if args.table_only:
        write_table(json.loads((args.work / f"results-{args.tag}.json").read_text()), args.work, args.tag)
        return 0
    if not args.labels.is_dir():
        print(f"label maps not found at {args.labels}", file=sys.stderr)
        return 2
    split = json.loads((HERE / "kits19_split.json").read_text())
    if args.limit:
        split = {**split, "train": split["train"][: args.limit], "validation": split["validation"][: args.limit]}
    train_dir, val_dir = render(args.labels, args.work, split, args.seed, args.jobs)
    model_dir = args.work / f"model-{args.tag}"
    timings = {} if args.skip_training else train(train_dir, model_dir, args)
    print(f"model directory: {model_dir}", flush=True)
    ablations = {"as trained": {}} if args.main_only else ABLATIONS
    ablations = {name: {**options, "device": args.device} for name, options in ablations.items()}
    evaluations = evaluate(val_dir, model_dir, ablations, oracle=None if args.main_only else "as trained")
    best = max(evaluations, key=lambda name: evaluations[name]["summary"]["kidney_tumor"]["mean"])
    if not args.no_independent:
        independent_dir = render_independent(args.labels, args.work, split["validation"], args.jobs)
        evaluations[f"independent renderer, {best}"] = evaluate(independent_dir, model_dir, {best: ablations[best]},
                                                                oracle=None if args.main_only else best)[best]
    results = {"preset": args.preset, "overrides": args.overrides,
               "minutes": None if args.steps else args.minutes, "step_budget": args.steps, "device": args.device,
               "train_seconds": timings, "steps": steps_done(model_dir), "evaluations": evaluations,
               "real_ct": None if args.main_only else real_ct(model_dir, ablations[best])}
    results["learning_curve"] = learning_curve(model_dir, args.work / f"learning-curve-{args.tag}.png")
    (args.work / f"results-{args.tag}.json").write_text(json.dumps(results, indent=1))
    write_table(results, args.work, args.tag)
    return 0


def render(labels: Path, work: Path, split: dict, seed: int, jobs: int = 1) -> tuple[Path, Path]:
    """Render missing cases once into WORK/rendered (``jobs`` processes; each case depends only on the
    seed and its id); link them into train/ and validation/ folders."""
    from kidneyseg.synthetic import synthesize_from_labels

    rendered = work / "rendered"
    wanted = split["train"] + split["validation"]
    missing = [c for c in wanted if not (rendered / c / "imaging.nii.gz").exists()]
    if missing and jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            list(pool.map(partial(synthesize_from_labels, labels, rendered, seed, False), [[c] for c in missing]))
    elif missing:
        synthesize_from_labels(labels, rendered, seed, cases=missing)
    folders = []
    for name, cases in (("train", split["train"]), ("validation", split["validation"])):
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        for case in cases:
            if not (folder / case).exists():
                (folder / case).symlink_to((rendered / case).resolve(), target_is_directory=True)
        folders.append(folder)
    return folders[0], folders[1]


def render_independent(labels: Path, work: Path, cases: list[str], jobs: int = 1) -> Path:
    """The validation cases drawn by benchmarks/independent_phantoms.py (seed 7), once, into WORK/independent
    (``jobs`` processes)."""
    from independent_phantoms import render_case

    folder = work / "independent"
    missing = [labels / case / "segmentation.nii.gz" for case in cases
               if not (folder / case / "imaging.nii.gz").exists()]
    with ProcessPoolExecutor(max(jobs, 1)) as pool:
        list(pool.map(partial(render_case, out_dir=folder, seed=7), missing))
    return folder


def real_ct(model_dir: Path, options: dict) -> dict | None:
    """Kidney Dice on the one real CT in ../shared (non-contrast, 3 mm) against TotalSegmentator's
    kidney masks. The model was trained on contrast-enhanced phantoms, so this measures how far it
    carries to a real scan of another phase, not its accuracy on KiTS19."""
    if not (REAL_CT / "ct.nii.gz").exists():
        return None
    ct = io.load_ct(REAL_CT / "ct.nii.gz")
    truth = sum(io.load_label_map(REAL_CT / "masks" / f"kidney_{side}.nii.gz").array > 0
                for side in ("left", "right"))
    result = segment(ct, load_model_dir(model_dir, **options))
    return {"kidney_dice": case_scores(result.labels, truth.astype(np.uint8))["kidney_tumor"],
            "kidneys_found": len(result.boxes), "predicted_tumor_ml": float(np.count_nonzero(result.labels == 2)
                                                                             * np.prod(ct.spacing_mm) / 1000)}


def shared_cache(work: Path, model_dir: Path, name: str = "cache") -> None:
    """Point ``model_dir/cache`` at WORK/``name``, so that every model trained here (and each row of
    benchmarks/recipe.py) reuses one preprocessing cache; its fingerprint still guards against stale data."""
    model_dir.mkdir(parents=True, exist_ok=True)
    link = model_dir / "cache"
    if not link.exists():
        (work / name).mkdir(parents=True, exist_ok=True)
        link.symlink_to((work / name).resolve(), target_is_directory=True)


def train(train_dir: Path, model_dir: Path, args) -> dict[str, float]:
    chosen, timings = preset(args.preset), {}
    shared_cache(args.work, model_dir)
    # The budget is split as the preset splits its own minutes (small: a sixth for the localizer).
    minutes = {name: chosen.stage(name).max_minutes for name in ("localizer", "segmenter")}
    total = sum(minutes.values())
    for k, name in enumerate(("localizer", "segmenter")):
        share = minutes[name] / total if total else 0.5
        budget = [f"max_minutes={args.minutes * share}", "epochs=100000"]
        if args.steps:
            stage, _ = override_preset(chosen, name, args.overrides)
            draws = stage.samples_per_epoch or len(io.layout.kits_cases(train_dir))
            budget = ["max_minutes=0", f"epochs={-(-args.steps[k] * stage.batch_size // draws)}"]
        stage, pipeline = override_preset(chosen, name, [*budget, *args.overrides])
        start = time.perf_counter()
        fit(train_dir, model_dir, stage, pipeline, resume=args.resume, overwrite=not args.resume, device=args.device)
        timings[name] = time.perf_counter() - start
    return timings


def evaluate(val_dir: Path, model_dir: Path, ablations: dict[str, dict], oracle: str | None = None) -> dict[str, dict]:
    """Scores of the validation cases for each ablation (pipeline overrides), reading each case once;
    for the ablation named ``oracle`` also stage 2 alone on ground-truth boxes."""
    models = {name: load_model_dir(model_dir, **options) for name, options in ablations.items()}
    per_case = {name: {} for name in ablations}
    oracle_scores, recall, seconds = {}, {name: {} for name in ablations}, {name: [] for name in ablations}
    for case in io.layout.kits_cases(val_dir):
        image, truth = io.load_case(case)
        for name, model in models.items():
            start = time.perf_counter()
            result = segment(image, model)
            seconds[name].append(time.perf_counter() - start)
            per_case[name][case.case_id] = case_scores(result.labels, truth.array)
            recall[name][case.case_id] = box_recall(truth.array > 0, result.boxes)
            if name == oracle:
                true_boxes = kidney_boxes(truth.array > 0, model.pipeline, image.spacing_mm)
                oracle_scores[case.case_id] = case_scores(segment(image, model, boxes=true_boxes).labels, truth.array)
    return {name: {"pipeline": to_dict(models[name].pipeline), "summary": summarize(per_case[name]),
                   "per_case": per_case[name], "oracle_summary": summarize(oracle_scores) if name == oracle else None,
                   "localization_recall": float(np.mean(list(recall[name].values()))),
                   "per_case_recall": recall[name], "seconds_per_case": float(np.mean(seconds[name]))}
            for name in ablations}


def box_recall(truth: np.ndarray, boxes) -> float:
    """Share of true kidney+tumour voxels inside the union of the predicted boxes."""
    inside = np.zeros(truth.shape, bool)
    for box in boxes:
        inside[box.inside(truth.shape).slices] = True
    total = np.count_nonzero(truth)
    return float(np.count_nonzero(truth & inside) / total) if total else 1.0


def steps_done(model_dir: Path) -> dict[str, int]:
    """Training steps each stage made (log.csv's draws per epoch over the batch size)."""
    steps = {}
    for stage in ("localizer", "segmenter"):
        batch = json.loads((model_dir / stage / "config.json").read_text())["stage"]["batch_size"]
        with open(model_dir / stage / "log.csv", newline="") as handle:
            steps[stage] = sum(-(-int(row["samples"]) // batch) for row in csv.DictReader(handle) if row["samples"])
    return steps


def learning_curve(model_dir: Path, png: Path) -> dict[str, dict[str, list[float]]]:
    """Validation Dice against cumulative training minutes, per stage and region (from log.csv):
    the localizer's kidney+tumour Dice on the whole scan, the segmenter's kidney+tumour and tumour
    Dice in the ground-truth crops (per case, at the networks' input resolution)."""
    from matplotlib.figure import Figure

    curves = {}
    for stage in ("localizer", "segmenter"):
        with open(model_dir / stage / "log.csv", newline="") as handle:
            reader = csv.DictReader(handle)
            # Epochs between validations leave the validation columns empty.
            values = [row for row in reader if row.get("val_kidney_tumor")]
        curves[stage] = {key: [float(v[key]) for v in values] for key in ("minutes", "val_kidney_tumor", "val_tumor")
                         if key in reader.fieldnames and all(v[key] for v in values)}
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for stage, curve in curves.items():
        for key in ("val_kidney_tumor", "val_tumor"):
            if key in curve:
                ax.plot(curve["minutes"], curve[key], marker=".", label=f"{stage}: {key[4:].replace('_', '+')}")
    ax.set(xlabel="training minutes of the stage", ylabel="validation Dice (network input resolution)", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(png, dpi=100)
    return curves


def write_table(results: dict, work: Path, tag: str) -> None:
    """WORK/results-TAG.md from the results, also printed."""
    table = markdown(results)
    (work / f"results-{tag}.md").write_text(table)
    print(table)


def bootstrap_interval(values, draws: int = 2000) -> tuple[float, float]:
    """A bootstrap 95 % interval of the mean of ``values`` (one per case): ``draws`` resamples of the
    cases with replacement, fixed seed."""
    values = np.asarray(values, dtype=np.float64)
    resampled = np.random.default_rng(0).integers(0, len(values), size=(draws, len(values)))
    low, high = np.percentile(values[resampled].mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


def markdown(results: dict) -> str:
    """The results as a table: each region's mean over the cases, with a bootstrap 95 % interval
    over the cases for kidney+tumour and tumour (how much the mean depends on which cases were drawn;
    not the spread between training runs)."""
    lines = ["| inference | kidney+tumour (95 % CI) | tumour (95 % CI) | kidney | oracle kidney+tumour | "
             "oracle tumour | localization recall | s/case |", "|---|---|---|---|---|---|---|---|"]
    for name, ev in results["evaluations"].items():
        s, o = ev["summary"], ev["oracle_summary"]
        oracle = f"{o['kidney_tumor']['mean']:.3f} | {o['tumor']['mean']:.3f}" if o else "- | -"
        cells = []
        for region in ("kidney_tumor", "tumor"):
            low, high = bootstrap_interval([case[region] for case in ev["per_case"].values()])
            cells.append(f"{s[region]['mean']:.3f} ({low:.2f}-{high:.2f})")
        lines.append(f"| {name} | {' | '.join(cells)} | "
                     f"{s['kidney_only']['mean']:.3f} | {oracle} | {ev['localization_recall']:.3f} | "
                     f"{ev['seconds_per_case']:.1f} |")
    steps = results.get("steps", {})
    budget = ", ".join(f"{k} {v / 60:.1f} min" + (f" ({steps[k]:,} steps)" if k in steps else "")
                       for k, v in results["train_seconds"].items())
    fixed = f", a budget of {results['step_budget'][0]:,} / {results['step_budget'][1]:,} steps" \
        if results.get("step_budget") else ""
    text = (f"preset {results['preset']}, overrides {results['overrides'] or 'none'}{fixed}, "
            f"training with its cache {budget or 'reused'} on {results.get('device', 'cpu')}"
            "\n\n" + "\n".join(lines) + "\n")
    if results.get("real_ct"):
        r = results["real_ct"]
        text += (f"\nReal non-contrast CT (../shared/data/real-ct, TotalSegmentator kidney masks): kidney Dice "
                 f"{r['kidney_dice']:.3f}, {r['kidneys_found']} kidney boxes, {r['predicted_tumor_ml']:.1f} ml "
                 "labelled tumour.\n")
    best = max(results["evaluations"].values(), key=lambda ev: ev["summary"]["kidney_tumor"]["mean"])
    for region, target in TARGETS.items():
        reached = best["summary"][region]["mean"]
        text += f"\n{region}: {reached:.3f} (target {target}); " + extrapolate(results["learning_curve"]["segmenter"],
                                                                              region, target - reached)
    return text + "\n"


def extrapolate(curve: dict[str, list[float]], region: str, gap: float) -> str:
    """Minutes of segmenter training a log-linear fit of the second half of its learning curve
    (Dice = a + b ln minutes) says would add ``gap`` Dice. A rough guide: curves flatten."""
    if gap <= 0:
        return "reached"
    minutes, dice = np.array(curve["minutes"]), np.array(curve[f"val_{region}"])
    half = len(minutes) // 2
    if len(minutes) - half < 3:
        return "too few epochs to extrapolate"
    slope = np.polyfit(np.log(minutes[half:]), dice[half:], 1)[0]
    if slope <= 0:
        return "the curve is flat: more minutes of this recipe would not close the gap"
    needed = minutes[-1] * np.exp(gap / slope)
    return (f"the segmenter's curve gains {slope * np.log(2):.3f} Dice per doubling of its minutes, so about "
            f"{needed:,.0f} minutes instead of {minutes[-1]:.0f} would close the gap")


if __name__ == "__main__":
    sys.exit(main())
