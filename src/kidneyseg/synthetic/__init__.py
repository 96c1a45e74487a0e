"""Procedural phantom abdominal CTs with kidney and tumour labels (demo and test data)."""

from kidneyseg.synthetic.procedural import make_phantom, random_geometry, synthesize_dataset

__all__ = ["make_phantom", "random_geometry", "synthesize_dataset"]
