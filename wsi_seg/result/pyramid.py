"""The 2× pyramid of a result.

Level L+1 is level L halved by :func:`halve`, the one place that does it: activations
by the rounded mean of 2×2 pixels, the class mask by taking the top-left pixel of each
2×2 (labels are not averaged). Every level has the same chunk size as level 0, so a
level-(L+1) chunk is made of the 2×2 level-L chunks under it. Two ways to fill the
levels, chunk by chunk, in bounded memory:

- :class:`StreamingPyramid` receives each level-0 chunk as it is written, keeps a
  half-size copy in the parent chunk's buffer, and writes the parent as soon as all its
  children that will ever be written have arrived — so the pyramid costs no pass over
  the finished level 0, and memory holds only the parents still open (about one row of
  chunks per level, as chunks arrive in row order). It needs an even chunk size.
- :func:`halve_levels` fills each level from the finished one below it, one parent
  chunk (2×2 child chunks read back) at a time; any chunk size.

``wsi_seg.result.store.ResultStore`` chooses between them; callers only write level 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np


def level_shapes(shape_hw: tuple[int, int], min_size_px: int) -> list[tuple[int, int]]:
    """(H, W) of level 0, 1, …: halved (floor) until the image fits in ``min_size_px``."""
    h, w = shape_hw
    shapes = [(h, w)]
    while max(h, w) > min_size_px and min(h, w) >= 2:
        h, w = h // 2, w // 2
        shapes.append((h, w))
    return shapes


def halve(activations: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) uint8 activations and (H, W) mask → half size (odd edges dropped)."""
    h, w = mask.shape[0] // 2 * 2, mask.shape[1] // 2 * 2
    a = activations[:, :h, :w].astype(np.uint16)
    total = a[:, 0::2, 0::2] + a[:, 1::2, 0::2] + a[:, 0::2, 1::2] + a[:, 1::2, 1::2]
    return ((total + 2) // 4).astype(np.uint8), halve_mask(mask)


def halve_mask(mask: np.ndarray) -> np.ndarray:
    """(H, W) class mask → half size: the top-left pixel of each 2×2 (odd edges dropped).
    Also used alone where only labels change (``wsi_seg.result.corrections``)."""
    h, w = mask.shape[0] // 2 * 2, mask.shape[1] // 2 * 2
    return mask[:h:2, :w:2]


WriteChunk = Callable[[int, int, int, np.ndarray, np.ndarray], None]  # (level, y0, x0, acts, mask)


def halve_levels(levels: Sequence[tuple[Any, Any]], chunk_px: int, write: WriteChunk,
                 on_level: Callable[[int], None] | None = None) -> None:
    """Fill levels 1… from level 0, one parent chunk at a time.

    ``levels``: (activations (C, H, W), mask (H, W)) arrays per level, finest first, of the
    shapes :func:`level_shapes` gives (zarr arrays or anything sliceable). Each level-L
    chunk is :func:`halve` of the 2×2 level-(L-1) chunks under it, read back from
    ``levels[L - 1]``, so it is exact for any chunk size, odd ones included.
    ``write(level, y0, x0, activations, mask)`` stores one whole chunk.
    """
    c = chunk_px
    for level in range(1, len(levels)):
        src_act, src_mask = levels[level - 1]
        h, w = levels[level][1].shape
        for i in range(math.ceil(h / c)):
            for j in range(math.ceil(w / c)):
                y, x = 2 * i * c, 2 * j * c
                acts, mask = halve(src_act[:, y : y + 2 * c, x : x + 2 * c], src_mask[y : y + 2 * c, x : x + 2 * c])
                write(level, i * c, j * c, acts, mask)
        if on_level is not None:
            on_level(level)


class StreamingPyramid:
    """Builds levels 1…n from level-0 chunks as they are written.

    ``expected``: the level-0 chunk indices (row, col) that will be written; chunks not
    in it stay at the fill value 0, and so do their parents' quarters. ``write(level,
    y0, x0, activations, mask)`` stores one whole chunk of a level.
    """

    def __init__(self, shapes: list[tuple[int, int]], chunk_px: int, num_classes: int,
                 expected: Iterable[tuple[int, int]], write: WriteChunk) -> None:
        if chunk_px % 2:
            raise ValueError(f"chunks of {chunk_px} px do not halve into their parents; use an even size")
        self.shapes, self.chunk, self.num_classes, self.write = shapes, chunk_px, num_classes, write
        # children still to come, per parent chunk, per level ≥ 1
        self._waiting: list[dict[tuple[int, int], int]] = [{} for _ in shapes]
        children = set(expected)
        for level in range(1, len(shapes)):
            parents: dict[tuple[int, int], int] = {}
            for i, j in children:
                parents[(i // 2, j // 2)] = parents.get((i // 2, j // 2), 0) + 1
            self._waiting[level] = parents
            children = set(parents)
        self._open: list[dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]] = [{} for _ in shapes]

    @property
    def levels(self) -> int:
        return len(self.shapes)

    @property
    def pending(self) -> int:
        """Parent chunks still waiting for children (0 once every expected chunk came)."""
        return sum(len(w) for w in self._waiting[1:])

    def add(self, index: tuple[int, int], activations: np.ndarray, mask: np.ndarray) -> None:
        """A level-0 chunk ``index`` was written with these contents."""
        self._add(1, index, activations, mask)

    def _add(self, level: int, child: tuple[int, int], activations: np.ndarray, mask: np.ndarray) -> None:
        if level >= len(self.shapes):
            return
        parent = (child[0] // 2, child[1] // 2)
        half_a, half_m = halve(activations, mask)
        if parent not in self._open[level]:
            size = self._chunk_size(level, parent)
            self._open[level][parent] = (np.zeros((self.num_classes, *size), np.uint8), np.zeros(size, np.uint8))
        acts, msk = self._open[level][parent]
        y, x = (child[0] % 2) * (self.chunk // 2), (child[1] % 2) * (self.chunk // 2)
        hh, ww = min(half_m.shape[0], msk.shape[0] - y), min(half_m.shape[1], msk.shape[1] - x)
        acts[:, y : y + hh, x : x + ww] = half_a[:, :hh, :ww]
        msk[y : y + hh, x : x + ww] = half_m[:hh, :ww]
        self._waiting[level][parent] -= 1
        if self._waiting[level][parent] == 0:
            del self._waiting[level][parent], self._open[level][parent]
            self.write(level, parent[0] * self.chunk, parent[1] * self.chunk, acts, msk)
            self._add(level + 1, parent, acts, msk)

    def _chunk_size(self, level: int, index: tuple[int, int]) -> tuple[int, int]:
        h, w = self.shapes[level]
        return min(self.chunk, h - index[0] * self.chunk), min(self.chunk, w - index[1] * self.chunk)
