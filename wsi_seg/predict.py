"""Patch prediction: network outputs → per-class activations and a class-index mask.

Stage-1 networks give CAMs (thesis eq. 4.3) and the pseudo-label rule of eq. 4.9,
with classes the classifier rejects (sigmoid score below ``cam_score_threshold``, the
top class always kept) zeroed the way absent classes are in training. Stage-2 networks
give softmax probabilities of their background + N class logits.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wsi_seg.errors import ConfigError
from wsi_seg.model.network import PsclNet, cams_from_class_maps


@dataclass
class PatchPrediction:
    """activations: (B, N, P, P) in [0, 1]; mask: (B, P, P) uint8, 0 = background, 1..N."""

    activations: torch.Tensor
    mask: torch.Tensor


def _channel_argmax(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) → (B, H, W) uint8 argmax over C; ``max().indices`` is ~25× faster
    than ``argmax(dim=1)`` on the CPU for this layout (same ties: first maximum)."""
    return x.max(dim=1).indices.to(torch.uint8)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → first CUDA device if present, else CPU; ``cuda:N`` validated."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ConfigError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast
    runs the networks 1.5–2× faster than fp32 (``benchmarks/precision.py``); elsewhere
    it is emulated and slower."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """``auto`` → fp16 on CUDA, bf16 on CPUs with native bf16, else fp32; others validated."""
    if precision == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("fp16 autocast is for CUDA; use bf16 on the CPU")
    return precision


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for ``precision`` (see :func:`resolve_precision`)."""
    precision = resolve_precision(device, precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def predict_patches(
    net: PsclNet,
    images: torch.Tensor,
    background: torch.Tensor | None = None,
) -> PatchPrediction:
    """Predict a batch of (B, 3, P, P) uint8 patches already on the network's device.

    ``background`` (B, P, P) bool is the background seed: those pixels are background
    in the mask, whatever the network says (thesis eq. 4.9 for stage 1).
    """
    cfg = net.cfg
    x = net.normalize(images)
    size = images.shape[-2:]
    if cfg.stage == 2:
        logits = net.forward_segmentation(x).float()
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        probs = logits.softmax(dim=1)
        mask = _channel_argmax(probs)
        if background is not None:
            mask[background] = 0
        return PatchPrediction(activations=probs[:, 1:], mask=mask)
    out = net.forward_stage1(x)
    cams = cams_from_class_maps(out.class_maps.float())
    scores = torch.sigmoid(out.logits.float())
    keep = scores >= cfg.cam_score_threshold
    keep[torch.arange(len(scores)), scores.argmax(dim=1)] = True
    cams = cams * keep[:, :, None, None]
    cams = F.interpolate(cams, size=size, mode="bilinear", align_corners=False).clamp_(0, 1)
    mask = _channel_argmax(cams) + 1
    if background is not None:
        mask[background] = 0
    return PatchPrediction(activations=cams, mask=mask)
