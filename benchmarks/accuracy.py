"""Accuracy benchmark on CTs rendered around the real KiTS19 label maps.

    .venv/bin/python benchmarks/accuracy.py [--minutes 60] [--preset small] [--work DIR] [--set KEY=VALUE ...]

1. Renders a CT around each of the 180 label maps in ../shared/data/kits19-labels (fixed seed,
   cached in WORK/rendered), using the fixed 150/30 split in benchmarks/kits19_split.json.
2. Trains both stages on the 150 training cases with a CPU preset under a total training budget
   (a third for the localizer, the rest for the segmenter); the model stays in WORK/model-TAG.
3. Predicts the 30 validation cases at full resolution through the real ``segment`` path and
   scores them: kidney+tumour, tumour and kidney Dice (mean and per case), localization recall
   (share of true kidney+tumour voxels inside the predicted boxes), stage-2 Dice with
   ground-truth boxes (oracle), for the pipeline as trained and for each inference ablation.
4. Writes WORK/results-TAG.json, WORK/results-TAG.md and WORK/learning-curve-TAG.png (validation
   Dice against training minutes for each stage).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
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
# Inference ablations against the trained pipeline (the paper's defaults: labels resized nearest, no flips).
ABLATIONS = {"as trained": {}, "probabilities resized": {"resize_probabilities": True},
             "test-time flips": {"tta_flips": True}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, default=LABELS)
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "accuracy")
    parser.add_argument("--minutes", type=float, default=60.0, help="total training budget (both stages)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seed", type=int, default=0, help="rendering seed")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="settings for both stages, e.g. --set pipeline.margin_mm=8 --set loss=dice")
    parser.add_argument("--tag", default="default", help="names the model and result files")
    parser.add_argument("--skip-training", action="store_true", help="evaluate an existing WORK/model-TAG")
    args = parser.parse_args()
    if not args.labels.is_dir():
        print(f"label maps not found at {args.labels}", file=sys.stderr)
        return 2
    split = json.loads((HERE / "kits19_split.json").read_text())
    train_dir, val_dir = render(args.labels, args.work, split, args.seed)
    model_dir = args.work / f"model-{args.tag}"
    timings = {} if args.skip_training else train(train_dir, model_dir, args)
    evaluations = {name: evaluate(val_dir, model_dir, opts, oracle=not opts) for name, opts in ABLATIONS.items()}
    results = {"preset": args.preset, "overrides": args.overrides, "minutes": args.minutes, "train_seconds": timings,
               "evaluations": evaluations}
    results["learning_curve"] = learning_curve(model_dir, args.work / f"learning-curve-{args.tag}.png")
    (args.work / f"results-{args.tag}.json").write_text(json.dumps(results, indent=1))
    (args.work / f"results-{args.tag}.md").write_text(markdown(results))
    print(markdown(results))
    return 0


def render(labels: Path, work: Path, split: dict, seed: int) -> tuple[Path, Path]:
    """Render missing cases once into WORK/rendered; link them into train/ and validation/ folders."""
    from kidneyseg.synthetic import synthesize_from_labels

    rendered = work / "rendered"
    wanted = split["train"] + split["validation"]
    missing = [c for c in wanted if not (rendered / c / "imaging.nii.gz").exists()]
    if missing:
        synthesize_from_labels(labels, rendered, seed, cases=missing)
    folders = []
    for name, cases in (("train", split["train"]), ("validation", split["validation"])):
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        for case in cases:
            if not (folder / case).exists():
                (folder / case).symlink_to(rendered / case, target_is_directory=True)
        folders.append(folder)
    return folders[0], folders[1]


def train(train_dir: Path, model_dir: Path, args) -> dict[str, float]:
    chosen, timings = preset(args.preset), {}
    for name, share in (("localizer", 1 / 3), ("segmenter", 2 / 3)):
        stage, pipeline = override_preset(chosen, name, [f"max_minutes={args.minutes * share}", "epochs=100000",
                                                         *args.overrides])
        start = time.perf_counter()
        fit(train_dir, model_dir, stage, pipeline, overwrite=True)
        timings[name] = time.perf_counter() - start
    return timings


def evaluate(val_dir: Path, model_dir: Path, options: dict, oracle: bool) -> dict:
    """Scores of the validation cases; with ``oracle`` also stage 2 alone on ground-truth boxes."""
    model = load_model_dir(model_dir, **options)
    per_case, oracle_scores, recall, seconds = {}, {}, {}, []
    for case in io.layout.kits_cases(val_dir):
        image, truth = io.load_case(case)
        start = time.perf_counter()
        result = segment(image, model)
        seconds.append(time.perf_counter() - start)
        per_case[case.case_id] = case_scores(result.labels, truth.array)
        recall[case.case_id] = box_recall(truth.array > 0, result.boxes)
        if oracle:
            true_boxes = kidney_boxes(truth.array > 0, model.pipeline, image.spacing_mm)
            oracle_scores[case.case_id] = case_scores(segment(image, model, boxes=true_boxes).labels, truth.array)
    return {"pipeline": to_dict(model.pipeline), "summary": summarize(per_case), "per_case": per_case,
            "oracle_summary": summarize(oracle_scores) if oracle else None,
            "localization_recall": float(np.mean(list(recall.values()))), "per_case_recall": recall,
            "seconds_per_case": float(np.mean(seconds))}


def box_recall(truth: np.ndarray, boxes) -> float:
    """Share of true kidney+tumour voxels inside the union of the predicted boxes."""
    inside = np.zeros(truth.shape, bool)
    for box in boxes:
        inner = box.inside(truth.shape)
        inside[tuple(slice(lo, hi) for lo, hi in zip(inner.lo, inner.hi))] = True
    total = np.count_nonzero(truth)
    return float(np.count_nonzero(truth & inside) / total) if total else 1.0


def learning_curve(model_dir: Path, png: Path) -> dict[str, list[list[float]]]:
    """Validation Dice against cumulative training minutes, per stage (from each run's log.csv)."""
    from matplotlib.figure import Figure

    curves = {}
    for stage in ("localizer", "segmenter"):
        rows = (model_dir / stage / "log.csv").read_text().splitlines()
        header = rows[0].split(",")
        values = [dict(zip(header, map(float, r.split(",")))) for r in rows[1:]]
        curves[stage] = [[v["minutes"], v["val_dice"]] for v in values]
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for stage, points in curves.items():
        ax.plot(*zip(*points), marker=".", label=stage)
    ax.set(xlabel="training minutes", ylabel="validation Dice (network input resolution)", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(png, dpi=100)
    return curves


def markdown(results: dict) -> str:
    lines = ["| inference | kidney+tumour | tumour | kidney | oracle kidney+tumour | oracle tumour | "
             "localization recall | s/case |", "|---|---|---|---|---|---|---|---|"]
    for name, ev in results["evaluations"].items():
        s, o = ev["summary"], ev["oracle_summary"]
        oracle = f"{o['kidney_tumor']['mean']:.3f} | {o['tumor']['mean']:.3f}" if o else "- | -"
        lines.append(f"| {name} | {s['kidney_tumor']['mean']:.3f} | {s['tumor']['mean']:.3f} | "
                     f"{s['kidney_only']['mean']:.3f} | {oracle} | {ev['localization_recall']:.3f} | "
                     f"{ev['seconds_per_case']:.1f} |")
    budget = ", ".join(f"{k} {v / 60:.1f} min" for k, v in results["train_seconds"].items())
    return (f"preset {results['preset']}, overrides {results['overrides'] or 'none'}, training {budget or 'reused'}\n\n"
            + "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
