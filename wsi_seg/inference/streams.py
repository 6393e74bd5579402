"""Model batches on several threads at once ("streams"), results in order.

On the CPU one stream of two intra-op threads leaves one thread waiting at every
operator's barrier when batches are small; two streams of one thread each keep both
cores busy (``wsi_seg.inference.runtime.resolve_streams`` has the figures). Used by ``segment``
and by the benchmarks that compare against the model alone.
"""

from __future__ import annotations

import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from wsi_seg.errors import WsiSegError
from wsi_seg.inference.runtime import Runtime
from wsi_seg.model.predict_rules import IGNORE_LABEL, PredictRules


def run_batch(net: Any, rt: Runtime, patches: torch.Tensor, backgrounds: torch.Tensor | None,
              rules: PredictRules | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(activations (n, C, P, P) uint8, masks (n, P, P)) of one batch, on the calling thread.

    ``rules``: how a stage-1 model chooses and gates a patch's classes, as ``evaluate`` and
    ``pseudo-labels`` do (None: :class:`PredictRules` defaults). A patch left without a
    class (gating fallback ``ignore``) is written as 0: a slide map has no "ignore"."""
    # the grad and autocast modes are thread state: entered per batch, in the thread that runs it
    with torch.inference_mode(), rt.autocast():
        patches = patches.to(rt.device, non_blocking=True)
        bkg = backgrounds.to(rt.device, non_blocking=True) if backgrounds is not None else None
        pred = net.predict(patches, bkg, None, rules)
        if not bool(torch.isfinite(pred.activations).all()):  # would be stored as class 0 everywhere
            raise NonFiniteOutput(f"the model gave NaN or infinite activations ({rt.precision})")
        acts = (pred.activations.float() * 255.0 + 0.5).clamp_(0, 255).to(torch.uint8).cpu().numpy()
        mask = pred.mask
        if pred.fully_gated is not None and rules is not None and rules.gating_fallback == "ignore":
            mask = mask.masked_fill(mask == IGNORE_LABEL, 0)
        return acts, mask.cpu().numpy()


class NonFiniteOutput(WsiSegError):
    """A batch's activations hold NaN or infinite values (``segment`` names the checkpoint)."""


class InferenceStreams:
    """Runs model batches ``n`` at a time, each on a thread of its own, and hands back the
    results in the order the batches came; ``n = 1`` runs them on the caller's thread.
    Leaving the context waits for the batches in flight and drops their results."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._pool = ThreadPoolExecutor(n, thread_name_prefix="wsi-seg-infer") if n > 1 else None
        self._inflight: deque[tuple[Future, Any]] = deque()

    def __enter__(self) -> InferenceStreams:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Wait for the batches in flight; their results are dropped."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._inflight.clear()

    def put(self, tag: Any, fn: Callable[..., Any], *args: Any) -> list[tuple[Any, Any]]:
        """Start ``fn(*args)``; returns the (result, tag) pairs finished in order, once
        ``n`` are in flight."""
        if self._pool is None:
            return [(fn(*args), tag)]
        self._inflight.append((self._pool.submit(fn, *args), tag))
        return self._take(self.n - 1)

    def drain(self) -> list[tuple[Any, Any]]:
        """The results of every batch still in flight, in order."""
        return self._take(0)

    def _take(self, keep: int) -> list[tuple[Any, Any]]:
        done = []
        while len(self._inflight) > keep:
            future, tag = self._inflight.popleft()
            done.append((future.result(), tag))
        return done


# per network (weakly held) and run settings: the model time per patch measured once
_ESTIMATES: weakref.WeakKeyDictionary[Any, dict[tuple, float]] = weakref.WeakKeyDictionary()


def seconds_per_patch(net: Any, rt: Runtime, patch_px: int, seeded: bool, streams: InferenceStreams,
                      max_patches: int | None = None) -> float:
    """Model time per patch with every stream busy, from one round of noise batches of at
    most ``max_patches`` (a slide's patches: a large ``--batch-size`` on a small slide
    allocates no more than the slide needs).

    On the CPU the round's first calls are included: a second round cost swin-t 0.8 s per
    slide for an estimate within 2 % of the first (``small``: the first is 1.4–1.6× high).
    On CUDA the first round (context, kernels, autotuning) only warms up. Measured once
    per network and settings in a process: a cohort's later slides reuse it.
    """
    n, device = max(1, min(rt.batch_size, max_patches or rt.batch_size)), rt.device
    key = (str(device), rt.precision, n, rt.torch_threads, streams.n, patch_px, seeded)
    known = _ESTIMATES.setdefault(net, {})
    if key in known:  # a cohort's later slides: the first slide's estimate, no noise batches
        return known[key]
    x = torch.randint(0, 256, (n, 3, patch_px, patch_px), dtype=torch.uint8, device=device)
    bkg = torch.zeros((n, patch_px, patch_px), dtype=torch.bool, device=device) if seeded else None
    for _ in range(2 if device.type == "cuda" else 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        for k in range(streams.n):
            streams.put(k, run_batch, net, rt, x, bkg)
        streams.drain()
    known[key] = (time.perf_counter() - t) / (n * streams.n)
    return known[key]
