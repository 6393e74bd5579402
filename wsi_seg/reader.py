"""Block reading for inference: a torch Dataset so DataLoader workers read while the model runs.

Each item is one block: the slide region under all its patches is read once (from the
nearest pyramid level), resized to the model's µm/px, and cut into patches.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from wsi_seg.errors import WsiSegError
from wsi_seg.slide import Slide
from wsi_seg.tiling import Block, TileGrid
from wsi_seg.tissue import SeedParams


class BlockDataset(Dataset):
    """Items: dict(block=int, patches=(n, 3, P, P) uint8, background=(n, P, P) bool or empty).

    A block that cannot be read gives dict(block=int, error=message) instead.
    """

    def __init__(
        self,
        slide_path: str,
        slide_mpp: float,
        grid: TileGrid,
        blocks: list[Block],
        seed: SeedParams = SeedParams(enabled=False),
    ) -> None:
        self.slide_path = slide_path
        self.slide_mpp = slide_mpp
        self.grid = grid
        self.blocks = blocks
        self.seed = seed
        self._slide: Slide | None = None

    def __len__(self) -> int:
        return len(self.blocks)

    def _open(self) -> Slide:
        # opened lazily so each DataLoader worker process has its own handle
        if self._slide is None:
            self._slide = Slide(self.slide_path, mpp=self.slide_mpp)
        return self._slide

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_slide"] = None
        return state

    def read_block(self, block: Block) -> np.ndarray:
        """(H, W, 3) uint8 RGB of the block's read window at the model's µm/px."""
        g = self.grid
        y0, x0, y1, x1 = g.block_read_window(block)
        box = (x0 / g.scale, y0 / g.scale, x1 / g.scale, y1 / g.scale)
        return self._open().read_at_mpp(box, (x1 - x0, y1 - y0))

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor | int | str]:
        block = self.blocks[idx]
        try:
            rgb = self.read_block(block)
        except WsiSegError as exc:
            # returned, not raised: a worker's exception would reach the user wrapped
            # in its traceback; the consumer raises it again as one clean line
            return {"block": idx, "error": str(exc)}
        bkg = self.seed.seed(rgb) if self.seed.enabled else None
        p, s = self.grid.patch_px, self.grid.stride_px
        n = len(block.patches)
        patches = np.empty((n, p, p, 3), np.uint8)
        backgrounds = np.zeros((n, p, p) if bkg is not None else (0, p, p), bool)
        for k, (i, j) in enumerate(block.patches):
            patches[k] = rgb[i * s : i * s + p, j * s : j * s + p]
            if bkg is not None:
                backgrounds[k] = bkg[i * s : i * s + p, j * s : j * s + p]
        return {
            "block": idx,
            "patches": torch.from_numpy(patches).permute(0, 3, 1, 2).contiguous(),
            "background": torch.from_numpy(backgrounds),
        }
