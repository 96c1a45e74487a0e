"""kidneyseg: two-stage 3D U-Net segmentation of kidneys and kidney tumours in abdominal CT.

The Python API (imported lazily so that ``import kidneyseg`` stays fast):

* ``segment(ct, model)`` -> Segmentation (``.labels``, ``.save(path)``)
* ``locate(ct, model)`` -> Localization: stage 1 alone (``.boxes``, the localizer's ``.mask`` at ``.origin``)
* ``load_model_dir(path)`` -> TwoStageModel
* ``load_ct(path)``, ``load_label_map(path)``, ``save_label_map(labels, like, path)``
* ``measure(labels, volume)`` -> CaseReport: volumes per side, tumour sizes, plausibility flags
* ``preset(name)``; ``fit(...)`` trains one stage; ``synthesize_dataset(out, cases, seed)``
"""

from __future__ import annotations

from importlib import import_module

_API = {
    "segment": "kidneyseg.inference",
    "locate": "kidneyseg.inference",
    "Localization": "kidneyseg.inference",
    "load_model_dir": "kidneyseg.inference",
    "Segmentation": "kidneyseg.inference",
    "TwoStageModel": "kidneyseg.inference",
    "load_ct": "kidneyseg.io",
    "load_label_map": "kidneyseg.io",
    "save_label_map": "kidneyseg.io",
    "Volume": "kidneyseg.io",
    "preset": "kidneyseg.config",
    "fit": "kidneyseg.training.fit",
    "synthesize_dataset": "kidneyseg.synthetic",
    "case_scores": "kidneyseg.evaluation",
    "measure": "kidneyseg.measure",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'kidneyseg' has no attribute {name!r}")
