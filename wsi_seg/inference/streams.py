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
        # activations lie in [0, 1]: their float32 sum is finite exactly when all of them are
        if not bool(torch.isfinite(pred.activations.sum(dtype=torch.float32))):  # else stored as class 0 everywhere
            raise NonFiniteOutput(f"the model gave NaN or infinite activations ({rt.precision})")
        acts = pred.activations.float().mul(255.0).add_(0.5).clamp_(0, 255).to(torch.uint8).cpu().numpy()
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


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """(``fn(*args)``, its wall seconds on the calling thread): a batch and what it took."""
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


class ModelTimeEstimate:
    """Model time per patch for a run's plan, taken from the run's own first batches, so
    the estimate costs no model call of its own.

    On the CPU the first round (one batch per stream, every stream busy) is measured,
    first calls included: measuring a second round had cost swin-t 0.8 s per slide for an
    estimate within 2 % of the first. On CUDA the first round (context, kernels,
    autotuning) only warms up and the second is measured. Known once per network and
    settings in a process: a cohort's later slides have it before their first batch.
    """

    def __init__(self, net: Any, rt: Runtime, patch_px: int, seeded: bool) -> None:
        self.streams = rt.streams
        self._key = (str(rt.device), rt.precision, rt.batch_size, rt.torch_threads, rt.streams, patch_px, seeded)
        self._known = _ESTIMATES.setdefault(net, {})
        self._skip = rt.streams if rt.device.type == "cuda" else 0  # batches that only warm up
        self._round: list[tuple[float, int]] = []  # (seconds, patches) of the measured batches
        self._warmup: list[tuple[float, int]] = []  # the fallback of a run too short to measure

    @property
    def seconds_per_patch(self) -> float | None:
        """The estimate, or None while its batches have not all finished."""
        return self._known.get(self._key)

    def add(self, seconds: float, patches: int) -> bool:
        """One finished batch (in the order they were started); True once the estimate is known."""
        if self._key in self._known:
            return True
        if self._skip:
            self._skip -= 1
            self._warmup.append((seconds, patches))
            return False
        self._round.append((seconds, patches))
        if len(self._round) < self.streams:
            return False
        self._known[self._key] = _per_patch(self._round)
        return True

    def finish(self) -> float:
        """The estimate from what ran, for a run too short for a whole round (0.0: nothing ran)."""
        if self.seconds_per_patch is not None:
            return self.seconds_per_patch
        return _per_patch(self._round or self._warmup)


def _per_patch(batches: list[tuple[float, int]]) -> float:
    """Seconds per patch of (seconds, patches) batches run side by side, one per stream: the
    round's wall time is about one batch's, its patches all of theirs (0.0: none)."""
    if not batches:
        return 0.0
    return sum(t for t, _ in batches) / len(batches) / max(1, sum(n for _, n in batches))
