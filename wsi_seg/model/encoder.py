"""The encoder: a timm backbone emitting four NCHW feature maps (strides 4, 8, 16, 32)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from wsi_seg.errors import CheckpointError, ConfigError
from wsi_seg.model.pretrained import PretrainedWeights, resolve_pretrained


class TimmEncoder(nn.Module):
    """A timm ``features_only`` backbone reduced to its last four stages.

    ``forward`` returns a list of (B, C_i, H/s_i, W/s_i) tensors; ``channels`` and
    ``reductions`` (and ``feature_info``) describe them like timm's ``feature_info``.
    ``cam_level`` indexes the map the stage-1 CAMs and PSCL use: the last (stride 32).
    """

    cam_level = 3

    def __init__(
        self,
        name: str,
        pretrained: str | Path | bool | PretrainedWeights = False,
        **kwargs: object,
    ) -> None:
        """``pretrained``: False (random init), a spec of :func:`resolve_pretrained`
        (``auto``, ``none``, ``imagenet``, ``timm:<tag>``, a ``.safetensors`` path) or
        weights already resolved."""
        super().__init__()
        import timm

        create_kwargs: dict[str, object] = dict(features_only=True, feature_cls="getter", **kwargs)
        weights: PretrainedWeights | None = None
        if isinstance(pretrained, PretrainedWeights):
            weights = pretrained
        elif isinstance(pretrained, (str, Path)) and str(pretrained):
            weights = resolve_pretrained(pretrained, name, dict(kwargs))
        model_name = name
        create_kwargs["pretrained"] = pretrained is True  # True: timm's default tag, by timm alone
        if weights is not None:
            model_name = weights.model_name
            create_kwargs.update(weights.timm_kwargs())
        self.pretrained = weights
        try:
            self.body = timm.create_model(model_name, **create_kwargs)
        except (RuntimeError, AttributeError, KeyError) as exc:  # what timm raises on foreign weights
            if weights is not None:
                first = str(exc).strip().splitlines()
                detail = next((line.strip() for line in first[1:] if line.strip()), first[0] if first else "")
                raise CheckpointError(f"{weights.file}: weights do not fit {name} ({detail})") from exc
            raise
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"cannot build backbone {name!r}: {exc}") from exc
        channels = self.body.feature_info.channels()
        reductions = self.body.feature_info.reduction()
        keep = [i for i, r in enumerate(reductions) if r >= 4][-4:]
        if [reductions[i] for i in keep] != [4, 8, 16, 32]:
            raise ConfigError(f"backbone {name!r} has feature strides {reductions}, need 4, 8, 16, 32")
        self._keep = keep
        self.channels = [channels[i] for i in keep]
        self.reductions = [4, 8, 16, 32]
        from timm.models import FeatureInfo

        self.feature_info = FeatureInfo(
            [dict(num_chs=c, reduction=r, module=f"body.{self.body.feature_info.module_name()[i]}")
             for c, r, i in zip(self.channels, self.reductions, keep)],
            out_indices=(0, 1, 2, 3),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.body(x)
        return [feats[i] for i in self._keep]

    @property
    def backbone_channels(self) -> int:
        """Channels of :meth:`backbone_features`."""
        return self.channels[-1]

    def backbone_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's own last map (B, C, H/32, W/32): what pre-training trains and saves."""
        return self(x)[-1]


class _BackboneAdapter(nn.Module):
    """Makes a TimmEncoder answer like a transformers backbone (``.feature_maps``)."""

    def __init__(self, encoder: TimmEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.channels = encoder.channels

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(feature_maps=self.encoder(pixel_values))
