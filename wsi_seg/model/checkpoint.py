"""Checkpoints: a directory holding ``config.json`` + ``model.safetensors``.

Weights only ever load through safetensors (no pickle). A single ``.safetensors`` file
whose metadata carries the config under ``wsi_seg_config`` is accepted too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from wsi_seg.errors import CheckpointError, ConfigError
from wsi_seg.model.config import ModelConfig
from wsi_seg.model.network import PsclNet
from wsi_seg.model.pretrained import file_sha256

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
METADATA_KEY = "wsi_seg_config"
RUN_CHECKPOINT = "checkpoint"  # where a training run folder keeps its checkpoint
# what a checkpoint must state rather than inherit from ModelConfig's defaults: a missing
# class list would silently be the LUAD one, a missing µm/px 0.5
REQUIRED_KEYS = ("class_names", "mpp", "patch_size_px")


@dataclass
class LoadedModel:
    """A network ready for use, with where it came from."""

    net: PsclNet
    config: ModelConfig
    path: Path
    sha256: str


def save_checkpoint(net: PsclNet, directory: str | Path, config: ModelConfig | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` atomically."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = config or net.cfg
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tmp_weights = directory / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp_weights), metadata={METADATA_KEY: cfg.to_json()})
    tmp_cfg = directory / (CONFIG_NAME + ".tmp")
    tmp_cfg.write_text(cfg.to_json() + "\n", encoding="utf-8")
    os.replace(tmp_weights, directory / WEIGHTS_NAME)
    os.replace(tmp_cfg, directory / CONFIG_NAME)
    return directory


def _resolve(path: Path) -> tuple[Path, Path | None]:
    """(weights file, config file or None) of a checkpoint path (a checkpoint directory, a
    .safetensors file, or a training run folder holding ``checkpoint/``)."""
    if path.is_dir() and not (path / WEIGHTS_NAME).is_file() and (path / RUN_CHECKPOINT / WEIGHTS_NAME).is_file():
        path = path / RUN_CHECKPOINT  # a training run folder: its checkpoint/
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"{path}: not a wsi-seg checkpoint (no {WEIGHTS_NAME} inside)")
        cfg = path / CONFIG_NAME
        return weights, cfg if cfg.is_file() else None
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(
                f"{path}: not a safetensors checkpoint; expected a checkpoint directory or a "
                ".safetensors file (pickled .pt/.pth files are never loaded)"
            )
        return path, None
    raise CheckpointError(f"{path}: checkpoint not found")


def read_config(path: str | Path) -> ModelConfig:
    """The ModelConfig of a checkpoint, without loading its weights."""
    weights, cfg_file = _resolve(Path(path))
    try:
        if cfg_file is not None:
            data = json.loads(cfg_file.read_text(encoding="utf-8"))
        else:
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as f:
                meta = f.metadata() or {}
            if METADATA_KEY not in meta:
                raise CheckpointError(f"{weights}: safetensors file carries no wsi-seg config")
            data = json.loads(meta[METADATA_KEY])
        if not isinstance(data, dict):
            raise CheckpointError(f"{cfg_file or weights}: model config is not a JSON object")
        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            raise CheckpointError(
                f"{cfg_file or weights}: model config does not state {', '.join(missing)}; wsi-seg does not "
                "guess them (add them to the config: the classes, µm/px and patch size it was trained with)"
            )
        return ModelConfig.from_dict(data)
    except CheckpointError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{cfg_file or weights}: config is not valid JSON ({exc})") from exc
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{cfg_file or weights}: invalid model config: {exc}") from exc
    except Exception as exc:  # safetensors raises its own error types on corrupt headers
        raise CheckpointError(f"{weights}: cannot read checkpoint ({exc})") from exc


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the network of a checkpoint and load its weights (eval mode)."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg = read_config(path)
    weights, _ = _resolve(path)
    try:
        state = load_file(str(weights), device="cpu")
    except Exception as exc:  # corrupt or truncated file: safetensors' own error types
        raise CheckpointError(f"{weights}: corrupt or truncated safetensors file ({exc})") from exc
    bad = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:  # a diverged training or a damaged file: it would segment every slide as background
        raise CheckpointError(f"{weights}: {len(bad)} weight tensor(s) hold NaN or infinite values (first: {bad[0]}); "
                              "the training that wrote it diverged or the file is damaged")
    try:
        net = PsclNet(cfg)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: cannot build its network: {exc}") from exc
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:  # timm: "Unknown model (…)", bad kwargs
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: cannot build its network from backbone {cfg.backbone!r} ({detail}); "
            "is the backbone name a timm model of the installed timm version?"
        ) from exc
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise CheckpointError(f"{weights}: weights do not match its config ({detail})") from exc
    net.eval().to(device)
    return LoadedModel(net=net, config=cfg, path=path, sha256=file_sha256(weights))
