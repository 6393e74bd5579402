"""``segment_slide`` against a straightforward baseline doing the same job, side by side.

The baseline is what one would write in an afternoon: for each batch of tissue patches,
one OpenSlide ``read_region`` per patch at level 0 → resize to the model's µm/px →
tensor → model → centre crop written into a numpy mask; one batch at a time, no reader
processes, no overlap of reading and compute, no output file. It uses the same tissue
patches (``wsi_seg.inference.segment.plan``), patch geometry, network, batch size, precision and
prediction (``PsclNet.predict``, background seeding per patch), so the two differ only
in how the slide is read, batched and written. Its wall time includes the tissue
detection, as the engine's does; the engine additionally writes an OME-Zarr pyramid.

Runs alternate (``--repeats``), and the best of each is kept. Mask agreement is the
share of pixels with the same class, over the area the tissue patches own, and over
the whole output.

    python benchmarks/baseline.py --work /tmp/wsi_bench                 # small preset
    python benchmarks/baseline.py --preset swin-t --size 4096
    python benchmarks/baseline.py --checkpoint demo                     # bundled trained demo model
    python benchmarks/baseline.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    benchmark_model,
    demo_slide,
    engine_precision,
    engine_workers,
    print_speeds,
    read_result_mask,
    slide_arguments,
    work_folder,
)

from wsi_seg.inference.runtime import autocast, resolve_device  # noqa: E402
from wsi_seg.inference.segment import SegmentOptions, plan, segment_slide  # noqa: E402
from wsi_seg.inference.tiling import TileGrid  # noqa: E402
from wsi_seg.model import LoadedModel  # noqa: E402
from wsi_seg.slide.slide import Slide  # noqa: E402
from wsi_seg.slide.tissue import BackgroundSeedParams  # noqa: E402


def tissue_patches(slide_path: Path, model: LoadedModel) -> tuple[TileGrid, list[tuple[int, int]]]:
    """The grid and the (row, col) of the patches ``segment`` would run."""
    with Slide(slide_path) as slide:
        grid, tissue_patches = plan(slide, model.config.mpp, model.config.patch_size_px, SegmentOptions())
    return grid, [(int(i), int(j)) for i, j in zip(*np.nonzero(tissue_patches))]


def read_patch(osr: "openslide.OpenSlide", grid: TileGrid, i: int, j: int) -> np.ndarray:  # noqa: F821
    """(P, P, 3) uint8 of patch (i, j): level-0 read_region, glass where outside, resized."""
    y0, x0, _, _ = grid.patch_window(i, j)
    side = round(grid.patch_px / grid.scale)
    rgba = np.asarray(osr.read_region((round(x0 / grid.scale), round(y0 / grid.scale)), 0, (side, side)))
    rgb = rgba[..., :3].copy()
    rgb[rgba[..., 3] == 0] = 255
    if side != grid.patch_px:
        rgb = np.array(Image.fromarray(rgb).resize((grid.patch_px, grid.patch_px), Image.Resampling.BILINEAR))
    return rgb


def baseline_segment(slide_path: Path, model: LoadedModel, device: torch.device, batch_size: int,
                     precision: str) -> tuple[np.ndarray, int, float]:
    """(mask at the model µm/px, patches run, wall s) of the sequential baseline."""
    import openslide

    t0 = time.perf_counter()
    grid, coords = tissue_patches(slide_path, model)
    net = model.net.to(device).eval()
    background_seed = BackgroundSeedParams.of_model(model.config)
    mask = np.zeros(grid.out_shape, np.uint8)
    h, w = grid.out_shape
    s, m = grid.stride_px, grid.margin_px
    osr = openslide.OpenSlide(str(slide_path))
    with torch.inference_mode(), autocast(device, precision):
        for start in range(0, len(coords), batch_size):
            batch = coords[start : start + batch_size]
            rgbs = [read_patch(osr, grid, i, j) for i, j in batch]
            images = torch.stack([torch.from_numpy(r).permute(2, 0, 1) for r in rgbs]).to(device)
            bkg = torch.stack([torch.from_numpy(background_seed.seed(r)) for r in rgbs]).to(device) if background_seed.enabled else None
            pred = net.predict(images, bkg).mask.cpu().numpy()
            for k, (i, j) in enumerate(batch):
                hh, ww = min(s, h - i * s), min(s, w - j * s)
                mask[i * s : i * s + hh, j * s : j * s + ww] = pred[k, m : m + hh, m : m + ww]
    osr.close()
    return mask, len(coords), time.perf_counter() - t0


def owned_area(slide_path: Path, model: LoadedModel) -> np.ndarray:
    """(H, W) bool: output pixels owned by a tissue patch (where the two runs predict)."""
    grid, coords = tissue_patches(slide_path, model)
    area = np.zeros(grid.out_shape, bool)
    s = grid.stride_px
    for i, j in coords:
        area[i * s : (i + 1) * s, j * s : (j + 1) * s] = True
    return area


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    slide_arguments(ap)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=None, help="engine reader workers (default: the engine's auto; the baseline has none)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.quick:
        args.size, args.repeats = 3072, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    with work_folder(args.work) as work:
        slide = demo_slide(work, args.size, args.tissue_fraction)
        print(f"slide {slide.path.name}: {'reused' if slide.reused else f'generated in {slide.seconds:.1f} s'}")
        model, what = benchmark_model(args.checkpoint, args.preset, work)
        opts = SegmentOptions(device=str(device), batch_size=args.batch_size, workers=args.workers,
                              precision=args.precision, overwrite=True, progress=False)
        base_s, eng_s, timings = [], [], {}
        for rep in range(args.repeats):
            mask_b, n_b, sec = baseline_segment(slide.path, model, device, args.batch_size, args.precision)
            base_s.append(sec)
            res = segment_slide(slide.path, work / "baseline_engine_out.zarr", model, opts)
            eng_s.append(res.seconds)
            timings = res.timings if res.seconds <= min(eng_s) else timings
            print(f"  repeat {rep + 1}: baseline {n_b / sec:.1f} p/s, engine {res.patches_per_second:.1f} p/s",
                  flush=True)
        mask_e = read_result_mask(res.out)
        area = owned_area(slide.path, model)
    if res.patches_run != n_b:
        print(f"warning: engine ran {res.patches_run} patches, baseline {n_b}")
    b, e = print_speeds(
        f"{args.size}² px demo slide (tissue {args.tissue_fraction:g}) at 0.25 µm/px, {what}, "
        f"{model.config.patch_size_px}-px patches at {model.config.mpp} µm/px, device {device}, batch "
        f"{args.batch_size}, precision {args.precision} = {engine_precision(str(device), args.precision)}, "
        f"{torch.get_num_threads()} torch threads, best of {args.repeats}",
        [("baseline", n_b, base_s), ("segment_slide", res.patches_run, eng_s)])
    print("baseline: sequential, one read_region per patch, numpy mask; segment_slide: "
          f"{engine_workers(str(device), args.workers)} reader worker(s), split s: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    same = mask_b == mask_e
    print(f"mask agreement: {100 * same[area].mean():.2f} % of the tissue patches' pixels, "
          f"{100 * same.mean():.2f} % of all output pixels")
    print(f"ratio engine/baseline patches/s = {e / b:.2f}")


if __name__ == "__main__":
    main()
