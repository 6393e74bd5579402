"""Slide-reading throughput alone: the block reader ``segment`` sets up, no model, for
each decoder (``--readers``: openslide, jpeg-cpu = raw JPEG tiles with DCT scaling,
jpeg-device = raw tiles decoded in batches by torchvision on ``--device``) against the
number of reader processes; plus the cost per patch of each OpenSlide reading step.

Throughput: patches/s delivered to the main process (worker start-up included, as in a
``segment`` run) for each reader × ``--workers`` value; the settings are interleaved
round by round (``--rounds``) and the best round is kept, so load from other jobs hits
all alike. Ends with ``ratio jpeg-cpu/openslide = X.XX`` (at the first worker count).
Cost split (one process, ``--workers`` 0 style): OpenSlide decode (``read_region`` at the
chosen level), resize to the model µm/px, background seed, cutting into patches — ms
per patch, from reading every block of the slide once.

    python benchmarks/reader_scaling.py --work /tmp/wsi_bench
    python benchmarks/reader_scaling.py --workers 0 --readers openslide,jpeg-cpu
    python benchmarks/reader_scaling.py --quick
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import demo_slide, print_table, slide_arguments, work_folder  # noqa: E402

from wsi_seg.inference.reader import BlockDataset, BlockReader, plan_reader  # noqa: E402
from wsi_seg.inference.runtime import resolve_device  # noqa: E402
from wsi_seg.inference.segment import SegmentOptions, plan  # noqa: E402
from wsi_seg.inference.tiling import Block, TileGrid  # noqa: E402
from wsi_seg.model import preset_config  # noqa: E402
from wsi_seg.slide.slide import Slide  # noqa: E402
from wsi_seg.slide.tissue import BackgroundSeedParams  # noqa: E402


def make_dataset(slide_path: Path, seeding: bool) -> tuple[BlockDataset, int]:
    """The OpenSlide BlockDataset ``segment`` builds for this slide (default model
    geometry), and its patch count."""
    cfg = preset_config("small")  # only µm/px, patch size and seeding matter here
    with Slide(slide_path) as slide:
        grid, tissue_patches = plan(slide, cfg.mpp, cfg.patch_size_px, SegmentOptions())
        mpp = slide.mpp
    blocks = grid.blocks(tissue_patches)
    background_seed = BackgroundSeedParams.of_model(cfg) if seeding else BackgroundSeedParams(enabled=False)
    return BlockDataset(str(slide_path), mpp, grid, blocks, background_seed), int(tissue_patches.sum())


def reader_throughput(dataset: BlockDataset, reader: str, workers: int, device: torch.device,
                      read_threads: int = 1) -> float:
    """Patches/s through the ``BlockReader`` ``segment_slide`` builds for ``reader``
    (fresh workers; for jpeg-device, decoded tensors on ``device``; without workers, on
    ``read_threads`` reading threads)."""
    cfg = preset_config("small")
    with Slide(dataset.slide_path) as slide:
        plan_ = plan_reader(reader, slide, cfg.mpp, device)
    blocks = BlockReader(plan_, dataset.slide_path, dataset.slide_mpp, dataset.grid, dataset.blocks,
                         dataset.background_seed, device, workers, read_threads)
    t = time.perf_counter()
    n = 0
    for item in blocks:
        if "error" in item:
            raise RuntimeError(item["error"])
        n += item["patches"].shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n / (time.perf_counter() - t)


Window = tuple[tuple[int, int], int, tuple[int, int], tuple[int, int]]


def _read_window(grid: TileGrid, block: Block, slide: Slide) -> Window:
    """What ``Slide.read_at_mpp`` does for a block: (level-0 xy, level, read size, out size)."""
    y0, x0, y1, x1 = grid.block_read_window(block)
    bx0, by0, bx1 = x0 / grid.scale, y0 / grid.scale, x1 / grid.scale
    by1 = y1 / grid.scale
    level = slide.level_for_mpp(slide.mpp * (bx1 - bx0) / (x1 - x0))
    ds = slide.level_downsamples[level]
    size = (max(1, math.ceil((bx1 - bx0) / ds)), max(1, math.ceil((by1 - by0) / ds)))
    return (math.floor(bx0), math.floor(by0)), level, size, (x1 - x0, y1 - y0)


def cost_split(dataset: BlockDataset) -> dict[str, float]:
    """Seconds per patch of decode, resize, seed and cut+tensor, and of the whole item
    (``BlockDataset.__getitem__``), over every block once, in this process."""
    grid = dataset.grid
    background_seed = BackgroundSeedParams.of_model(preset_config("small"))
    totals = dict.fromkeys(("decode", "resize", "seed", "item"), 0.0)
    n = 0
    with Slide(dataset.slide_path) as slide:
        for k, block in enumerate(dataset.blocks):
            xy, level, size, out = _read_window(grid, block, slide)
            t0 = time.perf_counter()
            rgb = slide.read_rgb(xy, level, size)
            t1 = time.perf_counter()
            if size != out:
                rgb = np.asarray(Image.fromarray(rgb).resize(out, Image.Resampling.BILINEAR))
            t2 = time.perf_counter()
            background_seed.seed(rgb)
            t3 = time.perf_counter()
            dataset[k]
            t4 = time.perf_counter()
            totals["decode"] += t1 - t0
            totals["resize"] += t2 - t1
            totals["seed"] += t3 - t2
            totals["item"] += t4 - t3
            n += len(block.patches)
    per = {key: v / n for key, v in totals.items()}
    if not dataset.background_seed.enabled:
        per["seed"] = 0.0
    per["cut"] = max(0.0, per["item"] - per["decode"] - per["resize"] - per["seed"])
    return per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    slide_arguments(ap, size_px=12288, model=False)
    ap.add_argument("--workers", default="0,1,2,4", help="reader process counts to compare")
    ap.add_argument("--readers", default="openslide,jpeg-cpu,jpeg-device", help="decoders to compare")
    ap.add_argument("--device", default="cpu", help="where jpeg-device decodes (cpu, cuda)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best is kept")
    ap.add_argument("--no-seed", action="store_true", help="skip background seeding (models trained without it)")
    args = ap.parse_args()
    if args.quick:
        args.size, args.rounds = 4096, 1
    counts = [int(w) for w in args.workers.split(",")]
    readers = args.readers.split(",")
    device = resolve_device(args.device)
    # more workers than cores is the point of the comparison; torch's warning about it is noise
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    with work_folder(args.work) as work:
        slide = demo_slide(work, args.size, args.tissue_fraction)
        print(f"slide {slide.path.name}: {'reused' if slide.reused else f'generated in {slide.seconds:.1f} s'}")
        dataset, n_patches = make_dataset(slide.path, not args.no_seed)
        print(f"{n_patches} tissue patches in {len(dataset)} blocks", flush=True)
        dataset[0]  # warm the OS file cache
        split = cost_split(dataset) if "openslide" in readers else None
        best = {(r, w): 0.0 for r in readers for w in counts}
        for k in range(args.rounds):
            for r in readers:
                for w in counts:
                    best[r, w] = max(best[r, w], reader_throughput(dataset, r, w, device))
            print(f"  round {k + 1}: " + ", ".join(f"{r}/{w} {best[r, w]:.1f}" for r in readers for w in counts),
                  flush=True)
    print(f"\nreader throughput, no model: {args.size}² px demo slide (tissue {args.tissue_fraction:g}), "
          f"224-px patches at 0.5 µm/px from the 0.25 µm/px level, seeding {'off' if args.no_seed else 'on'}, "
          f"jpeg-device on {device}, best of {args.rounds}")
    ref = readers[0]
    print_table(["workers", *[f"{r} p/s" for r in readers], *[f"{r}/{ref}" for r in readers[1:]]],
                [[w, *[best[r, w] for r in readers], *[best[r, w] / best[ref, w] for r in readers[1:]]]
                 for w in counts])
    print("workers 0 = read in the main process; ≥ 1 = DataLoader worker processes (start-up included)")
    if split is not None:
        print("\nOpenSlide cost per patch, one process (ms):")
        print_table(["decode", "resize", "seed", "cut+tensor", "item total"],
                    [[1000 * split["decode"], 1000 * split["resize"], 1000 * split["seed"], 1000 * split["cut"],
                      1000 * split["item"]]])
        print(f"decode share of an item = {split['decode'] / split['item']:.2f}; "
              f"one-process ceiling = {1 / split['item']:.1f} patches/s")
    for r in readers:
        if 1 in counts:
            for w in counts:
                if w != 1:
                    print(f"ratio {r} {w} workers / 1 process = {best[r, w] / best[r, 1]:.2f}")
    if "openslide" in readers and "jpeg-cpu" in readers:
        print(f"ratio jpeg-cpu/openslide = {best['jpeg-cpu', counts[0]] / best['openslide', counts[0]]:.2f}")


if __name__ == "__main__":
    main()
