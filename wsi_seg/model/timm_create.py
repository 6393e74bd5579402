"""Creating a timm model with weights from any source: timm's own, a local safetensors
file, a Hugging Face hub repository or resolved :class:`PretrainedWeights`.

Kept apart from :mod:`wsi_seg.model.backbones` (which picks the encoder for a config) so the
encoders it builds can create their timm bodies without importing it back.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_seg.errors import CheckpointError, ConfigError
from wsi_seg.model.hub import hub_errors, hub_repo, is_hub_name

if TYPE_CHECKING:
    from torch import nn

    from wsi_seg.model.pretrained import PretrainedWeights

# string names of the MLP layers foundation encoders use (JSON-safe backbone_kwargs)
_MLP_LAYERS = ("mlp", "glu_mlp", "swiglu", "swiglu_packed")


def timm_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``backbone_kwargs`` with layer names (``mlp_layer``, ``act_layer``) as timm classes."""
    out = dict(kwargs)
    mlp = out.get("mlp_layer")
    if isinstance(mlp, str):
        from timm import layers

        classes = dict(mlp=layers.Mlp, glu_mlp=layers.GluMlp, swiglu=layers.SwiGLU, swiglu_packed=layers.SwiGLUPacked)
        if mlp not in classes:
            raise ConfigError(f"unknown mlp_layer {mlp!r}; choose one of {', '.join(_MLP_LAYERS)}")
        out["mlp_layer"] = classes[mlp]
    act = out.get("act_layer")
    if isinstance(act, str):
        from timm.layers import get_act_layer

        try:
            out["act_layer"] = get_act_layer(act)
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"unknown act_layer {act!r} (a timm activation name, e.g. silu, gelu)") from exc
    return out


def create_timm_model(
    name: str, pretrained: str | Path | bool | PretrainedWeights = False, **kwargs: Any
) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` with weights from ``pretrained``.

    ``pretrained``: False (random), True (timm's default weights of ``name``), a local
    safetensors file, ``hf-hub:org/name`` (the weights of that hub model, whose
    architecture must be ``name``) or weights resolved by
    :func:`wsi_seg.model.pretrained.resolve_pretrained`. Hub failures become one-line
    CheckpointErrors.
    """
    import timm

    from wsi_seg.model.pretrained import PretrainedWeights

    kwargs = timm_kwargs(kwargs)
    if isinstance(pretrained, PretrainedWeights):
        if is_hub_name(pretrained.spec):
            pretrained = pretrained.spec
        else:
            name = pretrained.model_name
            kwargs.update(pretrained.timm_kwargs())
            pretrained = str(pretrained.file)
            try:
                return timm.create_model(name, **kwargs)
            except (RuntimeError, AttributeError, KeyError) as exc:
                first = str(exc).strip().splitlines()
                detail = next((line.strip() for line in first[1:] if line.strip()), first[0] if first else "")
                raise CheckpointError(f"{pretrained}: weights do not fit {name} ({detail})") from exc
    source = str(pretrained) if isinstance(pretrained, (str, Path)) else ""
    try:
        if source and is_hub_name(source):
            repo = hub_repo(source)
            with hub_errors(repo):
                return timm.create_model(f"hf-hub:{repo}", pretrained=True, **kwargs)
        if source:
            path = Path(source)
            if not path.is_file():
                raise CheckpointError(f"{path}: pretrained weights file not found")
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
        return timm.create_model(name, pretrained=bool(pretrained), **kwargs)
    except (RuntimeError, AttributeError, KeyError) as exc:  # what timm raises on foreign weights
        if source:
            first = str(exc).strip().splitlines()
            detail = next((line.strip() for line in first[1:] if line.strip()), first[0] if first else "")
            raise CheckpointError(f"{source}: weights do not fit {name} ({detail})") from exc
        raise ConfigError(f"cannot build backbone {name!r}: {exc}") from exc
    except (ValueError, TypeError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise ConfigError(f"cannot build backbone {name!r}: {exc}") from exc
