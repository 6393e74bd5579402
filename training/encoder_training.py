"""Optimizer parameter groups for a frozen or slower-trained backbone (``--freeze-encoder``,
``--encoder-lr-scale``).

The backbone is the encoder's timm model (``net.encoder.body``); a ViT's multi-scale
adapter, the CAM head and the decoder form the other group and train at the full rate.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from wsi_seg_training.config import EncoderTraining


def _always_eval(module: nn.Module) -> None:
    """Keep ``module`` in eval mode whatever ``train()`` its parents call (a frozen
    backbone's BatchNorm statistics and dropout stay as loaded)."""
    module.eval()
    object.__setattr__(module, "train", lambda mode=True: nn.Module.train(module, False))


def parameter_groups(net: nn.Module, lr: float, settings: EncoderTraining) -> list[dict[str, Any]]:
    """Optimizer groups of ``net`` (a PsclNet): the heads at ``lr`` first (its lr is the
    one logged), then the backbone at ``lr · lr_scale``; with ``freeze`` the backbone
    gets no gradients, stays in eval mode and is left out. Parameters that do not
    require gradients (stage 2's classifier) are left out as well."""
    body = net.encoder.body
    if settings.freeze:
        body.requires_grad_(False)
        _always_eval(body)
    in_body = {id(p) for p in body.parameters()}
    heads = [p for p in net.parameters() if p.requires_grad and id(p) not in in_body]
    groups: list[dict[str, Any]] = [{"params": heads, "lr": lr, "name": "heads"}]
    backbone = [p for p in body.parameters() if p.requires_grad]
    if backbone:
        groups.append({"params": backbone, "lr": lr * settings.lr_scale, "name": "encoder"})
    return groups
