"""Model configuration: one typed dataclass, saved next to every checkpoint as JSON."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from wsi_seg.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUAD_CLASS_NAMES = ("TE", "NEC", "LYM", "TAS")
LUAD_CLASS_COLORS = ((205, 51, 51), (0, 255, 0), (65, 105, 225), (255, 165, 0))
CONFIG_FORMAT_VERSION = 1
# label maps are uint8: 0 = background, 1..N = classes, 255 = ignore (predict_rules.IGNORE_LABEL)
MAX_CLASSES = 254


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a network and feed it correctly.

    ``stage`` 1 is the encoder + 1×1 classifier that yields CAMs; stage 2 adds the
    Mask2Former pixel decoder and a 1×1 head over background + classes.
    """

    backbone: str = "swin_tiny_patch4_window7_224"
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    # plain ViTs only: how their tokens become the 4–32 pyramid (wsi_seg.model.feature_pyramid)
    vit_adapter: str = "simple"
    decoder_dim: int = 256
    decoder_layers: int = 6
    decoder_ffn_dim: int = 1024
    decoder_heads: int = 8
    stage: int = 2
    class_names: tuple[str, ...] = LUAD_CLASS_NAMES
    class_colors: tuple[tuple[int, int, int], ...] = LUAD_CLASS_COLORS
    patch_size_px: int = 224
    mpp: float = 0.5
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # background seeding of patches (thesis §4.3.2): glass found by colour is background
    # in the mask of either stage; off for data whose white areas are tissue (BCSS fat)
    background_seeding: bool = True
    bkg_gray_threshold: int = 200
    bkg_min_size_px: int = 200
    # classes whose sigmoid score is below this are zeroed in stage-1 inference
    cam_score_threshold: float = 0.5
    preset: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise ConfigError(f"stage must be 1 or 2, got {self.stage!r}")
        if not self.class_names:
            raise ConfigError("class_names must name at least one class")
        if len(self.class_names) > MAX_CLASSES:
            raise ConfigError(f"{len(self.class_names)} classes; label maps are 8-bit (0 = background, 255 = "
                              f"ignore), so a model has at most {MAX_CLASSES}")
        if len(self.class_colors) != len(self.class_names):
            raise ConfigError(
                f"{len(self.class_names)} class names but {len(self.class_colors)} colours"
            )
        if self.patch_size_px <= 0 or self.patch_size_px % 32:
            raise ConfigError(f"patch_size_px must be a positive multiple of 32, got {self.patch_size_px}")
        if self.decoder_dim % 32:
            raise ConfigError(f"decoder_dim must be a multiple of 32 (GroupNorm), got {self.decoder_dim}")
        if self.vit_adapter not in ("simple", "intermediates"):
            raise ConfigError(f"vit_adapter must be simple or intermediates, got {self.vit_adapter!r}")
        if not (math.isfinite(self.mpp) and self.mpp > 0):
            raise ConfigError(f"mpp must be a positive number of µm per pixel, got {self.mpp}")

    @property
    def num_classes(self) -> int:
        """Number of tissue classes (background excluded)."""
        return len(self.class_names)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["format_version"] = CONFIG_FORMAT_VERSION
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a dict, rejecting unknown keys so typos do not pass silently."""
        data = dict(data)
        data.pop("format_version", None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown model config keys: {', '.join(unknown)}")
        for key in ("class_names", "mean", "std"):
            if key in data:
                data[key] = tuple(data[key])
        if "class_colors" in data:
            data["class_colors"] = tuple(tuple(int(v) for v in c) for c in data["class_colors"])
        return cls(**data)
