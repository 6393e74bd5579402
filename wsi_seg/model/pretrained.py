"""Pretrained encoder weights: timm hub tags and local files (thesis §4.1.1).

The thesis starts Swin-T from its ImageNet-22k weights; random initialisation costs
about 30 mIoU points (table 5.13). ``--pretrained`` takes one of:

* ``auto`` (the default) — ``imagenet`` for a backbone of the standard shape that has
  ImageNet weights (the swin-t, convnext-t, swinv2-t and resnet50 presets), random
  initialisation for the narrow ``small`` / ``tiny`` presets (no such weights exist);
* ``none`` — random initialisation (table 5.13's first row);
* ``imagenet`` — the ImageNet weights of the model's backbone, as a timm tag
  (:data:`IMAGENET_TAGS`; Swin-T: ``swin_tiny_patch4_window7_224.ms_in22k``, the
  thesis' checkpoint);
* ``timm:<tag>`` or ``timm:<arch>.<tag>`` — any pretrained tag timm knows for the
  backbone (``timm.list_pretrained('<arch>*')``);
* for an ``hf-hub:`` backbone (:mod:`wsi_seg.model.backbones`), ``auto`` means that hub
  model's own weights (:func:`hub_backbone_weights`);
* a path to a ``.safetensors`` file with timm key names (e.g. ``wsi-seg pretrain``'s
  ``encoder.safetensors``).

A tag's file is found the way timm finds it — ``huggingface_hub``, repository = the
tag's ``hf_hub_id``, file ``model.safetensors``, in the Hugging Face cache
(``HF_HUB_CACHE``) — cache first, so a machine without internet that has the cache
never waits on the network; with ``HF_HUB_OFFLINE=1`` only the cache is looked at.
timm's own ``load_pretrained`` (the tag's pretrained config: classifier dropped,
filters applied) then loads exactly that file, so the sha256 recorded with the run is
the hash of the weights that were loaded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi_seg.errors import CheckpointError, ConfigError

# the ImageNet weights ``--pretrained imagenet`` means, per timm architecture: the
# thesis' ImageNet-22k checkpoint where timm has one, else timm's ImageNet-1k tag
IMAGENET_TAGS = {
    "swin_tiny_patch4_window7_224": "ms_in22k",  # thesis §4.1.1 (swin_tiny_patch4_window7_224_22k.pth)
    "convnext_tiny": "fb_in22k",
    "swinv2_tiny_window8_256": "ms_in1k",  # timm has no ImageNet-22k SwinV2-T
    "resnet50": "tv_in1k",  # torchvision's ImageNet-1k weights, the usual ResNet50 start
}
HUB_WEIGHTS_NAME = "model.safetensors"
SIZE_ONLY_KWARGS = {"img_size"}  # creation arguments that keep the weights' shapes
TIMM_PREFIX = "timm:"
PRETRAIN_WEIGHTS_NAME = "encoder.safetensors"  # what wsi-seg pretrain writes into its run folder


@dataclass(frozen=True)
class PretrainedWeights:
    """Encoder weights resolved to one file.

    ``spec``: what was asked for (``imagenet``, ``timm:…``, a path); ``model_name``: the
    name given to ``timm.create_model`` (``<arch>.<tag>`` for hub weights); ``file``:
    the safetensors file loaded; ``hub_repo``: its Hugging Face repository, if any.
    """

    spec: str
    model_name: str
    file: Path
    sha256: str
    hub_repo: str | None = None

    def timm_kwargs(self) -> dict[str, Any]:
        """``timm.create_model`` keyword arguments that load exactly :attr:`file`."""
        return dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(self.file)))

    def to_dict(self) -> dict[str, Any]:
        """What a run records about its initial weights (config.yaml, checkpoint provenance)."""
        return {
            "spec": self.spec,
            "timm_name": self.model_name,
            "hub_repo": self.hub_repo,
            "file": str(self.file),
            "sha256": self.sha256,
        }


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_bytes), b""):
            h.update(block)
    return h.hexdigest()


def is_hub_spec(spec: str) -> bool:
    """Whether ``spec`` names timm hub weights (``imagenet``, ``timm:…``) rather than a file."""
    return spec == "imagenet" or spec.startswith(TIMM_PREFIX)


def timm_name_for(spec: str, backbone: str) -> str:
    """``<arch>.<tag>`` of ``imagenet`` / ``timm:<tag>`` / ``timm:<arch>.<tag>`` for a backbone."""
    arch = backbone.split(".", 1)[0]
    if spec == "imagenet":
        tag = IMAGENET_TAGS.get(arch)
        if tag is None:
            raise ConfigError(
                f"--pretrained imagenet: no ImageNet tag is set for backbone {arch}; "
                f"name one with --pretrained timm:<tag> (timm.list_pretrained('{arch}*'))"
            )
        return f"{arch}.{tag}"
    rest = spec[len(TIMM_PREFIX):].strip()
    if not rest:
        raise ConfigError(f"--pretrained {spec}: name a tag, e.g. timm:{IMAGENET_TAGS.get(arch, 'in1k')}")
    if "." in rest:
        other_arch, _ = rest.split(".", 1)
        if other_arch != arch:
            raise ConfigError(
                f"--pretrained {spec}: weights for {other_arch}, but the model's backbone is {arch}; "
                f"use --backbone {other_arch} or a tag of {arch}"
            )
        return rest
    return f"{arch}.{rest}"


def _hub_repo_of(model_name: str) -> str:
    """The Hugging Face repository timm loads a tagged model's weights from."""
    from timm.models import get_pretrained_cfg, list_pretrained

    arch = model_name.split(".", 1)[0]
    try:
        cfg = get_pretrained_cfg(model_name, allow_unregistered=False)
    except RuntimeError:  # timm: invalid tag, or an architecture without pretrained configs
        cfg = None
    if cfg is None:
        known = ", ".join(n.split(".", 1)[1] for n in list_pretrained(f"{arch}.*")) or "none"
        raise ConfigError(f"{model_name}: timm knows no such pretrained tag; tags of {arch}: {known}")
    if not cfg.hf_hub_id:
        raise ConfigError(f"{model_name}: timm has no Hugging Face hub copy of these weights (url only: {cfg.url})")
    if cfg.hf_hub_filename and not cfg.hf_hub_filename.endswith(".safetensors"):
        raise ConfigError(f"{model_name}: its hub file {cfg.hf_hub_filename} is not safetensors; only safetensors are loaded")
    return cfg.hf_hub_id


def hub_file(repo_id: str, filename: str = HUB_WEIGHTS_NAME, revision: str | None = None) -> Path:
    """A file of a Hugging Face hub repository, from the cache or downloaded into it.

    The cache (``HF_HUB_CACHE``) is looked at first; only when the file is not there is
    the hub asked (never with ``HF_HUB_OFFLINE=1``). Failures are one-line
    CheckpointErrors (:func:`wsi_seg.model.hub.hub_errors`) naming the repository and the
    ``hf download`` command that fills the cache on a machine with internet.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    from wsi_seg.model.hub import hub_errors

    cached = try_to_load_from_cache(repo_id, filename, revision=revision)
    if isinstance(cached, str):
        return Path(cached)
    try:
        with hub_errors(repo_id):
            return Path(hf_hub_download(repo_id, filename, revision=revision))
    except CheckpointError:
        raise
    except Exception as exc:  # huggingface_hub's other HTTP errors
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"hf-hub:{repo_id}: cannot fetch {filename} ({reason}); on a connected machine run "
            f"`hf download {repo_id}` and copy its cache here (set HF_HUB_CACHE to it)"
        ) from exc


def hub_backbone_weights(source: str) -> PretrainedWeights:
    """The weights of an ``hf-hub:org/name`` backbone (wsi_seg.model.backbones), fetched into
    the cache so timm's hub loading finds them there: ``model.safetensors``, or the
    ``pytorch_model.bin`` some foundation encoders publish instead."""
    from huggingface_hub import errors as hf_errors

    from wsi_seg.model.hub import hub_repo

    repo, _, revision = hub_repo(source).partition("@")
    try:
        path = hub_file(repo, HUB_WEIGHTS_NAME, revision or None)
    except CheckpointError as exc:
        if not isinstance(exc.__cause__, hf_errors.RemoteEntryNotFoundError):
            raise
        path = hub_file(repo, "pytorch_model.bin", revision or None)
    return PretrainedWeights(spec=source, model_name=source, file=path, sha256=file_sha256(path), hub_repo=repo)


def resolve_pretrained(
    spec: str | Path | None,
    backbone: str,
    backbone_kwargs: dict[str, Any] | None = None,
    sha256: str | None = None,
) -> PretrainedWeights | None:
    """The weights file ``spec`` means for ``backbone`` (a timm architecture name built
    with ``backbone_kwargs``); None for random initialisation (``none``, or ``auto`` on a
    backbone without ImageNet weights).

    ``sha256``: a pin (e.g. from a finished run's config.yaml); CheckpointError when the
    file found has another hash.
    """
    spec = "none" if spec is None or str(spec) == "" else str(spec)
    if spec == "none":
        return None
    if spec == "auto":
        if set(backbone_kwargs or {}) - SIZE_ONLY_KWARGS or backbone.split(".", 1)[0] not in IMAGENET_TAGS:
            return None  # a narrowed network (the small / tiny presets): no ImageNet weights fit it
        try:
            weights = _resolve("imagenet", backbone)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc} (--pretrained auto means {timm_name_for('imagenet', backbone)}); "
                                  "or --pretrained none to start from random weights") from exc
    else:
        weights = _resolve(spec, backbone)
    if sha256 and weights.sha256 != sha256:
        raise CheckpointError(
            f"{weights.file}: sha256 {weights.sha256[:12]}… differs from the pinned {sha256[:12]}… "
            f"(--pretrained {spec}); these are other weights than the run was made with"
        )
    return weights


def _resolve(spec: str, backbone: str) -> PretrainedWeights:
    if is_hub_spec(spec):
        name = timm_name_for(spec, backbone)
        repo = _hub_repo_of(name)
        path = hub_file(repo, HUB_WEIGHTS_NAME)
        return PretrainedWeights(spec=spec, model_name=name, file=path, sha256=file_sha256(path), hub_repo=repo)
    path = Path(spec)
    if path.is_dir() and (path / PRETRAIN_WEIGHTS_NAME).is_file():
        path = path / PRETRAIN_WEIGHTS_NAME  # a wsi-seg pretrain run folder
    if not path.is_file():
        raise CheckpointError(
            f"{path}: pretrained weights file not found (--pretrained takes imagenet, timm:<tag> or a "
            ".safetensors file)"
        )
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: not a .safetensors file; pickled .pt/.pth weights are never loaded")
    return PretrainedWeights(spec=spec, model_name=backbone.split(".", 1)[0], file=path, sha256=file_sha256(path))
