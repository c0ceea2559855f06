"""Reproducibility suite for differentially private equivariant deep learning."""

__version__ = "0.1.0"
