"""Contrast enhancement of a phantom CT (HU): per-case bolus timing and tumour subtypes.

A KiTS19-like scan is a contrast-enhanced late-arterial (corticomedullary) phase CT. Each case
draws a ``timing`` in [0, 1] (0: early or weak bolus, 1: late or strong) that moves every
enhancing tissue within its range together, each with its own jitter, so that cases differ in
contrast the way real scans do. Tumours enhance according to their histologic subtype, given as
the ``tumor_histologic_subtype`` string of KiTS19's ``kits.json``. The ranges are approximate
literature values; docs/phantoms.md lists the sources.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Range = tuple[float, float]


@dataclass(frozen=True)
class Contrast:
    """Per-case attenuation (HU) of the enhancing tissues."""

    timing: float  # 0 early/weak bolus .. 1 late/strong
    aorta: float  # and the other arteries
    vein: float  # IVC, renal and mesenteric veins
    portal: float  # liver vessels
    cortex: float  # renal cortex
    medulla: float  # renal medulla (pyramids)
    liver: float
    spleen: float  # mean; arterial-phase mottling is added around it


def plan_contrast(rng: np.random.Generator) -> Contrast:
    """Draw one case's bolus timing and the HU of its enhancing tissues."""
    timing = float(rng.uniform())

    def level(lo: float, hi: float, jitter: float = 0.25) -> float:
        return lo + (hi - lo) * float(np.clip(timing + rng.uniform(-jitter, jitter), 0.0, 1.0))

    return Contrast(timing, aorta=level(200, 340), vein=level(100, 175), portal=level(120, 180),
                    cortex=level(165, 235), medulla=level(65, 125), liver=level(80, 120), spleen=level(110, 150))


@dataclass(frozen=True)
class TumourProfile:
    """How a tumour subtype looks in the late arterial phase.

    ``enhancing`` is the HU range of its solid part (moved by the case's timing), ``texture_sd``
    the range of its heterogeneity (HU SD), and ``low_*`` describe a low-attenuation component
    (necrosis, scar, cysts or fat) present with probability ``low_probability``: a central
    ``core`` (in tumours at least 8 mm deep) or scattered ``patches``.
    """

    name: str
    enhancing: Range
    texture_sd: Range
    low_probability: float
    low_hu: Range
    low_layout: str  # "core" or "patches"
    low_fraction: Range  # of the tumour's depth (core) or volume (patches)

    def solid_hu(self, rng: np.random.Generator, timing: float) -> float:
        """Mean HU of the solid part for a case with bolus ``timing``."""
        lo, hi = self.enhancing
        return lo + (hi - lo) * float(np.clip(timing + rng.uniform(-0.35, 0.35), 0.0, 1.0))


_NECROSIS = (5.0, 35.0)
PROFILES = {
    "clear_cell_rcc": TumourProfile("clear_cell_rcc", (110, 200), (20, 40), 0.6, _NECROSIS, "core", (0.2, 0.5)),
    "papillary": TumourProfile("papillary", (50, 95), (8, 18), 0.3, _NECROSIS, "core", (0.15, 0.4)),
    "chromophobe": TumourProfile("chromophobe", (70, 125), (10, 20), 0.15, (20, 45), "core", (0.1, 0.25)),
    "oncocytoma": TumourProfile("oncocytoma", (100, 170), (12, 25), 0.5, (30, 60), "core", (0.1, 0.25)),
    "angiomyolipoma": TumourProfile("angiomyolipoma", (60, 130), (15, 30), 0.85, (-120, -40), "patches",
                                    (0.2, 0.7)),
    "clear_cell_papillary_rcc": TumourProfile("clear_cell_papillary_rcc", (70, 140), (15, 30), 0.5, (0, 25),
                                              "patches", (0.1, 0.4)),
    "mest": TumourProfile("mest", (60, 120), (15, 30), 0.9, (0, 20), "patches", (0.3, 0.7)),
    "wilms": TumourProfile("wilms", (60, 110), (15, 30), 0.6, (10, 35), "core", (0.2, 0.5)),
}
OTHER = TumourProfile("other", (60, 160), (15, 35), 0.4, _NECROSIS, "core", (0.15, 0.45))
# Subtype frequencies of the cases in KiTS19's kits.json (rounded), used when no subtype is given.
PREVALENCE = {"clear_cell_rcc": 0.69, "papillary": 0.11, "chromophobe": 0.08, "oncocytoma": 0.05,
              "angiomyolipoma": 0.02, "clear_cell_papillary_rcc": 0.02, "mest": 0.01, "other": 0.02}


def tumour_profile(subtype: str | None, rng: np.random.Generator) -> TumourProfile:
    """The profile of a KiTS19 subtype string; unknown subtypes get a generic one, and None
    draws a subtype with KiTS19's frequencies."""
    if subtype is None:
        names = list(PREVALENCE)
        weights = np.array([PREVALENCE[n] for n in names])
        subtype = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    return PROFILES.get(subtype.strip().lower(), OTHER)
