"""Which encoder a backbone name gets: a TimmEncoder or a ViTEncoder, with hub names resolved.

* Hierarchical timm backbones (Swin, ConvNeXt, ResNet …) → :class:`TimmEncoder`
  (timm ``features_only``, strides 4–32).
* Plain ViTs — any timm ``vit_*`` / EVA name, or an ``hf-hub:org/name`` foundation
  encoder — → :class:`ViTEncoder` (the ViT plus the multi-scale adapter).

Hub names are resolved before a network is built (:func:`resolve_hub_backbone`): the
ModelConfig then holds the plain timm architecture, the creation arguments from the
hub's ``config.json`` merged with the preset's, and the model's mean/std, so a
checkpoint rebuilds without the hub; only the pretrained weights come from it.

JSON cannot hold classes, so ``backbone_kwargs`` name layer types by string
(``mlp_layer: swiglu_packed``, ``act_layer: silu``, as Virchow2 and UNI2-h need);
:func:`wsi_seg.model.timm_create.timm_kwargs` turns them into timm's classes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_seg.errors import ConfigError
from wsi_seg.model.hub import hub_model_info, is_hub_name

if TYPE_CHECKING:
    from torch import nn

    from wsi_seg.model.pretrained import PretrainedWeights

    from wsi_seg.model.config import ModelConfig

log = logging.getLogger(__name__)

# timm model modules whose models are plain ViTs with forward_intermediates
_VIT_MODULES = ("vision_transformer", "deit", "eva")


def is_plain_vit(name: str) -> bool:
    """Whether ``name`` (a timm name, or hf-hub:…) is a plain ViT that needs the adapter."""
    if is_hub_name(name):
        return True
    from timm.models import is_model, is_model_in_modules

    return is_model(name) and is_model_in_modules(name, _VIT_MODULES)


def resolve_hub_backbone(cfg: ModelConfig) -> tuple[ModelConfig, str | None]:
    """(config with a hub backbone replaced by its timm architecture, the hub weights source).

    Creation arguments: the hub's ``model_args``, then the config's ``backbone_kwargs``
    (the preset's, which win); mean and std from the hub's ``pretrained_cfg``. A config
    whose backbone is no hub name comes back unchanged, with None.
    """
    if not is_hub_name(cfg.backbone):
        return cfg, None
    info = hub_model_info(cfg.backbone)
    if not is_plain_vit(info.architecture):
        raise ConfigError(
            f"{cfg.backbone}: architecture {info.architecture} is not a plain ViT; hub backbones "
            "must be ViT foundation encoders (hierarchical timm backbones go by their timm name)"
        )
    kwargs = {k: v for k, v in info.model_args.items() if k not in ("num_classes", "global_pool")}
    kwargs.update(cfg.backbone_kwargs)
    changes: dict[str, Any] = dict(backbone=info.architecture, backbone_kwargs=kwargs)
    if info.mean and info.std:
        changes.update(mean=info.mean, std=info.std)
    if info.input_size_px and info.input_size_px != cfg.patch_size_px:
        log.warning("%s was pre-trained on %d-px inputs; these patches are %d px (its position "
                    "embeddings are interpolated)", cfg.backbone, info.input_size_px, cfg.patch_size_px)
    provenance = dict(cfg.provenance)
    provenance["encoder_weights"] = f"hf-hub:{info.repo}"
    changes["provenance"] = provenance
    return cfg.replace(**changes), f"hf-hub:{info.repo}"


def build_encoder(cfg: ModelConfig, pretrained: str | Path | bool | PretrainedWeights = False) -> nn.Module:
    """The encoder of ``cfg``: a ViTEncoder for plain ViTs, else a TimmEncoder."""
    if is_hub_name(cfg.backbone):
        cfg, hub_weights = resolve_hub_backbone(cfg)
        if pretrained is True:
            pretrained = hub_weights or True
    if is_plain_vit(cfg.backbone):
        from wsi_seg.model.vit_encoder import ViTEncoder

        encoder = ViTEncoder(cfg.backbone, pretrained=pretrained, adapter=cfg.vit_adapter, **cfg.backbone_kwargs)
        encoder.check_input_px(cfg.patch_size_px)
        return encoder
    from wsi_seg.model.encoder import TimmEncoder

    kwargs = dict(cfg.backbone_kwargs)
    if cfg.backbone.startswith("swin") and "img_size" not in kwargs:
        # timm's Swin / SwinV2 are built for one input size: the patch size, in training and
        # on slides alike (swinv2-t is a 256-px model run on 224-px patches)
        kwargs["img_size"] = cfg.patch_size_px
    return TimmEncoder(cfg.backbone, pretrained=pretrained, **kwargs)
