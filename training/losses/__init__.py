"""Losses, one class per file in the style of pytorch-metric-learning."""

from wsi_seg_training.losses.gumbel import GumbelSoftmax
from wsi_seg_training.losses.mlsm import MLSMLoss
from wsi_seg_training.losses.nr import NRLoss
from wsi_seg_training.losses.ntxent import IntraInterNTXentLoss, default_ntxent
from wsi_seg_training.losses.pscl import PSCLLoss, default_supcon
from wsi_seg_training.losses.sampling import sample_pixels, water_fill

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
