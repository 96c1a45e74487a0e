"""The built-in demo: phantoms -> train both stages (``tiny`` preset) -> predict held-out -> score."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from kidneyseg.config import override_preset, preset


def run_demo(out: Path, *, cases: int = 40, heldout: int = 8, minutes: float = 0.0, seed: int = 0,
             progress: bool | None = None, overrides: tuple[str, ...] = ()) -> dict[str, dict[str, float]]:
    """Run the whole demo in ``out``; print a per-case table; return the held-out scores.

    Training runs the ``tiny`` preset's fixed number of epochs per stage (so the result does not
    depend on the machine's speed); ``minutes`` > 0 additionally caps each stage's training time.
    ``overrides`` (``KEY=VALUE``, ``pipeline.KEY=VALUE``) change the preset for both stages
    (``localizer.KEY=VALUE``, ``segmenter.KEY=VALUE``: for that stage alone).
    """
    from kidneyseg.batch import evaluate_folders, predict_inputs
    from kidneyseg.evaluation import format_table, summarize
    from kidneyseg.synthetic import synthesize_dataset
    from kidneyseg.training.fit import fit

    progress = sys.stderr.isatty() if progress is None else progress
    out = Path(out)
    chosen = preset("tiny")
    stages = {name: override_preset(chosen, name, [f"max_minutes={minutes}", f"seed={seed}", *overrides])
              for name in ("localizer", "segmenter")}  # bad overrides fail here, before any work
    timings, start = {}, time.perf_counter()
    _say(f"1/4 synthesising {cases} training and {heldout} held-out phantom CTs in {out}")
    synthesize_dataset(out / "data", cases, seed, progress=progress)
    synthesize_dataset(out / "heldout", heldout, seed + 1, progress=progress)
    timings["synthesise"] = time.perf_counter() - start
    for name, (stage, pipeline) in stages.items():
        limit = f", at most {minutes:g} min" if minutes else ""
        _say(f"2/4 training the {name}: {stage.epochs} epochs of {stage.samples_per_epoch} crops (preset tiny{limit})")
        t = time.perf_counter()
        result = fit(out / "data", out / "model", stage, pipeline, overwrite=True, progress=progress)
        _say(f"    {result.epochs_done} epochs, best validation Dice {result.best_val_dice:.3f}")
        timings[f"train {name}"] = time.perf_counter() - t
    _say("3/4 predicting the held-out cases")
    t = time.perf_counter()
    summary = predict_inputs(out / "heldout", out / "predictions", out / "model", overwrite=True, progress=progress)
    timings["predict"] = time.perf_counter() - t
    if summary.failed:
        _say(summary.describe())
    _say("4/4 scoring")
    per_case, paths = evaluate_folders(out / "predictions", out / "heldout", out / "predictions")
    overlay = _overlay(out, sorted(per_case)[0])
    timings["total"] = time.perf_counter() - start
    print(format_table(per_case))
    mean = summarize(per_case)["kidney_tumor"]["mean"]
    print(f"\nheld-out kidney+tumour Dice {mean:.3f}; scores in {paths[0]}; overlay {overlay}")
    print("time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return per_case


def _overlay(out: Path, case_id: str) -> Path:
    from kidneyseg import io
    from kidneyseg.report import save_overlay_png

    ct = io.load_ct(out / "heldout" / case_id / "imaging.nii.gz")
    truth = io.load_label_map(out / "heldout" / case_id / "segmentation.nii.gz")
    pred = io.load_label_map(out / "predictions" / f"{case_id}.nii.gz")
    return save_overlay_png(ct.array, pred.array, out / f"overlay_{case_id}.png", truth=truth.array,
                            spacing_mm=ct.spacing_mm, title=f"{case_id}: prediction (fill) vs truth (outline)")


def _say(text: str) -> None:
    print(text, flush=True)
