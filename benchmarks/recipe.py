"""What does each part of the CPU training recipe buy? Stage 2 alone, on ground-truth kidney crops.

    .venv/bin/python benchmarks/recipe.py [--minutes 8] [--rows NAME ...] [--work DIR]

Each row adds one change to the row before it, starting from the paper's recipe (weighted Dice,
Adam 5e-4, fp32, uniform crop sampling, no intensity augmentation) on the ``small`` preset's
network (96³, base 8), and ending at the ``small`` preset itself. Every row trains the segmenter for
the same number of minutes on the 150 training cases of benchmarks/kits19_split.json (the crops of
the ground-truth boxes, as stage 2 trains in the pipeline), keeps its best checkpoint by its own
internal validation, and is then scored at the network's input resolution on the 30 validation
cases: once as rendered by ``kidneyseg synth --from-labels`` (the training renderer), once as
rendered by benchmarks/independent_phantoms.py (a different renderer). Dice is pooled over the
crops of each case, then averaged over cases.

Run benchmarks/accuracy.py first (or at least let it render the cases). Rows are independent;
to use both cores for two rows at a time, run two processes with ``--rows`` and ``--threads 1``.
Each row writes WORK/recipe/ROW.json; every run prints the table of all rows written so far
and writes it to WORK/recipe/table.md.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys
import time
from pathlib import Path

import torch
from accuracy import shared_cache

from kidneyseg import io
from kidneyseg.config import override, preset
from kidneyseg.model import place
from kidneyseg.training.cache import build_cache
from kidneyseg.training.checkpoint import load_model
from kidneyseg.training.fit import fit, validate

HERE = Path(__file__).resolve().parent
PAPER = ["loss=dice", "lr=5e-4", "precision=fp32", "tumor_fraction=0", "intensity_prob=0"]
# Cumulative: each row is the one above plus one change; the last row is the small preset.
ROWS = {
    "paper recipe": PAPER,
    "+ Dice + cross-entropy, lr 3e-3": ["loss=dice_ce", "lr=3e-3", "precision=fp32", "tumor_fraction=0",
                                        "intensity_prob=0"],
    "+ bf16 autocast": ["loss=dice_ce", "lr=3e-3", "precision=bf16", "tumor_fraction=0", "intensity_prob=0"],
    "+ tumour-aware sampling (0.75)": ["loss=dice_ce", "lr=3e-3", "precision=bf16", "tumor_fraction=0.75",
                                       "intensity_prob=0"],
    "+ intensity augmentation (0.15) = small": [],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "accuracy")
    parser.add_argument("--minutes", type=float, default=8.0, help="training minutes per row")
    parser.add_argument("--rows", nargs="*", type=int, help=f"row numbers 0-{len(ROWS) - 1} (default: all)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="segmenter settings for every row, e.g. --set input_size=64,64,64")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for folder in ("train", "validation", "independent"):
        if not (args.work / folder).is_dir():
            print(f"{args.work / folder} is missing: run benchmarks/accuracy.py first", file=sys.stderr)
            return 2
    out = args.work / "recipe"
    out.mkdir(parents=True, exist_ok=True)
    names = list(ROWS)
    for index in args.rows if args.rows is not None else range(len(ROWS)):
        row = run_row(names[index], args.work, out, args.minutes, args.overrides)
        (out / f"row{index}.json").write_text(json.dumps(row, indent=1))
    table = markdown(out)
    (out / "table.md").write_text(table)
    print(table)
    return 0


def run_row(name: str, work: Path, out: Path, minutes: float, overrides: list[str]) -> dict:
    small = preset("small")
    stage = override(small.segmenter, [*ROWS[name], *overrides, f"max_minutes={minutes}", "epochs=100000"])
    model_dir = out / name.split("(")[0].strip(" +=").replace(" ", "-").lower()
    shared_cache(work, model_dir)
    cached(work, "train", stage, small.pipeline)  # built here, under the lock; fit then finds it current
    scored = {folder: cached(work, folder, stage, small.pipeline) for folder in ("validation", "independent")}
    start = time.perf_counter()
    result = fit(work / "train", model_dir, stage, small.pipeline, overwrite=True)
    seconds = time.perf_counter() - start
    net, trained, _ = load_model(result.run_dir / "best.safetensors")
    net = place(net, "cpu")
    scores = {folder: validate(net, samples, trained, "cpu") for folder, samples in scored.items()}
    return {"row": name, "settings": ROWS[name], "overrides": overrides, "minutes": minutes,
            "epochs": result.epochs_done, "threads": torch.get_num_threads(), "seconds_with_cache": seconds,
            "scores": scores}


def cached(work: Path, folder: str, stage, pipeline) -> list:
    """Stage-2 samples of WORK/folder, building the cache under a lock so that parallel rows build it once."""
    name = "segmenter" if folder == "train" else f"{folder}-segmenter"  # "segmenter" is fit's own cache folder
    with open(work / "cache" / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return build_cache(io.layout.kits_cases(work / folder), work / "cache" / name, stage, pipeline)


def markdown(out: Path) -> str:
    lines = ["| recipe (stage 2, ground-truth crops) | epochs | kidney+tumour | tumour | "
             "independent renderer: kidney+tumour | tumour |", "|---|---|---|---|---|---|"]
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("row*.json"))]
    for row in rows:
        v, i = row["scores"]["validation"], row["scores"]["independent"]
        lines.append(f"| {row['row']} | {row['epochs']} | {v['val_kidney_tumor']:.3f} | {v['val_tumor']:.3f} | "
                     f"{i['val_kidney_tumor']:.3f} | {i['val_tumor']:.3f} |")
    common = sorted({(r["minutes"], r["threads"], " ".join(r["overrides"])) for r in rows})
    setup = "; ".join(f"{m:g} training minutes on {t} thread(s), overrides: {extra or 'none'}"
                      for m, t, extra in common)
    return f"{setup}\n\n" + "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
