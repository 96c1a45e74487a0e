"""Pictures for humans: CT slices with segmentation overlays (PNG files, or PNG bytes for the QA
page), and training curves.

Volumes are numpy arrays indexed (X, Y, Z) in RAS+ voxel order, the nibabel convention:
the X index increases towards the patient's Right, Y towards Anterior, Z towards Superior.
CT intensities are in Hounsfield units; label maps hold 0 background, 1 kidney, 2 tumour;
voxel spacing is in millimetres, ordered (X, Y, Z).

Slices are shown in the radiological convention: the patient's right is on the image's left
(so the X axis runs right-to-left across the image), anterior is up in axial slices and
superior is up in coronal slices. Pixel aspect ratios follow the voxel spacing.

matplotlib is imported inside the functions (importing kidneyseg stays fast) and only its Agg
canvas is used, so no display is needed. Files are written atomically: a hidden temp file
beside the target (keeping the ``.png`` suffix) is renamed over it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kidneyseg.io.atomic import atomic_write
from kidneyseg.labels import KIDNEY, TUMOR

HU_WINDOW = (-160.0, 240.0)  # soft-tissue window (level 40, width 400), HU
_PRED_COLOURS = {KIDNEY: ((0.1, 0.85, 0.25), 0.35), TUMOR: ((1.0, 0.35, 0.0), 0.55)}  # RGB, alpha
_TRUTH_STYLE = {"kidney_tumor": ("cyan", "kidney+tumour"), "tumor": ("magenta", "tumour")}
# QA page outlines of the prediction: pure colours, so that a screenshot test can find them.
QA_OUTLINES = {"kidney_tumor": ("#00ff00", "kidney + tumour"), "tumor": ("#ff0000", "tumour")}
QA_FIELD_MM = 160.0  # side of the square field each QA view shows around its centre
_DPI = 110


@dataclass(frozen=True)
class _Panel:
    """One 2D view as displayed: row 0 is the image top, column 0 the image left."""

    name: str  # "axial", "coronal" or "sagittal"
    index: int  # slice index along Z (axial), Y (coronal) or X (sagittal)
    ct: np.ndarray  # HU, (rows, cols)
    pred: np.ndarray  # labels, (rows, cols)
    truth: np.ndarray | None  # labels, (rows, cols)
    aspect: float  # pixel height / pixel width in mm
    markers: tuple[str, str, str, str]  # anatomical direction at image left, right, top, bottom


def save_overlay_png(
    ct_hu: np.ndarray,
    pred: np.ndarray,
    path: Path,
    truth: np.ndarray | None = None,
    spacing_mm: tuple[float, float, float] = (1, 1, 1),
    title: str = "",
) -> Path:
    """Save an axial and a coronal CT slice with the prediction (and truth) overlaid, as PNG.

    ``ct_hu`` (HU), ``pred`` and ``truth`` (label maps) are (X, Y, Z) arrays in RAS+ voxel
    order of the same shape; ``spacing_mm`` is the voxel size (X, Y, Z) in mm. The slices
    go through the centre of the predicted foreground, or of the truth if the prediction is
    empty, or of the volume if both are. CT is drawn grey in the window -160..240 HU, the
    predicted kidney and tumour as semi-transparent fills, the truth as outlines. The file is
    always PNG, written atomically. Returns ``path``.

    Raises:
        ValueError: on arrays that are not 3D or differ in shape, or bad spacing.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    panels = _display_slices(ct_hu, pred, truth, spacing_mm)
    fig = Figure(figsize=(11, 6), facecolor="black")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, panel in zip(axes, panels, strict=True):
        _draw_panel(ax, panel)
    handles: list[Any] = [
        Patch(facecolor=(*rgb, alpha), edgecolor=rgb, label=f"predicted {name}")
        for (rgb, alpha), name in zip(_PRED_COLOURS.values(), ("kidney", "tumour"), strict=True)
    ]
    if truth is not None:
        handles += [
            Line2D([], [], color=c, linestyle="--", label=f"true {n}") for c, n in _TRUTH_STYLE.values()
        ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, labelcolor="white")
    if title:
        fig.suptitle(title, color="white")
    fig.subplots_adjust(left=0.03, right=0.97, bottom=0.1, top=0.9, wspace=0.08)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=_DPI, facecolor="black"))


def qa_views_png(ct_hu: np.ndarray, labels: np.ndarray, spacing_mm: tuple[float, float, float],
                 centre: tuple[int, int, int], title: str = "") -> bytes:
    """PNG bytes of the axial, coronal and sagittal slices through voxel ``centre`` (X, Y, Z),
    each a QA_FIELD_MM square around it, with the outlines of kidney + tumour (green) and tumour
    (red) of ``labels`` over the CT in the soft-tissue window. Radiological convention as above;
    sagittal slices have anterior on the left."""
    from io import BytesIO

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.4), facecolor="black")
    FigureCanvasAgg(fig)
    for ax, panel in zip(fig.subplots(1, 3), _views(ct_hu, labels, spacing_mm, centre), strict=True):
        _draw_panel(ax, panel, outlines=True)
    if title:
        fig.suptitle(title, color="white")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.86, wspace=0.04)
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=80, facecolor="black")
    return buffer.getvalue()


def _views(ct_hu: np.ndarray, labels: np.ndarray, spacing_mm: tuple[float, float, float],
           centre: tuple[int, int, int]) -> list[_Panel]:
    """Axial, coronal and sagittal panels through ``centre``, each cut to QA_FIELD_MM around it."""
    half = [max(1, round(QA_FIELD_MM / 2 / s)) for s in spacing_mm]
    window = tuple(slice(max(0, c - h), c + h) for c, h in zip(centre, half, strict=True))
    x, y, z = centre
    sx, sy, sz = spacing_mm
    cuts = {  # (X, Y) / (X, Z) / (Y, Z) planes; rows then flipped to put anterior / superior on top
        "axial": (lambda a: a[window[0], window[1], z], sy / sx, ("R", "L", "A", "P"), z),
        "coronal": (lambda a: a[window[0], y, window[2]], sz / sx, ("R", "L", "S", "I"), y),
        "sagittal": (lambda a: a[x, window[1], window[2]], sz / sy, ("A", "P", "S", "I"), x),
    }
    return [_Panel(view, index, cut(ct_hu).T[::-1, ::-1], cut(labels).T[::-1, ::-1], None, aspect, markers)
            for view, (cut, aspect, markers, index) in cuts.items()]


def save_training_curves(rows: list[dict[str, float]], path: Path, title: str = "") -> Path:
    """Save training curves as PNG: loss (left panel) and validation metrics (right panel).

    ``rows`` are per-epoch log rows with ``epoch``, ``train_loss`` and ``val_dice``; every key
    ending in ``loss`` goes on the loss panel, every other ``val_*`` key on the validation
    panel. Rows may lack a key (e.g. validation every few epochs); missing, non-numeric and
    non-finite values are skipped. A row without ``epoch`` counts as epoch (row index + 1).
    Written atomically; returns ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = list(dict.fromkeys(k for row in rows for k in row if k != "epoch"))
    loss_keys = [k for k in keys if k.endswith("loss")]
    val_keys = [k for k in keys if k.startswith("val_") and k not in loss_keys]

    fig = Figure(figsize=(11, 4.5))
    FigureCanvasAgg(fig)
    loss_ax, val_ax = fig.subplots(1, 2)
    for ax, panel_keys, ylabel in ((loss_ax, loss_keys, "loss"), (val_ax, val_keys, "validation Dice")):
        plotted = []
        for key in panel_keys:
            x, y = _series(rows, key)
            if x:
                ax.plot(x, y, marker="o" if len(x) < 30 else None, markersize=3, label=key)
                plotted += y
        if plotted:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
        if ax is val_ax and plotted and min(plotted) >= 0.0 and max(plotted) <= 1.0:
            ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=_DPI))


def _display_slices(
    ct_hu: np.ndarray,
    pred: np.ndarray,
    truth: np.ndarray | None,
    spacing_mm: tuple[float, float, float],
) -> list[_Panel]:
    """The axial and coronal 2D arrays exactly as shown (radiological convention), see _Panel."""
    ct_hu, pred = np.asarray(ct_hu), np.asarray(pred)
    truth = None if truth is None else np.asarray(truth)
    if ct_hu.ndim != 3:
        raise ValueError(f"CT must be a 3D (X, Y, Z) array, got shape {ct_hu.shape}")
    for name, arr in (("prediction", pred), ("truth", truth)):
        if arr is not None and arr.shape != ct_hu.shape:
            raise ValueError(f"{name} shape {arr.shape} differs from CT shape {ct_hu.shape}")
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing_mm must be three positive numbers (X, Y, Z) in mm, got {spacing_mm}")

    centre = _foreground_centre(pred > 0)
    if centre is None and truth is not None:
        centre = _foreground_centre(truth > 0)
    if centre is None:
        centre = tuple(n // 2 for n in ct_hu.shape)
    _, y, z = centre
    sx, sy, sz = spacing

    def cut(arr: np.ndarray | None, view: str) -> np.ndarray | None:
        if arr is None:
            return None
        plane = arr[:, :, z] if view == "axial" else arr[:, y, :]  # (X, Y) or (X, Z)
        # Rows: Y (or Z) with anterior (superior) at the top; columns: X with patient right at the left.
        return plane.T[::-1, ::-1]

    views = (("axial", z, sy / sx, ("R", "L", "A", "P")), ("coronal", y, sz / sx, ("R", "L", "S", "I")))
    return [
        _Panel(view, index, cut(ct_hu, view), cut(pred, view), cut(truth, view), aspect, markers)
        for view, index, aspect, markers in views
    ]


def _foreground_centre(mask: np.ndarray) -> tuple[int, int, int] | None:
    """Centroid of a 3D mask, each coordinate moved to the nearest index holding foreground.

    Snapping keeps the chosen slices on foreground even when the centroid falls in a gap
    (two kidneys, say). Returns None for an empty mask. Uses only per-axis projections.
    """
    total = int(np.count_nonzero(mask))
    if total == 0:
        return None
    centre = []
    for axis in range(3):
        counts = np.count_nonzero(mask, axis=tuple(a for a in range(3) if a != axis)).astype(np.int64)
        mean = float(np.dot(counts, np.arange(counts.size, dtype=np.int64))) / total
        occupied = np.flatnonzero(counts)
        centre.append(int(occupied[np.argmin(np.abs(occupied - mean))]))
    return centre[0], centre[1], centre[2]


def _draw_panel(ax: Any, panel: _Panel, outlines: bool = False) -> None:
    """Draw one view: CT in the soft-tissue window, the prediction as fills (or, with ``outlines``,
    as solid QA_OUTLINES contours), truth outlines, markers."""
    rows, cols = panel.ct.shape
    window = {"vmin": HU_WINDOW[0], "vmax": HU_WINDOW[1]}
    ax.imshow(panel.ct, cmap="gray", aspect=panel.aspect, interpolation="nearest", **window)
    if outlines:
        _contours(ax, panel.pred, {k: (c, "-", 1.6) for k, (c, _) in QA_OUTLINES.items()})
    else:
        overlay = np.zeros((rows, cols, 4), dtype=np.float32)
        for label, (rgb, alpha) in _PRED_COLOURS.items():
            overlay[panel.pred == label] = (*rgb, alpha)
        ax.imshow(overlay, aspect=panel.aspect, interpolation="nearest")
    if panel.truth is not None:
        _contours(ax, panel.truth, {k: (c, "--", 1.2) for k, (c, _) in _TRUTH_STYLE.items()})
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_axis_off()
    axis_name = {"axial": "z", "coronal": "y", "sagittal": "x"}[panel.name]
    ax.set_title(f"{panel.name}  {axis_name}={panel.index}", color="white", fontsize="medium")
    style = {"color": "yellow", "fontsize": "small", "fontweight": "bold", "transform": ax.transAxes}
    left, right, top, bottom = panel.markers
    ax.text(0.01, 0.5, left, ha="left", va="center", **style)
    ax.text(0.99, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.99, top, ha="center", va="top", **style)
    ax.text(0.5, 0.01, bottom, ha="center", va="bottom", **style)


def _contours(ax: Any, labels: np.ndarray, styles: dict[str, tuple[str, str, float]]) -> None:
    """Outline kidney + tumour (labels > 0) and tumour (labels == 2) in (colour, line style, width)."""
    masks = {"kidney_tumor": labels > 0, "tumor": labels == TUMOR}
    for region, (colour, style, width) in styles.items():
        mask = masks[region]
        if mask.any() and not mask.all():
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=colour, linestyles=style, linewidths=width)


def _series(rows: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of ``key`` over the rows that hold a finite number for it."""
    xs: list[float] = []
    ys: list[float] = []
    for i, row in enumerate(rows):
        try:
            value = float(row[key])
            epoch = float(row.get("epoch", i + 1))
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(value) and math.isfinite(epoch):
            xs.append(epoch)
            ys.append(value)
    return xs, ys
