"""``kidneyseg check``: the input checks of ``io`` run over a whole KiTS-layout dataset, per case."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kidneyseg import io
from kidneyseg.errors import InvalidInputError
from kidneyseg.labels import TUMOR


@dataclass
class CaseReport:
    case_id: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_dataset(data_dir: str | Path, progress: bool = True) -> list[CaseReport]:
    """Load and validate every case (image, label map, their grids); never stops at the first problem."""
    cases = io.layout.kits_cases(data_dir, need_images=False, need_labels=False)
    return [check_case(case) for case in tqdm(cases, desc="check", unit="case", disable=not progress)]


def check_case(case: io.layout.Case) -> CaseReport:
    report = CaseReport(case.case_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            _, labels = io.load_case(case)
            _label_warnings(labels, report)
        except InvalidInputError as exc:
            report.errors.append(str(exc))
    report.warnings.extend(str(w.message) for w in caught)
    return report


def _label_warnings(labels: io.Volume, report: CaseReport) -> None:
    counts = np.bincount(labels.array.ravel(), minlength=3)
    if counts[1:].sum() == 0:
        report.warnings.append(f"{labels.path}: no kidney or tumour voxels (the case adds no kidney to training)")
    elif counts[TUMOR] == 0:
        report.warnings.append(f"{labels.path}: no tumour voxels")


def format_report(reports: list[CaseReport]) -> str:
    lines = []
    for r in reports:
        status = "ERROR" if r.errors else ("warning" if r.warnings else "ok")
        lines.append(f"{r.case_id}: {status}")
        lines += [f"    error: {e}" for e in r.errors] + [f"    warning: {w}" for w in r.warnings]
    n_err = sum(bool(r.errors) for r in reports)
    n_warn = sum(len(r.warnings) for r in reports)
    lines.append(f"{len(reports)} cases checked: {n_err} with errors, {n_warn} warnings")
    return "\n".join(lines)
