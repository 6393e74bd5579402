"""Losses, one class per file in the style of pytorch-metric-learning."""

from training.losses.mlsm import MLSMLoss
from training.losses.pscl import PSCLLoss, default_supcon
from training.losses.sampling import sample_pixels, water_fill

__all__ = ["MLSMLoss", "PSCLLoss", "default_supcon", "sample_pixels", "water_fill"]
