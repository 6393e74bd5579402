"""Hugging Face hub backbones (``hf-hub:<org>/<name>``): their timm config, and clear errors.

Pathology foundation encoders are published as timm models on the hub, many of them
gated. Their ``config.json`` names the timm ``architecture``, the creation arguments
(``model_args``) and the ``pretrained_cfg`` (input size, mean, std).
:func:`hub_model_info` reads it — from the hub, or from the local cache offline
(``HF_HUB_OFFLINE=1``, ``HF_HUB_CACHE``) — so a trained checkpoint records the plain
architecture and arguments and never needs the hub again.

:func:`hub_errors` turns what ``huggingface_hub`` raises into one line that names the
repository and says what to do: log in for a gated model, fill the cache for an
offline machine.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from wsi_seg.errors import CheckpointError, ConfigError

HUB_PREFIXES = ("hf-hub:", "hf_hub:")


def is_hub_name(name: str) -> bool:
    """Whether a backbone name points at the Hugging Face hub (``hf-hub:org/name``)."""
    return name.startswith(HUB_PREFIXES)


def hub_repo(name: str) -> str:
    """``org/name`` of ``hf-hub:org/name`` (a ``@revision`` suffix kept)."""
    repo = name.split(":", 1)[1] if is_hub_name(name) else name
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ConfigError(f"{name!r}: expected a hub model as hf-hub:ORG/NAME")
    return repo


@dataclass(frozen=True)
class HubModelInfo:
    """What a hub model's timm ``config.json`` says about building and feeding it."""

    repo: str
    architecture: str
    model_args: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    input_size_px: int | None = None


def parse_timm_config(repo: str, data: dict[str, Any]) -> HubModelInfo:
    """A :class:`HubModelInfo` from the parsed ``config.json`` of ``repo`` (both timm layouts:
    nested ``pretrained_cfg``, or the older single dict)."""
    if not isinstance(data, dict) or "architecture" not in data:
        raise CheckpointError(
            f"hf-hub:{repo}: its config.json is not a timm model config (no 'architecture'); "
            "wsi-seg builds encoders with timm"
        )
    pretrained_cfg = data.get("pretrained_cfg", data)
    size = pretrained_cfg.get("input_size")
    mean, std = pretrained_cfg.get("mean"), pretrained_cfg.get("std")
    return HubModelInfo(
        repo=repo,
        architecture=str(data["architecture"]),
        model_args=dict(data.get("model_args") or {}),
        mean=tuple(float(v) for v in mean) if mean else None,  # type: ignore[arg-type]
        std=tuple(float(v) for v in std) if std else None,  # type: ignore[arg-type]
        input_size_px=int(size[-1]) if size else None,
    )


def hub_model_info(name: str) -> HubModelInfo:
    """Read ``config.json`` of ``hf-hub:org/name`` from the hub or, offline, its cache."""
    from huggingface_hub import hf_hub_download

    repo = hub_repo(name)
    repo_id, _, revision = repo.partition("@")
    with hub_errors(repo):
        path = hf_hub_download(repo_id, "config.json", revision=revision or None)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: config.json of hf-hub:{repo} is unreadable ({exc})") from exc
    return parse_timm_config(repo, data)


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


@contextlib.contextmanager
def hub_errors(repo: str) -> Iterator[None]:
    """Re-raise hub failures for ``repo`` as one-line CheckpointErrors saying what to do."""
    from huggingface_hub import errors as hf_errors

    try:
        yield
    except hf_errors.GatedRepoError as exc:
        from huggingface_hub import get_token

        url = f"https://huggingface.co/{repo.split('@')[0]}"
        if get_token() is None:
            raise CheckpointError(
                f"hf-hub:{repo} is a gated model and no Hugging Face token was found: accept its terms "
                f"at {url}, then log in (hf auth login) or set HF_TOKEN"
            ) from exc
        raise CheckpointError(
            f"hf-hub:{repo} is a gated model and your Hugging Face token has no access yet: "
            f"request it at {url} (approval can take a while)"
        ) from exc
    except hf_errors.RepositoryNotFoundError as exc:
        raise CheckpointError(
            f"hf-hub:{repo}: no such model on the Hugging Face hub (or it is private: log in with "
            "hf auth login or set HF_TOKEN)"
        ) from exc
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled) as exc:
        raise CheckpointError(
            f"hf-hub:{repo}: not in the Hugging Face cache ({_cache_dir()}) and the hub cannot be "
            f"reached; on a connected machine run `hf download {repo.split('@')[0]}` and copy its "
            "cache here (set HF_HUB_CACHE to it), or unset HF_HUB_OFFLINE"
        ) from exc
    except hf_errors.RemoteEntryNotFoundError as exc:
        raise CheckpointError(f"hf-hub:{repo}: the repository lacks a file timm needs ({exc})") from exc
