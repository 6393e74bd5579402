"""The correction loop end to end: segment → correct a wrong region → export → fine-tune → segment again.

On a generated demo slide (whose ground truth is known) the "user" corrects the square
region where the model is most wrong by painting the true classes into it — what
napari's brush does through ``wsi_seg.result.corrections.save_corrections`` — then the
corrected patches are exported (``wsi-seg export --patches --only-corrected``), the
model is fine-tuned on them (``wsi-seg train --stage 2 --init CKPT --data DIR``), the
slide is segmented again, and the region's mIoU against the ground truth is printed
before → after::

    python examples/correction_loop.py --work /tmp/loop            # bundled demo model
    python examples/correction_loop.py --work /tmp/loop --model CKPT --size 4096 --epochs 10
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("correction_loop")


def worst_region(pred: np.ndarray, gt: np.ndarray, side: int) -> tuple[int, int]:
    """Top-left corner (patch-grid aligned) of the ``side``-px square with most wrong tissue pixels."""
    wrong = (pred != gt) & (gt > 0)
    best, corner = -1, (0, 0)
    for y in range(0, pred.shape[0] - side + 1, side // 2):
        for x in range(0, pred.shape[1] - side + 1, side // 2):
            n = int(wrong[y : y + side, x : x + side].sum())
            if n > best:
                best, corner = n, (y, x)
    return corner


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the slide, results, patches and runs")
    parser.add_argument("--model", type=Path, default=None, help="stage-2 checkpoint (default: the bundled demo model)")
    parser.add_argument("--size", type=int, default=4096, help="demo slide side in px (default: 4096)")
    parser.add_argument("--seed", type=int, default=3, help="demo slide seed (default: 3)")
    parser.add_argument("--region-patches", type=int, default=2, help="side of the corrected square, in patches")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from wsi_seg_training.config import Stage2Config, load_config
    from wsi_seg_training.stage2 import train_stage2

    from wsi_seg.exports.patches import export_patches
    from wsi_seg.inference.segment import SegmentOptions, segment_slide
    from wsi_seg.model import load_checkpoint
    from wsi_seg.model.default import default_model_path
    from wsi_seg.reports.evaluate_slide import ground_truth_at, region_miou
    from wsi_seg.result.corrections import save_corrections
    from wsi_seg.result.reader import Result
    from wsi_seg.synthetic import write_demo_slide

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    demo = write_demo_slide(work / "slide.tif", size_px=(args.size, args.size), seed=args.seed)
    ckpt = args.model or default_model_path()
    options = SegmentOptions(device=args.device, overwrite=True, progress=False)
    first = segment_slide(demo.path, work / "before.zarr", load_checkpoint(ckpt), options).out
    result = Result.open(first)
    gt = ground_truth_at(demo.mask_path, result.mpp, result.level_shape(0))
    pred = result.mask(0)[:]
    side = args.region_patches * int(result.provenance.patch_size_px)
    y, x = worst_region(pred, gt, side)
    names = result.class_names
    before = region_miou(pred[y : y + side, x : x + side], gt[y : y + side, x : x + side], names)

    crop = pred[y : y + side, x : x + side]
    fixed = np.where(gt[y : y + side, x : x + side] > 0, gt[y : y + side, x : x + side], crop).astype(np.uint8)
    record = save_corrections(first, (y, x), crop, fixed, author="correction_loop.py")
    patches = export_patches(first, work / "patches", only_corrected=True, overwrite=True)
    cfg = load_config(Stage2Config, None, {
        "data.path": str(patches.out), "init": str(ckpt), "out": str(work / "finetune"), "epochs": args.epochs,
        "batch_size": min(4, patches.patches), "optim.lr": args.lr, "data.workers": 0, "device": args.device,
        "val_every": 0, "progress": False})
    run = train_stage2(cfg, overwrite=True)
    second = segment_slide(demo.path, work / "after.zarr", load_checkpoint(run.checkpoint), options).out
    pred2 = Result.open(second).mask(0)[:]
    after = region_miou(pred2[y : y + side, x : x + side], gt[y : y + side, x : x + side], names)
    rest = np.ones_like(gt, bool)
    rest[y : y + side, x : x + side] = False
    rest_before = region_miou(np.where(rest, pred, 0), np.where(rest, gt, 0), names)
    rest_after = region_miou(np.where(rest, pred2, 0), np.where(rest, gt, 0), names)
    print(f"corrected region: {side} × {side} px at (y {y}, x {x}), {record.pixels_changed:,} px changed, "
          f"{patches.patches} patches exported, {args.epochs} epochs of fine-tuning")
    print(f"corrected region mIoU: {before:.1%} → {after:.1%}")
    print(f"rest of the slide mIoU: {rest_before:.1%} → {rest_after:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
