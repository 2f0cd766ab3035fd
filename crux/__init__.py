"""CRUX: the learning loop of visual quality inspection, from labels to the edge and back."""

__version__ = "0.1.0"
