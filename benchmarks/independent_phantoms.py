"""A second, deliberately different CT renderer around KiTS19 label maps, for scoring models
trained on ``kidneyseg synth --from-labels`` phantoms on images they have never seen the like of.

It shares no code with ``kidneyseg.synthetic`` (it draws with numpy and scipy) and makes other choices
wherever the main renderer makes one: a portal-venous-like look with homogeneous kidneys
(no cortex/medulla pattern, no renal sinus), organs and bowel as thresholded random fields
instead of modelled shapes, a darker liver, tumours of any enhancement with a smooth texture,
and noise correlated across voxels instead of white. A model that learned the main renderer's
particular textures loses accuracy here; one that learned shape and context keeps it.

    python benchmarks/independent_phantoms.py OUT [--labels DIR] [--cases case_00001 ...] [--seed 7]

writes OUT/case_*/imaging.nii.gz (int16 HU) beside a copy of each segmentation.nii.gz.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import zlib
from pathlib import Path

import numpy as np
from scipy import ndimage

from kidneyseg.io import atomic_write, load_label_map, save_nifti
from kidneyseg.io.layout import IMAGE_NAME, LABEL_NAME

DEFAULT_LABELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "kits19-labels"
COARSE_MM = 6.0  # random fields are drawn on this grid, then interpolated


def render(labels: np.ndarray, spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """HU (int16) for a label map given as an (X, Y, Z) array in RAS+ order with ``spacing`` mm."""
    shape = labels.shape
    x, y = (np.arange(n, dtype=np.float32) * s for n, s in zip(shape[:2], spacing[:2]))
    fg = np.argwhere(labels > 0) * spacing
    centre = fg.mean(0) if len(fg) else np.array(shape) * spacing / 2
    mid_x = float(np.clip(centre[0], 0.35 * x[-1], 0.65 * x[-1])) if len(fg) else x[-1] / 2
    # Body: an elliptic cylinder around the kidneys, which lie posterior, either side of the spine.
    half_w = max(0.42 * x[-1], (np.abs(fg[:, 0] - mid_x).max() + 60) if len(fg) else 0)
    back_y = (fg[:, 1].min() - 45) if len(fg) else 0.2 * y[-1]
    half_h = 0.72 * half_w
    body_cy = back_y + half_h
    r2 = ((x[:, None] - mid_x) / half_w) ** 2 + ((y[None, :] - body_cy) / half_h) ** 2
    body, subcut = r2 <= 1, (r2 <= 1) & (r2 > 0.82)
    hu = np.full(shape, -1000, np.float32)
    hu[body] = rng.uniform(-105, -80)
    # Viscera: soft tissue where one smooth field is high, gas pockets where another is, front half only.
    tissue = _field(rng, shape, spacing, 18.0) > rng.uniform(-0.2, 0.4)
    gas = (_field(rng, shape, spacing, 10.0) > 1.6) & (y[None, :, None] > body_cy)
    inner = (body & ~subcut)[:, :, None]
    hu = np.where(inner & tissue, rng.uniform(30, 65) + 8 * _field(rng, shape, spacing, 8.0), hu)
    hu = np.where(inner & gas, -850.0, hu)
    hu = np.where(((r2 > 0.97) & (r2 <= 1))[:, :, None], 35.0, hu)  # skin
    # Spine and paraspinal muscle behind the kidneys; aorta and IVC in front of the spine.
    spine_y = back_y + 40
    disk = lambda cx, cy, r: ((x[:, None] - cx) ** 2 + (y[None, :] - cy) ** 2) <= r * r  # noqa: E731
    for side in (-1, 1):
        hu[disk(mid_x + side * 30, spine_y - 15, 22)] = rng.uniform(40, 60)
    hu[disk(mid_x, spine_y, 20)] = rng.uniform(600, 900)
    hu[disk(mid_x, spine_y, 16)] = rng.uniform(180, 300)
    hu[disk(mid_x - 18, spine_y + 32, 11)] = rng.uniform(130, 200)  # aorta on the patient's left
    hu[disk(mid_x + 22, spine_y + 32, 12)] = rng.uniform(100, 140)
    # Liver (patient's right, +X) above the kidneys.
    z = np.arange(shape[2], dtype=np.float32) * spacing[2]
    top = (fg[:, 2].max() if len(fg) else z[-1] / 2) + 10
    liver = (((x[:, None, None] - (mid_x + 0.55 * half_w)) / (0.5 * half_w)) ** 2
             + ((y[None, :, None] - body_cy) / (0.8 * half_h)) ** 2 + ((z[None, None, :] - top) / 90) ** 2) <= 1
    hu[liver & inner] = rng.uniform(45, 75)
    # Kidneys: homogeneous nephrographic parenchyma; tumours of any enhancement, sometimes necrotic.
    kidney_hu = rng.uniform(130, 200)
    hu = np.where(labels == 1, kidney_hu + 12 * _field(rng, shape, spacing, 4.0), hu)
    tumour = labels == 2
    if tumour.any():
        tumour_hu = rng.uniform(35, 190)
        hu = np.where(tumour, tumour_hu + 25 * _field(rng, shape, spacing, 5.0), hu)
        if rng.random() < 0.4:
            box = ndimage.find_objects(tumour.astype(np.uint8))[0]
            depth = ndimage.distance_transform_edt(np.pad(tumour[box], 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
            hu[box][depth > 0.6 * depth.max()] = rng.uniform(5, 30)
    # Acquisition: blur, noise correlated over about a voxel, a global offset.
    blur = (0.6, 0.6, max(0.4, 1.5 / spacing[2]))
    hu = ndimage.gaussian_filter(hu, blur)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 0.8)
    hu += noise * (rng.uniform(12, 30) / max(float(noise.std()), 1e-6)) + rng.uniform(-20, 20)
    return np.clip(hu, -1024, 3071).astype(np.int16)


def _field(rng: np.random.Generator, shape, spacing, sigma_mm: float) -> np.ndarray:
    """A smooth random field of unit SD on the full grid, drawn coarse and interpolated."""
    step = np.maximum(1, np.round(COARSE_MM / np.asarray(spacing)).astype(int))
    coarse_shape = [-(-n // s) + 1 for n, s in zip(shape, step)]
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape).astype(np.float32),
                                     [sigma_mm / COARSE_MM] * 3)
    coarse /= max(float(coarse.std()), 1e-6)
    full = ndimage.zoom(coarse, [n / c for n, c in zip(shape, coarse_shape)], order=1, grid_mode=True,
                        mode="nearest")
    return full[: shape[0], : shape[1], : shape[2]]


def render_case(label_path: Path, out_dir: Path, seed: int) -> Path:
    """Render one KiTS case folder into ``out_dir/<case>``; the image is on the label map's grid.

    Reading and writing go through kidneyseg.io (RAS+ by flips and permutations, atomic writes,
    the label map's header kept); only the drawing is this module's own."""
    case_id = label_path.parent.name
    volume = load_label_map(label_path)
    rng = np.random.default_rng([seed, zlib.crc32(case_id.encode())])
    hu = volume.to_file_order(render(volume.array, np.asarray(volume.spacing_mm, dtype=np.float64), rng))
    folder = out_dir / case_id
    save_nifti(hu, volume.file_affine, folder / IMAGE_NAME, header=volume.header)
    atomic_write(folder / LABEL_NAME, lambda tmp: shutil.copyfile(label_path, tmp))
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--labels", type=Path, default=DEFAULT_LABELS)
    parser.add_argument("--cases", nargs="*", help="case ids (default: all)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    paths = sorted(args.labels.glob("case_*/segmentation.nii.gz"))
    if args.cases:
        paths = [p for p in paths if p.parent.name in set(args.cases)]
    for path in paths:
        render_case(path, args.out, args.seed)
        print(path.parent.name, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
