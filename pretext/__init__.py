"""Pretext tasks of the suite: context encoders, inpainting and their baselines, and the shared training machinery."""

__version__ = "0.1.0"
