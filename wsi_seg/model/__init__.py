"""Model definition and checkpoint format, shared by the engine and the training code."""

from wsi_seg.model.checkpoint import LoadedModel, load_checkpoint, read_config, save_checkpoint
from wsi_seg.model.config import ModelConfig
from wsi_seg.model.heads import CamHead, PatchPrediction, SegmentationHead, Stage1Output, cams_from_class_maps
from wsi_seg.model.network import PsclNet
from wsi_seg.model.predict_rules import PredictRules
from wsi_seg.model.presets import DEFAULT_PRESET, preset_config, preset_names

__all__ = [
    "DEFAULT_PRESET",
    "CamHead",
    "LoadedModel",
    "ModelConfig",
    "PatchPrediction",
    "PredictRules",
    "PsclNet",
    "SegmentationHead",
    "Stage1Output",
    "cams_from_class_maps",
    "load_checkpoint",
    "preset_config",
    "preset_names",
    "read_config",
    "save_checkpoint",
]
