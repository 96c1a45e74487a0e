"""Phantom abdominal CTs with kidney and tumour labels: procedural (demo and test data) or drawn
around real KiTS19 label maps."""

from kidneyseg.synthetic.from_labels import render_around_labels, synthesize_from_labels
from kidneyseg.synthetic.procedural import make_phantom, random_geometry, synthesize_dataset

__all__ = ["make_phantom", "random_geometry", "render_around_labels", "synthesize_dataset", "synthesize_from_labels"]
