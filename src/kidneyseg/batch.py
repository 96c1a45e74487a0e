"""Folder runs: predict many inputs safely, and score a prediction folder against ground truth."""

from __future__ import annotations

import csv
import io as io_text
import json
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kidneyseg import io
from kidneyseg.errors import (
    InvalidInputError,
    KidneysegError,
    PartialFailureError,
    ResourceError,
    Terminated,
    UsageError,
)
from kidneyseg.version import package_version


@dataclass
class PredictSummary:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    stopped_by: BaseException | None = None  # KeyboardInterrupt or Terminated: the run ended early
    flags: dict[str, list[str]] = field(default_factory=dict)  # case -> plausibility flags (kidneyseg.measure)

    def describe(self) -> str:
        lines = [f"predicted {len(self.written)}, skipped {len(self.skipped)} (exist; use --overwrite), "
                 f"failed {len(self.failed)} in {self.seconds:.1f} s"]
        lines += [f"  FAILED {case}: {why}" for case, why in self.failed.items()]
        lines += [f"  FLAG {case}: {flag}" for case, flags in self.flags.items() for flag in flags]
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
                   device: str = "cpu", progress: bool = True, allow_4d: bool = False,
                   series: str | None = None, output_format: str = "nifti", precision: str | None = None,
                   shard: tuple[int, int] = (1, 1), qa: bool = True, backend: str = "torch") -> PredictSummary:
    """Segment every input into ``out_dir/<case_id>.nii.gz`` (``output_format`` "nifti"), a DICOM
    SEG ``out_dir/<case_id>.seg.dcm`` ("dicom-seg", DICOM inputs only) or both ("both"), with the
    volume report ``<case_id>.report.json`` and, with ``qa``, the QA page ``<case_id>.qa.html`` beside
    it. In a folder run one bad case is reported and the others still run (a single input raises its
    error); existing outputs are skipped unless ``overwrite``; a full disk
    stops the run. ``shard`` (K, N) takes every N-th input from the K-th on (1-based) of the sorted
    list, so that N jobs of a cluster array split a folder between them; ``precision`` overrides the
    model's and ``backend`` "onnxruntime" runs an exported model directory (see ``load_model_dir``)."""
    from kidneyseg.inference import load_model_dir

    index, count = shard
    if not 1 <= index <= count:
        raise UsageError(f"--shard K/N needs 1 <= K <= N, got {index}/{count}")
    todo = find_inputs(Path(inputs))[index - 1::count]
    formats = OUTPUT_FORMATS.get(output_format)
    if formats is None:
        raise UsageError(f"unknown output format {output_format!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    if "dicom-seg" in formats:
        not_dicom = [str(path) for _, path in todo if not path.is_dir()]
        if not_dicom:
            raise UsageError(f"DICOM-SEG output needs DICOM series inputs; not a DICOM folder: {not_dicom[0]}")
        from kidneyseg.io.dicom_seg import require_dicom_extra

        require_dicom_extra()  # the 'dicom' extra is installed, before any work
    io.check_output_dir(out_dir)
    model = load_model_dir(model_dir, device=device, precision=precision, backend=backend,
                           **({"tta_flips": True} if tta else {}))
    summary, start = PredictSummary(), time.perf_counter()
    out_dir = Path(out_dir)
    for case_id, path in tqdm(todo, desc="predict", unit="case", disable=not progress or len(todo) < 2):
        targets = {f: out_dir / f"{case_id}{OUTPUT_SUFFIXES[f]}" for f in formats}
        if all(t.exists() for t in targets.values()) and not overwrite:
            summary.skipped.append(case_id)
            continue
        try:
            report = _predict_one(path, targets, out_dir / f"{case_id}{REPORT_SUFFIX}", model, allow_4d, series,
                                  out_dir / f"{case_id}{QA_SUFFIX}" if qa else None)
            summary.written.append(case_id)
            if report.flags:
                summary.flags[case_id] = [str(f) for f in report.flags]
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
    if summary.written:
        write_report_table(out_dir)
    return summary


def _predict_one(path: Path, targets: dict[str, Path], report_path: Path, model, allow_4d: bool,
                 series: str | None = None, qa_path: Path | None = None):
    """Read, segment and write one case in each format of ``targets``, its volume report at
    ``report_path`` and, with ``qa_path``, its QA page; returns the report. The case's warnings
    (each distinct one once) are kept in the report and the QA page and printed after the case.
    Running out of memory becomes a ResourceError naming the case."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # every case records its own warnings, also those seen before
            return _write_case(path, targets, report_path, model, allow_4d, series, qa_path, caught)
    except (MemoryError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "memory" not in str(exc).lower():
            raise
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "an allocation failed"
        raise ResourceError(f"out of memory while predicting this case ({detail}); {_size_note(path)}",
                            path) from exc
    finally:  # outside the recording context: printed as they would have been
        for w in _distinct(caught):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _write_case(path: Path, targets: dict[str, Path], report_path: Path, model, allow_4d: bool,
                series: str | None, qa_path: Path | None, caught: list[warnings.WarningMessage]):
    from kidneyseg.inference import segment

    result = segment(read_ct(path, allow_4d=allow_4d, series=series), model)
    return write_outputs(result, model, path, targets, report_path, qa_path, series,
                         [str(w.message) for w in _distinct(caught)])


def read_ct(path: Path, allow_4d: bool = False, series: str | None = None):
    """A case's CT as ``predict`` reads it: HU stored as int16 kept so, a .nii.gz decompressed in the
    background while prediction reads its first planes (``io.load_ct``'s keep_integers and background)."""
    return io.load_ct(path, allow_4d=allow_4d, series=series, keep_integers=True, background=True)


def write_outputs(result, model, path: Path, targets: dict[str, Path], report_path: Path,
                  qa_path: Path | None = None, series: str | None = None, printed: list[str] | tuple = ()):
    """A segmented case's outputs as ``predict`` writes them: the label map in each format of ``targets``
    (``nifti``, ``dicom-seg``: the SEG refers to ``path``'s ``series``), the volume report at
    ``report_path`` with the case's ``printed`` warnings, and with ``qa_path`` its QA page; returns the
    report."""
    from kidneyseg.measure import measure

    case_id, printed = report_path.name[: -len(REPORT_SUFFIX)], list(printed)
    report = measure(result.labels, result.volume, model.data_profile)
    if "nifti" in targets:
        result.save(targets["nifti"])
    if "dicom-seg" in targets:
        from kidneyseg.io.dicom import choose_series
        from kidneyseg.io.dicom_seg import write_dicom_seg

        write_dicom_seg(result.labels, result.volume, choose_series(path, series), targets["dicom-seg"],
                        package_version())
    document = {"case_id": case_id, "input": str(path), **report.to_dict(), "warnings": printed}
    io.atomic_write_text(report_path, json.dumps(document, indent=1))
    if qa_path is not None:
        from kidneyseg.qa import write_qa_page

        write_qa_page(qa_path, case_id, result.volume, result.labels, report, printed, str(path))
    return report


def _distinct(caught: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    """Each warning once (the same message from the same place, e.g. once per DICOM slice, counts once)."""
    seen: dict[tuple, warnings.WarningMessage] = {}
    for w in caught:
        seen.setdefault((str(w.message), w.category, w.filename, w.lineno), w)
    return list(seen.values())


OUTPUT_FORMATS = {"nifti": ("nifti",), "dicom-seg": ("dicom-seg",), "both": ("nifti", "dicom-seg")}
OUTPUT_SUFFIXES = {"nifti": ".nii.gz", "dicom-seg": ".seg.dcm"}
REPORT_SUFFIX = ".report.json"
QA_SUFFIX = ".qa.html"

REPORT_COLUMNS = ("case_id", "side", "regions", "kidney_ml", "tumor_ml", "tumors", "largest_tumor_ml",
                  "largest_tumor_axial_mm", "largest_tumor_extent_mm", "flags")


def write_report_table(out_dir: Path) -> Path:
    """``OUT_DIR/report.csv`` from every ``*.report.json`` there (this run's and earlier ones): one
    row per case and side (a case with nothing found gets one row without a side), the case's flags
    on each of its rows."""
    buffer = io_text.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(REPORT_COLUMNS)
    for path in sorted(Path(out_dir).glob(f"*{REPORT_SUFFIX}")):
        document = json.loads(path.read_text())
        flags = "; ".join(f"{f['name']}: {f['detail']}" for f in document["flags"])
        for side in document["sides"] or [{}]:
            extent = " x ".join(f"{v:.1f}" for v in side.get("largest_tumor_extent_mm", ()))
            writer.writerow([document["case_id"], *(_cell(side.get(c)) for c in REPORT_COLUMNS[1:-2]), extent, flags])
    return io.atomic_write_text(Path(out_dir) / "report.csv", buffer.getvalue())


def format_report(out_dir: Path, case_ids: list[str]) -> str:
    """A terminal table of the volume reports of ``case_ids``: one line per case and side."""
    head = f"{'case':<16} {'side':<6} {'kidney mL':>9} {'tumour mL':>9} {'tumours':>7} {'largest axial mm':>16}"
    lines = [head, "-" * len(head)]
    for case_id in case_ids:
        document = json.loads((Path(out_dir) / f"{case_id}{REPORT_SUFFIX}").read_text())
        for side in document["sides"] or [{"side": "-"}]:
            lines.append(f"{case_id:<16} {side['side']:<6} {side.get('kidney_ml', 0):>9.1f} "
                         f"{side.get('tumor_ml', 0):>9.1f} {side.get('tumors', 0):>7} "
                         f"{side.get('largest_tumor_axial_mm', 0):>16.1f}")
    return "\n".join(lines)


def _cell(value) -> str:
    return f"{value:.1f}" if isinstance(value, float) else "" if value is None else str(value)


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
