"""Losses, one class per file in the style of pytorch-metric-learning."""

from training.losses.gumbel import GumbelSoftmax
from training.losses.mlsm import MLSMLoss
from training.losses.nr import NRLoss
from training.losses.ntxent import IntraInterNTXentLoss, default_ntxent
from training.losses.pscl import PSCLLoss, default_supcon
from training.losses.sampling import sample_pixels, water_fill

__all__ = [
    "GumbelSoftmax",
    "IntraInterNTXentLoss",
    "MLSMLoss",
    "NRLoss",
    "PSCLLoss",
    "default_ntxent",
    "default_supcon",
    "sample_pixels",
    "water_fill",
]
