"""Patch datasets: LUAD-HistoSeg, BCSS-WSSS (as published) and labels.csv folders."""

from wsi_seg_training.datasets.check import DatasetReport, check_dataset, open_checked_dataset
from wsi_seg_training.datasets.formats import BCSS, FORMATS, LUAD, FormatInfo
from wsi_seg_training.datasets.io import read_mask, read_rgb, to_internal
from wsi_seg_training.datasets.layout import SPLITS, DatasetIndex, PatchRecord, detect_format, open_dataset, parse_label
from wsi_seg_training.datasets.patches import PatchDataset, BackgroundSeedParams, labels_from_mask

__all__ = [
    "BCSS",
    "FORMATS",
    "LUAD",
    "SPLITS",
    "DatasetIndex",
    "DatasetReport",
    "FormatInfo",
    "PatchDataset",
    "PatchRecord",
    "BackgroundSeedParams",
    "check_dataset",
    "detect_format",
    "labels_from_mask",
    "open_checked_dataset",
    "open_dataset",
    "parse_label",
    "read_mask",
    "read_rgb",
    "to_internal",
]
