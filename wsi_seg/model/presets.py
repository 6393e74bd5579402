"""Named model presets: the thesis network and small variants for CPUs and tests."""

from __future__ import annotations

from typing import Any

from wsi_seg.errors import ConfigError
from wsi_seg.model.config import ModelConfig

_PRESETS: dict[str, dict[str, Any]] = {
    # thesis: Swin-T (patch 4, window 7) + Mask2Former pixel decoder, 256-dim embeddings
    "swin-t": dict(backbone="swin_tiny_patch4_window7_224"),
    "swinv2-t": dict(backbone="swinv2_tiny_window8_256", patch_size_px=256),
    "convnext-t": dict(backbone="convnext_tiny"),
    "resnet50": dict(backbone="resnet50"),
    # a Swin of the same shape but narrow and shallow: fast on a CPU
    "small": dict(
        backbone="swin_tiny_patch4_window7_224",
        backbone_kwargs=dict(embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8]),
        decoder_dim=64,
        decoder_layers=2,
        decoder_ffn_dim=128,
        decoder_heads=4,
    ),
    # the smallest network that still runs every code path; for tests
    "tiny": dict(
        backbone="swin_tiny_patch4_window7_224",
        backbone_kwargs=dict(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1]),
        decoder_dim=32,
        decoder_layers=1,
        decoder_ffn_dim=32,
        decoder_heads=2,
    ),
}
DEFAULT_PRESET = "swin-t"


def preset_names() -> list[str]:
    return sorted(_PRESETS)


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a named preset, with any field overridden."""
    if name not in _PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(preset_names())}")
    fields = dict(_PRESETS[name])
    fields.update(overrides)
    fields.setdefault("preset", name)
    return ModelConfig(**fields)
