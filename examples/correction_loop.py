"""The correction loop end to end: segment → correct a wrong region → fine-tune → segment again.

On a generated demo slide (whose ground truth is known) the "user" corrects the square
region where the model is most wrong by painting the true classes into it — what
napari's brush does through ``wsi_seg.result.corrections.save_corrections`` — then the
model is fine-tuned on the corrected result (``wsi-seg finetune RESULT --model CKPT --out
RUN``: corrected pixels weighted, the model's own uncorrected labels replayed), the slide
is segmented again, and the mIoU against the ground truth is printed before → after, in
the corrected square and in the rest of the slide::

    python examples/correction_loop.py --work /tmp/loop            # bundled demo model
    python examples/correction_loop.py --work /tmp/loop --old      # the old recipe: train --stage 2 on the
                                                                   # exported corrected patches alone, 10 epochs
    python examples/correction_loop.py --work /tmp/loop --set epochs=5 --set encoder.freeze=true

The slide, the first segmentation and the correction are kept in ``--work`` and reused by
a rerun; each fine-tune goes to its own folder (``--name``). The settings printed are read
back from the run's ``config.yaml``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import yaml
from _screenshot import loop_parser, segmented_with_truth

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


def _value(text: str) -> object:
    return yaml.safe_load(text)


def main(argv: list[str] | None = None) -> int:
    parser = loop_parser(__doc__.splitlines()[0], seed=3, region_patches=2)
    parser.add_argument("--old", action="store_true",
                        help="fine-tune the old way: train --stage 2 on the exported corrected patches, 10 epochs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a finetune setting (dotted key of FinetuneConfig, e.g. epochs=5, encoder.lr_scale=1)")
    parser.add_argument("--name", default=None, help="run folder name under --work (default: from the settings)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from wsi_seg.inference.segment import SegmentOptions, segment_slide
    from wsi_seg.model import load_checkpoint
    from wsi_seg.model.default import default_model_path
    from wsi_seg.reports.evaluate_slide import region_miou
    from wsi_seg.result.corrections import corrections_history, save_corrections
    from wsi_seg.result.reader import Result
    from wsi_seg.synthetic import write_demo_slide

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    demo = write_demo_slide(work / "slide.tif", size_px=(args.size, args.size), seed=args.seed)
    ckpt = args.model or default_model_path()
    options = SegmentOptions(device=args.device, overwrite=True, progress=False)
    first = work / "before.zarr"
    result, gt = segmented_with_truth(demo, first, ckpt, args.device)
    pred = result.mask(0)[:]
    side = args.region_patches * int(result.provenance.patch_size_px)
    y, x = worst_region(pred, gt, side)
    names = result.class_names
    crop = pred[y : y + side, x : x + side]
    if not corrections_history(result):  # the "user" paints the truth into the square, once
        fixed = np.where(gt[y : y + side, x : x + side] > 0, gt[y : y + side, x : x + side], crop).astype(np.uint8)
        save_corrections(first, (y, x), crop, fixed, author="correction_loop.py")
    changed = sum(s["pixels_changed"] for s in corrections_history(Result.open(first)))

    overrides = dict(item.split("=", 1) for item in args.set)
    name = args.name or ("old" if args.old else "finetune" + "".join(f"_{k}-{v}" for k, v in sorted(overrides.items())))
    run_dir = work / name
    if args.old:
        checkpoint, settings = _old_recipe(first, work, run_dir, ckpt, args.device)
    else:
        checkpoint, settings = _finetune(first, run_dir, ckpt, args.device, overrides)
    second = segment_slide(demo.path, work / f"after_{name}.zarr", load_checkpoint(checkpoint), options).out
    pred2 = Result.open(second).mask(0)[:]
    inside = np.zeros_like(gt, bool)
    inside[y : y + side, x : x + side] = True

    def score(p: np.ndarray, where: np.ndarray) -> float:
        return region_miou(np.where(where, p, 0), np.where(where, gt, 0), names)

    print(f"corrected region: {side} × {side} px at (y {y}, x {x}), {changed:,} px changed; run {run_dir}")
    print(f"settings (config.yaml): {settings}")
    print("| mIoU vs ground truth (MLPS) | before | after |\n|---|---|---|")
    print(f"| the corrected square | {score(pred, inside):.1%} | {score(pred2, inside):.1%} |")
    print(f"| the rest of the slide | {score(pred, ~inside):.1%} | {score(pred2, ~inside):.1%} |")
    return 0


def _finetune(result: Path, run_dir: Path, ckpt: Path, device: str, overrides: dict[str, str]) -> tuple[Path, str]:
    """``wsi-seg finetune RESULT --model CKPT --out RUN`` with ``overrides``; its checkpoint and settings."""
    from wsi_seg_training.config import load_config
    from wsi_seg_training.finetune import finetune
    from wsi_seg_training.finetune_config import FinetuneConfig

    base = {"model": str(ckpt), "out": str(run_dir), "device": device, "progress": False}
    cfg = load_config(FinetuneConfig, None, {**base, **{k: _value(v) for k, v in overrides.items()}}).validate()
    done = run_dir / "checkpoint" / "model.safetensors"
    if not done.is_file():
        finetune(cfg, [str(result)], overwrite=True)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    shown = {"epochs": saved["epochs"], "batch_size": saved["batch_size"], "lr": saved["optim"]["lr"],
             "encoder": saved["encoder"], "replay": saved["replay"]}
    return run_dir / "checkpoint", str(shown)


def _old_recipe(result: Path, work: Path, run_dir: Path, ckpt: Path, device: str) -> tuple[Path, str]:
    """The recipe before ``finetune``: ``export --patches --only-corrected`` then ``train --stage 2 --init``."""
    from wsi_seg_training.config import Stage2Config, load_config
    from wsi_seg_training.stage2 import train_stage2

    from wsi_seg.exports.patches import export_patches

    patches = export_patches(result, work / "patches_old", only_corrected=True, overwrite=True)
    cfg = load_config(Stage2Config, None, {
        "data.path": str(patches.out), "init": str(ckpt), "out": str(run_dir), "epochs": 10,
        "batch_size": min(4, patches.patches), "optim.lr": 1e-4, "data.workers": 0, "device": device,
        "val_every": 0, "progress": False})
    if not (run_dir / "checkpoint" / "model.safetensors").is_file():
        train_stage2(cfg, overwrite=True)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    return run_dir / "checkpoint", str({"epochs": saved["epochs"], "patches": patches.patches, "lr": saved["optim"]["lr"]})


if __name__ == "__main__":
    raise SystemExit(main())
