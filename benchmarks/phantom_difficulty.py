"""How well does a single HU window segment phantoms drawn around real KiTS19 label maps?

Renders phantoms around real label maps (or reads a KiTS-layout folder of them, e.g. written by
``kidneyseg synth OUT --from-labels LABEL_DIR``) and searches a grid of windows [a, b] (HU, both
ends included) applied to the whole volume. For each window it computes the Dice of
(a <= HU <= b) against kidney+tumour and, separately, against tumour, per case; the best single
window is the one with the highest mean Dice over the cases. Phantoms are too easy when that
mean exceeds 0.5 (kidney+tumour) or 0.35 (tumour): the script then prints a TOO EASY line and
exits 1. The per-case best windows (each case its own window) are printed for information.

It also prints what intensity alone can do once the outline is perfect: the tumour Dice of the best
window applied inside the true kidney+tumour voxels only, each case its own window (an upper bound
for any model that tells tumour from kidney by level, not by shape). A low value means the
phantoms' tumours look like their kidneys.

With ``--texture`` it prints instead how kidney and tumour look: per case the median HU of each and the SD of the CT
smoothed over TEXTURE_MM inside each (slow variation such as the corticomedullary pattern or uneven enhancement,
without the voxel noise), both inside the label eroded by two voxels; then the medians and ranges over the cases.
Two renderers whose kidneys differ there teach a model different things about what a tumour looks like.

    python benchmarks/phantom_difficulty.py                     # 10 cases from ../shared/data
    python benchmarks/phantom_difficulty.py --images synth-out  # cases already written to a folder
    python benchmarks/phantom_difficulty.py --images DIR --cases 30 --texture
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from kidneyseg.geometry import bounding_box, expand_box
from kidneyseg.io import load_ct, load_label_map
from kidneyseg.io.layout import kits_cases
from kidneyseg.synthetic import render_around_labels
from kidneyseg.synthetic.from_labels import label_case_rng, read_subtypes

DEFAULT_LABELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "kits19-labels"
BOUNDS = {"kidney+tumour": 0.5, "tumour": 0.35}
HU_MIN, HU_MAX = -1024, 3071
WINDOW_LO, WINDOW_HI, WINDOW_STEP = -200, 600, 5
SLAB = 32
TEXTURE_MM = 3.0  # Gaussian sigma of --texture's smoothing


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, default=DEFAULT_LABELS, help="KiTS19 label maps (case_*/...)")
    parser.add_argument("--images", type=Path, help="read phantoms (imaging.nii.gz + segmentation.nii.gz) from here")
    parser.add_argument("--cases", type=int, default=10, help="number of cases, spread evenly over the ids")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rendered phantoms")
    parser.add_argument("--texture", action="store_true",
                        help="print the level and slow texture of kidney and tumour instead of the window search")
    return parser.parse_args(argv)


def pick(items: list, count: int) -> list:
    """``count`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if count >= len(items):
        return items
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, count).round()]


def histograms(ct: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Voxel counts per HU (HU_MIN..HU_MAX) of the whole volume, of kidney+tumour and of tumour:
    (3, 4096), computed a z-slab at a time ((X, Y, Z) arrays)."""
    counts = np.zeros((3, HU_MAX - HU_MIN + 1), dtype=np.int64)
    size = counts.shape[1]
    for z0 in range(0, ct.shape[2], SLAB):
        hu = np.clip(np.rint(ct[:, :, z0:z0 + SLAB]), HU_MIN, HU_MAX).astype(np.int32) - HU_MIN
        lab = labels[:, :, z0:z0 + SLAB]
        counts[0] += np.bincount(hu.ravel(), minlength=size)
        counts[1] += np.bincount(hu[lab > 0], minlength=size)
        counts[2] += np.bincount(hu[lab == 2], minlength=size)
    return counts


def window_dice(all_counts: np.ndarray, target_counts: np.ndarray) -> np.ndarray:
    """Dice of every window [a, b] of the grid (a <= b) against the target: (windows, windows);
    NaN where the case has no target voxels, 0 where a > b."""
    edges = np.arange(WINDOW_LO, WINDOW_HI + 1, WINDOW_STEP) - HU_MIN
    below_all = np.concatenate([[0], np.cumsum(all_counts)])  # below_all[i]: voxels with HU index < i
    below_target = np.concatenate([[0], np.cumsum(target_counts)])
    inside = below_all[edges + 1][None, :] - below_all[edges][:, None]
    hits = below_target[edges + 1][None, :] - below_target[edges][:, None]
    total = target_counts.sum()
    if total == 0:
        return np.full(inside.shape, np.nan)
    dice = 2.0 * hits / np.maximum(inside + total, 1)
    return np.where(edges[None, :] >= edges[:, None], dice, 0.0)


def phantom_cases(args: argparse.Namespace):
    """(case id, CT (X, Y, Z) HU, labels (X, Y, Z), spacing (mm)) per case, rendered or read."""
    if args.images is not None:
        for case in pick(kits_cases(args.images), args.cases):
            labels = load_label_map(case.label)
            yield case.case_id, load_ct(case.image).array, labels.array, labels.spacing_mm
        return
    subtypes = read_subtypes(args.labels)
    for case in pick(kits_cases(args.labels, need_images=False), args.cases):
        volume = load_label_map(case.label)
        rng = label_case_rng(args.seed, case.case_id)
        yield case.case_id, render_around_labels(volume.array, volume.spacing_mm, rng,
                                                 subtypes.get(case.case_id)), volume.array, volume.spacing_mm


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.images is None and not args.labels.is_dir():
        print(f"no label maps at {args.labels}; pass --labels or --images")
        return 2
    if args.texture:
        return texture_report(args)
    grids: dict[str, list[np.ndarray]] = {name: [] for name in BOUNDS}
    inside: list[float] = []
    edges = np.arange(WINDOW_LO, WINDOW_HI + 1, WINDOW_STEP)
    start = time.perf_counter()
    for case_id, ct, labels, _ in phantom_cases(args):
        counts = histograms(ct, labels)
        line = [f"{case_id} {tuple(ct.shape)}"]
        for row, name in enumerate(BOUNDS, start=1):
            dice = window_dice(counts[0], counts[row])
            grids[name].append(dice)
            if not np.isnan(dice).all():
                a, b = np.unravel_index(int(np.nanargmax(dice)), dice.shape)
                line.append(f"{name} own best [{edges[a]}, {edges[b]}] Dice {np.nanmax(dice):.3f}")
        if counts[2].any():
            inside.append(best_inside_outline(counts))
            line.append(f"tumour inside the true outline {inside[-1]:.3f}")
        print("  ".join(line) + f"  ({time.perf_counter() - start:.1f} s)", flush=True)
        start = time.perf_counter()
    if inside:
        print(f"tumour inside the true kidney+tumour outline, each case its own window: mean Dice "
              f"{np.mean(inside):.3f} over {len(inside)} cases with a tumour")
    return report(grids, edges)


def texture(ct: np.ndarray, labels: np.ndarray, spacing_mm) -> dict[str, tuple[float, float]]:
    """Per class present (kidney 1, tumour 2): (median HU, SD of the CT smoothed over TEXTURE_MM), inside the
    label eroded by two voxels (away from the outline's partial volume). The smoothing is a normalised
    convolution within the class (the blur of its HU over the blur of its mask), so that no other tissue
    leaks in across the outline; it runs over the labels' bounding box with room for the filter."""
    if not (labels > 0).any():
        return {}
    sigma = [TEXTURE_MM / s for s in spacing_mm]
    room = [int(np.ceil(3 * s)) for s in sigma]
    box = expand_box(bounding_box(labels > 0), room, 0, labels.shape).inside(labels.shape).slices
    hu, lab = ct[box].astype(np.float32), labels[box]
    out = {}
    for name, value in (("kidney", 1), ("tumour", 2)):
        mask = (lab == value).astype(np.float32)
        inner = ndimage.binary_erosion(mask > 0, iterations=2)
        if inner.any():
            smooth = ndimage.gaussian_filter(hu * mask, sigma)[inner] / ndimage.gaussian_filter(mask, sigma)[inner]
            out[name] = (float(np.median(hu[inner])), float(smooth.std()))
    return out


def texture_report(args: argparse.Namespace) -> int:
    """Print ``texture`` per case, then its medians and ranges over the cases."""
    rows = []
    for case_id, ct, labels, spacing in phantom_cases(args):
        found = texture(ct, labels, spacing)
        print(case_id, "  ".join(f"{name} {hu:.0f} HU, smoothed SD {sd:.1f}" for name, (hu, sd) in found.items()),
              flush=True)
        if len(found) == 2:
            rows.append([*found["kidney"], *found["tumour"]])
    if not rows:
        print("no case with both kidney and tumour")
        return 0
    table = np.array(rows)
    for column, what in enumerate(("kidney median HU", f"kidney SD smoothed over {TEXTURE_MM:g} mm",
                                   "tumour median HU", f"tumour SD smoothed over {TEXTURE_MM:g} mm")):
        values = table[:, column]
        print(f"{what}: median {np.median(values):.1f} ({values.min():.1f}-{values.max():.1f})")
    print(f"tumour darker than its kidney in {int(np.sum(table[:, 2] < table[:, 0]))} of {len(table)} cases")
    return 0


def best_inside_outline(counts: np.ndarray) -> float:
    """Tumour Dice of the case's best window applied to its kidney+tumour voxels only, from
    ``histograms``' counts."""
    return float(np.nanmax(window_dice(counts[1], counts[2])))


def report(grids: dict[str, list[np.ndarray]], edges: np.ndarray) -> int:
    """Print the best single window per target and the verdict; 1 if too easy."""
    too_easy = []
    for name, bound in BOUNDS.items():
        mean = np.nanmean(np.stack(grids[name]), axis=0)
        a, b = np.unravel_index(int(np.nanargmax(mean)), mean.shape)
        own = np.nanmean([np.nanmax(d) for d in grids[name] if not np.isnan(d).all()])
        print(f"{name}: best single window [{edges[a]}, {edges[b]}] HU, mean Dice {mean[a, b]:.3f} "
              f"(bound {bound}); mean of per-case best windows {own:.3f}")
        if mean[a, b] > bound:
            too_easy.append(f"{name} {mean[a, b]:.3f} > {bound}")
    if too_easy:
        print("TOO EASY: a single HU window segments the phantoms: " + "; ".join(too_easy))
        return 1
    print("ok: no single HU window segments the phantoms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
