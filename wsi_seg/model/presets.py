"""Named model presets: the thesis network, pathology foundation encoders, and small
variants for CPUs and tests."""

from __future__ import annotations

from typing import Any

from wsi_seg.errors import ConfigError
from wsi_seg.model.config import ModelConfig

_PRESETS: dict[str, dict[str, Any]] = {
    # thesis: Swin-T (patch 4, window 7) + Mask2Former pixel decoder, 256-dim embeddings
    "swin-t": dict(backbone="swin_tiny_patch4_window7_224"),
    # SwinV2-T (window 8) built for the 224-px patches of the datasets and the slides
    # (timm's img_size; its continuous position bias takes the ImageNet weights at any size)
    "swinv2-t": dict(backbone="swinv2_tiny_window8_256"),
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
    # plain ViTs (random or --pretrained weights) under the multi-scale adapter
    "vit-s16": dict(backbone="vit_small_patch16_224"),
    "vit-l16": dict(backbone="vit_large_patch16_224"),
    # a ViT of about the small preset's cost: fast on a CPU
    "small-vit": dict(
        backbone="vit_small_patch16_224",
        backbone_kwargs=dict(embed_dim=128, depth=4, num_heads=4),
        decoder_dim=64,
        decoder_layers=2,
        decoder_ffn_dim=128,
        decoder_heads=4,
    ),
    # the smallest ViTs that run every code path, for tests: patch 16 with a class token;
    # patch 14 with a class token and 4 register tokens (as Virchow2 / H-optimus-0)
    "vit-tiny": dict(
        backbone="vit_tiny_patch16_224",
        backbone_kwargs=dict(embed_dim=32, depth=2, num_heads=2),
        decoder_dim=32,
        decoder_layers=1,
        decoder_ffn_dim=32,
        decoder_heads=2,
    ),
    "vit-tiny-reg": dict(
        backbone="vit_small_patch14_reg4_dinov2",
        backbone_kwargs=dict(embed_dim=32, depth=2, num_heads=2, img_size=224),
        decoder_dim=32,
        decoder_layers=1,
        decoder_ffn_dim=32,
        decoder_heads=2,
    ),
    # pathology foundation encoders (timm models on the Hugging Face hub, gated: accept
    # their terms and log in). Architecture, the other creation arguments, mean and std
    # come from each hub config.json; here only what their model cards add to it. All
    # were pre-trained on 224-px tiles at about 0.5 µm/px: train with --mpp of your data.
    "uni": dict(backbone="hf-hub:MahmoodLab/uni", backbone_kwargs=dict(init_values=1e-5, dynamic_img_size=True)),
    "uni2-h": dict(
        backbone="hf-hub:MahmoodLab/UNI2-h",
        backbone_kwargs=dict(
            img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536,
            mlp_ratio=2.66667 * 2, no_embed_class=True, mlp_layer="swiglu_packed", act_layer="silu",
            reg_tokens=8, dynamic_img_size=True,
        ),
    ),
    "virchow2": dict(
        backbone="hf-hub:paige-ai/Virchow2", backbone_kwargs=dict(mlp_layer="swiglu_packed", act_layer="silu")
    ),
    "h-optimus-0": dict(
        backbone="hf-hub:bioptimus/H-optimus-0", backbone_kwargs=dict(init_values=1e-5, dynamic_img_size=False)
    ),
    "prov-gigapath": dict(backbone="hf-hub:prov-gigapath/prov-gigapath"),
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
