"""A stage's run folder ``MODEL_DIR/<stage>/``: ``config.json`` (exact settings), ``best.safetensors`` and
``last.safetensors`` (weights + settings), ``last_state.pt`` (everything ``--resume`` needs), ``log.csv``
(one row per epoch) and ``curves.png``; beside the stages ``MODEL_DIR/pipeline.json`` (inference settings).
Prepared before training (refusing settings that clash with the run there or with the other stage) and
written after every epoch, each file atomically.
"""

from __future__ import annotations

import csv
import io as _io
import json
from dataclasses import replace
from pathlib import Path

import torch

from kidneyseg import io
from kidneyseg.config import PipelineConfig, StageConfig, differences, stage_from_dict, to_dict, to_json
from kidneyseg.errors import UsageError
from kidneyseg.training.checkpoint import save_state
from kidneyseg.weights import run_pipeline, save_weights


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng(state: dict, rank: int) -> None:
    """Each rank's random state where the run stopped (older states hold rank 0's as ``torch_rng``)."""
    ranks = state.get("rng_ranks") or [{"torch": state["torch_rng"], "cuda": state.get("cuda_rng")}]
    if rank >= len(ranks):
        raise UsageError(f"--resume with more processes than the run was trained with ({len(ranks)})")
    torch.set_rng_state(ranks[rank]["torch"])
    if ranks[rank].get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ranks[rank]["cuda"])


def prepare_run_dir(run_dir: Path, stage: StageConfig, pipeline: PipelineConfig, resume: bool,
                     overwrite: bool) -> None:
    check_other_stage(run_dir, stage, pipeline)
    config_path = run_dir / "config.json"
    if config_path.exists() and resume:
        previous = stage_from_dict(json.loads(config_path.read_text())["stage"])
        budget = {"epochs": stage.epochs, "max_minutes": stage.max_minutes}
        if replace(previous, **budget) != stage:
            raise UsageError("--resume with settings that differ from the run's config.json (only --epochs and "
                             "--minutes may change); resume with the same preset and overrides", config_path)
    elif (run_dir / "last_state.pt").exists() and not overwrite:
        raise UsageError("a training run already exists here; pass --resume to continue it or --overwrite "
                         "to start again", run_dir)
    elif overwrite:
        for name in ("last_state.pt", "best.safetensors", "last.safetensors", "log.csv", "curves.png"):
            (run_dir / name).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.glob(".*.tmp*"):  # left by a run killed while writing; the real files are intact
        stale.unlink()
    text = json.dumps({"stage": to_dict(stage), "pipeline": to_dict(pipeline)}, indent=2, sort_keys=True)
    io.atomic_write_text(config_path, text)
    io.atomic_write_text(run_dir.parent / "pipeline.json", to_json(pipeline))


def check_other_stage(run_dir: Path, stage: StageConfig, pipeline: PipelineConfig) -> None:
    """Both stages of a model directory share one pipeline (HU window, box rules, inference options):
    refuse, before anything is written, a run whose settings differ from the other stage's."""
    other = "segmenter" if stage.stage == "localizer" else "localizer"
    theirs = run_pipeline(run_dir.parent / other)
    changed = differences(theirs, pipeline) if theirs is not None else []
    if changed:
        raise UsageError(f"the {other} in this model directory was trained with other pipeline settings "
                         f"({'; '.join(changed)}; the {other}'s first); train both stages with the same preset "
                         "and pipeline.* overrides, or train into another model directory", run_dir.parent / other)


def save_epoch(run_dir, model, optimizer, scaler, stage, epoch, best, minutes, log, improved, rng) -> None:
    """Weights (best when ``improved``, last) and the resume state; ``rng``: every rank's random state."""
    meta = {"epoch": epoch, "val_dice": log[-1].get("val_dice")}
    if improved:
        save_weights(run_dir / "best.safetensors", model, stage, **meta)
    save_weights(run_dir / "last.safetensors", model, stage, **meta)
    save_state(run_dir / "last_state.pt", {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng_ranks": rng, "epoch": epoch, "best_val_dice": best, "minutes": minutes,
        "log": log, "config": to_json(stage),
    })
    io.atomic_write_text(run_dir / "log.csv", log_csv(log))


def log_csv(rows: list[dict]) -> str:
    """Every column any row has, in order of first appearance; a row without one (a run resumed
    from a version that logged less) leaves that cell empty."""
    buffer = _io.StringIO()
    columns = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
