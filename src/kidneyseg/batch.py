"""Folder runs: predict many inputs safely, and score a prediction folder against ground truth."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kidneyseg import io
from kidneyseg.errors import InvalidInputError, KidneysegError, PartialFailureError, ResourceError, Terminated


@dataclass
class PredictSummary:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    stopped_by: BaseException | None = None  # KeyboardInterrupt or Terminated: the run ended early

    def describe(self) -> str:
        lines = [f"predicted {len(self.written)}, skipped {len(self.skipped)} (exist; use --overwrite), "
                 f"failed {len(self.failed)} in {self.seconds:.1f} s"]
        lines += [f"  FAILED {case}: {why}" for case, why in self.failed.items()]
        if self.stopped_by is not None:
            lines.append("  STOPPED: the remaining cases were not started; run the same command again to finish "
                         "them (existing outputs are skipped)")
        return "\n".join(lines)

    def exit_code(self) -> int:
        if self.stopped_by is not None:
            return getattr(self.stopped_by, "exit_code", 130)
        return PartialFailureError.exit_code if self.failed else 0


def find_inputs(path: Path) -> list[tuple[str, Path]]:
    """(case_id, CT path) pairs: a file; a DICOM folder; a KiTS folder; or a folder of .nii(.gz) files."""
    if path.is_file():
        return [(_case_id(path), path)]
    if not path.is_dir():
        raise InvalidInputError("input not found", path)
    case_dirs = sorted(p for p in path.iterdir() if p.is_dir() and p.name.startswith("case_"))
    if case_dirs:
        return [(c.case_id, c.image) for c in io.layout.kits_cases(path, need_labels=False)]
    files = sorted(p for p in path.iterdir() if p.is_file() and io.is_nifti_path(p))
    if files:
        return [(_case_id(p), p) for p in files]
    return [(path.name, path)]  # a DICOM series folder


def _case_id(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def predict_inputs(inputs: Path, out_dir: Path, model_dir: Path, *, overwrite: bool = False, tta: bool = False,
                   device: str = "cpu", progress: bool = True, allow_4d: bool = False) -> PredictSummary:
    """Segment every input into ``out_dir/<case_id>.nii.gz``. In a folder run one bad case is
    reported and the others still run (a single input raises its error); existing outputs are
    skipped unless ``overwrite``; a full disk stops the run."""
    from kidneyseg.inference import load_model_dir

    todo = find_inputs(Path(inputs))
    io.check_output_dir(out_dir)
    model = load_model_dir(model_dir, device=device, **({"tta_flips": True} if tta else {}))
    summary, start = PredictSummary(), time.perf_counter()
    out_dir = Path(out_dir)
    for case_id, path in tqdm(todo, desc="predict", unit="case", disable=not progress or len(todo) < 2):
        target = out_dir / f"{case_id}.nii.gz"
        if target.exists() and not overwrite:
            summary.skipped.append(case_id)
            continue
        try:
            _predict_one(path, target, model, allow_4d)
            summary.written.append(case_id)
        except (KeyboardInterrupt, Terminated) as exc:
            summary.failed[case_id] = f"{path}: interrupted ({type(exc).__name__}); no output written"
            summary.stopped_by = exc
            break
        except ResourceError:
            raise
        except KidneysegError as exc:
            if len(todo) == 1:
                raise  # a single input: its own error and exit code, not a folder summary
            summary.failed[case_id] = str(exc)
        except Exception as exc:  # noqa: BLE001 - one broken case must not stop the folder run
            summary.failed[case_id] = f"{path}: unexpected {type(exc).__name__}: {exc}"
            traceback.print_exc()
    summary.seconds = time.perf_counter() - start
    return summary


def _predict_one(path: Path, target: Path, model, allow_4d: bool) -> None:
    """Read, segment and write one case; running out of memory becomes a ResourceError naming it."""
    from kidneyseg.inference import segment

    try:
        segment(io.load_ct(path, allow_4d=allow_4d), model).save(target)
    except (MemoryError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "memory" not in str(exc).lower():
            raise
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "an allocation failed"
        raise ResourceError(f"out of memory while predicting this case ({detail}); {_size_note(path)}", path) from exc


def _size_note(path: Path) -> str:
    """The CT's size from its header alone (nothing more is allocated to say it)."""
    try:
        import nibabel as nib

        shape = nib.load(path).shape[:3]
    except Exception:  # noqa: BLE001 - a DICOM folder or an unreadable header: say less
        return "free memory or predict on a machine with more"
    voxels = int(np.prod(shape))
    return (f"its {shape[0]} x {shape[1]} x {shape[2]} voxels are {voxels * 4 / 2**30:.2f} GiB as float32, and "
            f"prediction needs several times that at its peak; free memory or use a machine with more")


def evaluate_folders(pred_dir: Path, gt_dir: Path, out_dir: Path) -> tuple[dict[str, dict[str, float]], tuple]:
    """Score ``pred_dir/<case_id>.nii.gz`` against ``gt_dir/<case_id>/segmentation.nii.gz``: Dice,
    surface Dice and HD95 (mm, on the ground truth file's voxel spacing) of every region."""
    from kidneyseg.evaluation import case_scores, surface_scores, write_results

    cases = io.layout.kits_cases(gt_dir, need_images=False)
    io.check_output_dir(out_dir)
    missing = [c.case_id for c in cases if not (Path(pred_dir) / f"{c.case_id}.nii.gz").exists()]
    if missing:
        raise InvalidInputError(f"no prediction for {len(missing)} of {len(cases)} cases: {', '.join(missing[:10])}",
                                pred_dir)
    per_case = {}
    for case in tqdm(cases, desc="evaluate", unit="case", disable=len(cases) < 2):
        pred = io.load_label_map(Path(pred_dir) / f"{case.case_id}.nii.gz")
        truth = io.load_label_map(case.label)
        io.check_same_grid(truth.file_affine, truth.file_shape, pred.file_affine, pred.file_shape,
                           case.label, pred.path)
        per_case[case.case_id] = {**case_scores(pred.array, truth.array),
                                  **surface_scores(pred.array, truth.array, truth.spacing_mm)}
    return per_case, write_results(per_case, Path(out_dir))
