"""Tiling: the patch grid at the model's µm/px and the blocks it is read and written in.

Output pixel (y, x) of level 0 is at the model's µm/px. Patch (i, j) *owns* the
``stride × stride`` output square starting at (i·stride, j·stride) and is read with
``overlap`` extra context split around it (centre-cropping: overlaps never blend, so no
seams). ``block_patches²`` patches form a block, which is one zarr chunk: the unit of
reading, writing and resuming.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wsi_seg.errors import ConfigError
from wsi_seg.inference.options import DEFAULT_CHUNK_PX


@dataclass(frozen=True)
class Block:
    """A chunk of the output: its block index, output box and the patches to run in it."""

    index: tuple[int, int]  # (block row, block col)
    y0: int
    x0: int
    y1: int
    x1: int
    patches: tuple[tuple[int, int], ...]  # (row, col) of patches relative to the block

    @property
    def first_patch(self) -> tuple[int, int]:
        """(row, col) of the top-left corner of the box around the block's patches: its
        read window starts there (``TileGrid.block_read_window``)."""
        return min(i for i, _ in self.patches), min(j for _, j in self.patches)


@dataclass(frozen=True)
class TileGrid:
    """Geometry of one slide's segmentation at the model resolution."""

    out_shape: tuple[int, int]  # (H, W) output level 0, px at model mpp
    scale: float  # output px per slide level-0 px (slide mpp / model mpp)
    patch_px: int
    overlap_px: int
    block_patches: int

    def __post_init__(self) -> None:
        if not 0 <= self.overlap_px < self.patch_px:
            raise ConfigError(f"overlap must be in [0, {self.patch_px}) px, got {self.overlap_px}")

    @property
    def stride_px(self) -> int:
        return self.patch_px - self.overlap_px

    @property
    def margin_px(self) -> int:
        """Context before the owned square (the rest of the overlap comes after it)."""
        return self.overlap_px // 2

    @property
    def block_px(self) -> int:
        return self.stride_px * self.block_patches

    @property
    def grid_shape(self) -> tuple[int, int]:
        """Number of patches (rows, cols) covering the output."""
        h, w = self.out_shape
        return math.ceil(h / self.stride_px), math.ceil(w / self.stride_px)

    @property
    def blocks_shape(self) -> tuple[int, int]:
        h, w = self.out_shape
        return math.ceil(h / self.block_px), math.ceil(w / self.block_px)

    def patch_window(self, row: int, col: int) -> tuple[int, int, int, int]:
        """Output-pixel window (y0, x0, y1, x1) a patch reads; may extend past the edges."""
        y0 = row * self.stride_px - self.margin_px
        x0 = col * self.stride_px - self.margin_px
        return y0, x0, y0 + self.patch_px, x0 + self.patch_px

    def block_box(self, brow: int, bcol: int) -> tuple[int, int, int, int]:
        """Output box (y0, x0, y1, x1) of a block, clipped to the output."""
        h, w = self.out_shape
        y0, x0 = brow * self.block_px, bcol * self.block_px
        return y0, x0, min(h, y0 + self.block_px), min(w, x0 + self.block_px)

    def block_read_window(self, block: Block) -> tuple[int, int, int, int]:
        """Output-pixel window (y0, x0, y1, x1) a block reads: the box around the windows of
        the patches it runs, not the whole block, so glass beside tissue edges is not read
        (a quarter of the reading on CMU-1-Small-Region). :meth:`patch_corners` says where
        each patch lies in it."""
        i0, j0 = block.first_patch
        i1, j1 = max(i for i, _ in block.patches), max(j for _, j in block.patches)
        s = self.stride_px
        y0, x0 = block.y0 + i0 * s - self.margin_px, block.x0 + j0 * s - self.margin_px
        return y0, x0, y0 + (i1 - i0) * s + self.patch_px, x0 + (j1 - j0) * s + self.patch_px

    def patch_corners(self, block: Block) -> list[tuple[int, int]]:
        """(y, x) of each of the block's patches (in ``block.patches`` order) inside its
        read window (:meth:`block_read_window`): patch k is ``window[y : y + P, x : x + P]``."""
        i0, j0 = block.first_patch
        s = self.stride_px
        return [((i - i0) * s, (j - j0) * s) for i, j in block.patches]

    def tissue_fractions(self, tissue: np.ndarray) -> np.ndarray:
        """Fraction of tissue in each patch window, (rows, cols) float32.

        ``tissue`` is a boolean thumbnail covering the whole slide; it is sampled with a
        summed-area table, so this is O(patches), not O(pixels).
        """
        th, tw = tissue.shape
        h, w = self.out_shape
        sat = np.zeros((th + 1, tw + 1), np.float64)
        sat[1:, 1:] = tissue.astype(np.float64).cumsum(0).cumsum(1)
        rows, cols = self.grid_shape
        r = np.arange(rows)[:, None]
        c = np.arange(cols)[None, :]
        fy, fx = th / h, tw / w
        y0 = np.clip(np.floor((r * self.stride_px - self.margin_px) * fy), 0, th).astype(int)
        y1 = np.clip(np.ceil((r * self.stride_px - self.margin_px + self.patch_px) * fy), 0, th).astype(int)
        x0 = np.clip(np.floor((c * self.stride_px - self.margin_px) * fx), 0, tw).astype(int)
        x1 = np.clip(np.ceil((c * self.stride_px - self.margin_px + self.patch_px) * fx), 0, tw).astype(int)
        total = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
        # the window's full thumbnail area (glass beyond the slide edge counts as no tissue)
        area = np.maximum(self.patch_px * fy, 1e-9) * np.maximum(self.patch_px * fx, 1e-9)
        return np.clip(total / np.maximum(area, 1.0), 0.0, 1.0).astype(np.float32)

    def blocks(self, selected: np.ndarray) -> list[Block]:
        """Blocks (row-major) holding at least one patch marked in ``selected``, a (rows, cols)
        bool patch mask (the tissue patches)."""
        k = self.block_patches
        out: list[Block] = []
        brows, bcols = self.blocks_shape
        for br in range(brows):
            for bc in range(bcols):
                sub = selected[br * k : (br + 1) * k, bc * k : (bc + 1) * k]
                if not sub.any():
                    continue
                y0, x0, y1, x1 = self.block_box(br, bc)
                patches = tuple((int(i), int(j)) for i, j in zip(*np.nonzero(sub)))
                out.append(Block((br, bc), y0, x0, y1, x1, patches))
        return out


def make_grid(
    slide_size_px: tuple[int, int],
    slide_mpp: float,
    model_mpp: float,
    patch_px: int,
    overlap_px: int,
    target_block_px: int = DEFAULT_CHUNK_PX,
) -> TileGrid:
    """The grid for a slide of level-0 size (W, H) at ``slide_mpp`` seen at ``model_mpp``."""
    scale = slide_mpp / model_mpp
    w, h = slide_size_px
    out_shape = (max(1, round(h * scale)), max(1, round(w * scale)))
    stride = patch_px - overlap_px
    if stride <= 0:
        raise ConfigError(f"overlap must be smaller than the patch ({patch_px} px), got {overlap_px}")
    k = max(1, round(target_block_px / stride))
    return TileGrid(out_shape=out_shape, scale=scale, patch_px=patch_px, overlap_px=overlap_px, block_patches=k)
