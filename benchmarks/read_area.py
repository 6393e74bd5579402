"""How much a run reads per tissue patch, for chunk sizes: blocks, and the area their read
windows cover over the tissue patches' own area (1.0 = no glass read beyond the patches'
windows; below 1.0 where neighbouring windows overlap). Geometry only: the slide's
thumbnail finds the tissue, as ``segment`` plans it; nothing is decoded at full size.

    python benchmarks/read_area.py ../shared/realdata/wsi/CMU-1-Small-Region.svs
    python benchmarks/read_area.py slide.svs --mpp 0.25 --chunks 512,1024,2048

``whole blocks`` is what a block read before December 2026 (the window of every patch
of the block, tissue or not); ``patches' box`` is what it reads now.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import print_table

from wsi_seg.inference.options import SegmentOptions
from wsi_seg.inference.segment import plan
from wsi_seg.slide.slide import Slide


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("slides", type=Path, nargs="+")
    ap.add_argument("--mpp", type=float, default=None, help="level-0 µm/px of slides without it")
    ap.add_argument("--model-mpp", type=float, default=0.5)
    ap.add_argument("--patch-px", type=int, default=224)
    ap.add_argument("--chunks", default="512,1024,2048", help="--chunk-px values to compare")
    args = ap.parse_args()
    rows = []
    for path in args.slides:
        with Slide(path, mpp=args.mpp) as slide:
            for chunk in (int(c) for c in args.chunks.split(",")):
                grid, tissue = plan(slide, args.model_mpp, args.patch_px, SegmentOptions(chunk_px=chunk))
                blocks = grid.blocks(tissue)
                s, p, k = grid.stride_px, grid.patch_px, grid.block_patches
                whole = box = 0
                for b in blocks:
                    y0, x0, y1, x1 = grid.block_read_window(b)
                    box += (y1 - y0) * (x1 - x0)
                    rows_, cols_ = -(-(b.y1 - b.y0) // s), -(-(b.x1 - b.x0) // s)
                    whole += ((rows_ - 1) * s + p) * ((cols_ - 1) * s + p)
                need = int(tissue.sum()) * p * p
                rows.append([path.name, chunk, grid.block_px, k * k, len(blocks), int(tissue.sum()),
                             f"{whole / need:.2f}", f"{box / need:.2f}"])
    print(f"model {args.model_mpp} µm/px, {args.patch_px}-px patches, default overlap; read area / tissue patches' area")
    print_table(["slide", "--chunk-px", "block px", "patches/block", "blocks", "tissue patches", "whole blocks",
                 "patches' box"], rows)


if __name__ == "__main__":
    main()
