"""``wsi-seg demo-slide`` (write a synthetic slide) and ``wsi-seg demo`` (segment it end to end)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo-slide", help="write a synthetic H&E-like pyramidal TIFF and its ground-truth mask")
    p.add_argument("out", type=Path, metavar="OUT.tif", help="slide to write; its mask goes next to it")
    p.add_argument("--size", type=int, default=8192, metavar="PX", help="width and height in px (default: %(default)s)")
    p.add_argument("--mpp", type=float, default=0.25, metavar="UM",
                   help="level-0 µm/px written to the metadata (default: %(default)s)")
    p.add_argument("--no-mpp", action="store_true", help="write no µm/px metadata")
    p.add_argument("--tissue-fraction", type=float, default=0.6, metavar="F",
                   help="share of the slide covered by tissue (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the drawn tissue (default: %(default)s)")
    p.set_defaults(func=run_demo_slide)

    d = sub.add_parser("demo", help="generate the demo slide, segment it with the default model, write its report")
    d.add_argument("--out", type=Path, default=Path("demo.zarr"), metavar="ZARR", help="result (default: %(default)s)")
    d.add_argument("--slide", type=Path, default=Path("demo_slide.tif"), metavar="SLIDE",
                   help="demo slide, generated if missing (default: %(default)s)")
    d.add_argument("--preview", type=Path, default=Path("demo_report.png"), metavar="REPORT.png|.html",
                   help="the slide report: slide | overlay | ground truth, legend, areas (default: %(default)s)")
    d.add_argument("--size", type=int, default=8192, metavar="PX",
                   help="width and height of a generated slide in px (default: %(default)s)")
    d.add_argument("--model", type=Path, default=None, metavar="CKPT", help="checkpoint (default: the bundled demo model)")
    d.add_argument("--device", default="auto", metavar="DEVICE", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.set_defaults(func=run_demo)


def run_demo_slide(args: argparse.Namespace) -> int:
    from wsi_seg.synthetic import write_demo_slide

    demo = write_demo_slide(
        args.out, size_px=(args.size, args.size), mpp=None if args.no_mpp else args.mpp,
        seed=args.seed, tissue_fraction=args.tissue_fraction,
    )
    print(f"wrote {demo.path} and its ground truth {demo.mask_path}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from wsi_seg.inference.runtime import resolve_device
    from wsi_seg.inference.segment import SegmentOptions, segment_slide
    from wsi_seg.model.checkpoint import load_checkpoint
    from wsi_seg.model.default import default_model_path
    from wsi_seg.reports.evaluate_slide import slide_miou
    from wsi_seg.reports.slide_report import check_report_path, write_report
    from wsi_seg.synthetic import mask_paths, write_demo_slide

    check_report_path(args.preview)
    device = resolve_device(args.device)
    model = load_checkpoint(args.model or default_model_path(), device=device)
    mask_path, _ = mask_paths(args.slide)
    if not (args.slide.exists() and mask_path.exists()):
        print(f"generating the demo slide {args.slide} ({args.size} × {args.size} px) …")
        write_demo_slide(args.slide, size_px=(args.size, args.size), seed=0)
    result = segment_slide(
        args.slide, args.out, model,
        SegmentOptions(device=args.device, overwrite=True, progress=not args.no_progress),
    )
    print(result.summary(args.slide.name))
    write_report(result.out, args.preview, slide=args.slide, ground_truth=mask_path)
    print(f"report: {args.preview}")
    scores = slide_miou(result.out, mask_path)
    per_class = ", ".join(f"{k} {v:.1%}" for k, v in scores["iou"].items())
    print(f"mIoU vs ground truth (tissue pixels): {scores['miou']:.1%} ({per_class})")
    return 0
