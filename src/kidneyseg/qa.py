"""The QA page: one self-contained HTML file per predicted case, to check a result at a glance.

It holds the volume report's numbers (kidneyseg.measure), its plausibility flags, every warning the
run printed for the case, and for each side the axial, coronal and sagittal slices through the
kidney and through its largest tumour with the predicted outlines (kidney + tumour green, tumour
red) over the CT in a soft-tissue window. Images are inline PNGs (data: URLs) and the style sheet is
inline, so the file can be mailed or archived alone and opens offline in any browser.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from kidneyseg import io
from kidneyseg.measure import CaseReport
from kidneyseg.report import QA_OUTLINES, qa_views_png
from kidneyseg.version import package_version

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #1a1a1a; background: #fafafa; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin: 22px 0 6px; }
.meta { color: #555; font-size: 13px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 14px; }
th, td { border: 1px solid #bbb; padding: 4px 10px; text-align: right; } th { background: #e8e8e8; }
td:first-child, th:first-child { text-align: left; }
.flags { background: #fde2e2; border-left: 6px solid #a4161a; padding: 8px 14px; }
.ok { background: #e3f1e6; border-left: 6px solid #2b6a3a; padding: 8px 14px; }
.warnings { background: #fff4d6; border-left: 6px solid #8a6100; padding: 8px 14px; }
img { display: block; max-width: 100%; border: 1px solid #333; }
.legend span { display: inline-block; width: 28px; height: 4px; vertical-align: middle; margin: 0 6px 0 14px; }
"""
_COLUMNS = (("side", "side", "{}"), ("regions", "regions", "{}"), ("kidney_ml", "kidney mL", "{:.1f}"),
            ("tumor_ml", "tumour mL", "{:.1f}"), ("tumors", "tumours", "{}"),
            ("largest_tumor_ml", "largest tumour mL", "{:.1f}"),
            ("largest_tumor_axial_mm", "largest tumour axial diameter mm", "{:.1f}"))


def write_qa_page(path: Path, case_id: str, volume: io.Volume, labels: np.ndarray, report: CaseReport,
                  warnings: list[str], source: str = "") -> Path:
    """Write the QA page of one case to ``path`` (atomically); ``labels`` canonical like ``volume``."""
    grid = " x ".join(map(str, volume.array.shape))
    parts = [f"<h1>kidneyseg QA: {_e(case_id)}</h1>",
             f"<p class='meta'>input {_e(source or volume.name)} &middot; grid {grid}"
             f" &middot; spacing {' x '.join(f'{s:.2f}' for s in volume.spacing_mm)} mm &middot; kidneyseg "
             f"{_e(package_version())}</p>"]
    if report.flags:
        items = "".join(f"<li><b>{_e(f.name)}</b>: {_e(f.detail)}</li>" for f in report.flags)
        parts.append(f"<div class='flags'><b>Plausibility flags: check this case before using its numbers"
                     f"</b><ul>{items}</ul></div>")
    else:
        parts.append("<div class='ok'>No plausibility flag raised.</div>")
    if warnings:
        items = "".join(f"<li>{_e(w)}</li>" for w in warnings)
        parts.append(f"<div class='warnings'><b>Warnings printed for this case</b><ul>{items}</ul></div>")
    else:
        parts.append("<p class='meta'>No warnings were printed for this case.</p>")
    parts.append(_table(report))
    parts.append("<p class='legend'>Outlines:" + "".join(
        f"<span style='background:{colour}'></span>{_e(name)}" for colour, name in QA_OUTLINES.values())
        + ". Radiological convention: the patient's right on the image's left; anterior up (axial), "
          "superior up (coronal, sagittal), anterior on the left (sagittal).</p>")
    for side in report.sides:
        views = [("kidney", side.centre_mm)]
        if side.largest_tumor_centre_mm is not None:
            views.append(("largest tumour", side.largest_tumor_centre_mm))
        for what, centre_mm in views:
            title = f"{side.side}: {what}"
            png = qa_views_png(volume.array, labels, volume.spacing_mm, _voxel(volume, centre_mm), title)
            parts.append(f"<h2>{_e(title)}</h2>{_img(png, title)}")
    if not report.sides:
        centre = tuple(n // 2 for n in volume.array.shape)
        png = qa_views_png(volume.array, labels, volume.spacing_mm, centre, "centre of the scan")
        parts.append(f"<h2>Nothing was labelled: the centre of the scan</h2>{_img(png, 'centre of the scan')}")
    document = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
                f"<title>kidneyseg QA {_e(case_id)}</title><style>{_STYLE}</style></head><body>"
                + "\n".join(parts) + "</body></html>\n")
    return io.atomic_write_text(Path(path), document)


def _table(report: CaseReport) -> str:
    if not report.sides:
        return "<p>No kidney or tumour was labelled.</p>"
    head = "".join(f"<th>{_e(title)}</th>" for _, title, _ in _COLUMNS)
    head += "<th>largest tumour extent mm (R-L x A-P x S-I)</th>"
    rows = []
    for side in report.sides:
        cells = "".join(f"<td>{fmt.format(getattr(side, key))}</td>" for key, _, fmt in _COLUMNS)
        extent = " x ".join(f"{v:.1f}" for v in side.largest_tumor_extent_mm)
        rows.append(f"<tr>{cells}<td>{extent}</td></tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _voxel(volume: io.Volume, centre_mm: tuple[float, float, float]) -> tuple[int, int, int]:
    """The canonical voxel nearest to a world (RAS) point, inside the grid."""
    index = np.linalg.solve(volume.affine, np.array([*centre_mm, 1.0]))[:3]
    return tuple(int(np.clip(round(float(v)), 0, n - 1)) for v, n in zip(index, volume.array.shape, strict=True))


def _img(png: bytes, alt: str) -> str:
    return f"<img alt='{_e(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>"


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)
