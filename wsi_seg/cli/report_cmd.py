"""``wsi-seg report``: one picture of a result (slide | overlay | ground truth, legend, areas)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write a slide report: overlay, class legend, per-class areas (PNG or HTML)")
    p.add_argument("result", type=Path, metavar="RESULT.zarr", help="a result of `wsi-seg segment`")
    p.add_argument("--out", type=Path, default=None, metavar="REPORT.png|.html",
                   help="where to write it (default: <result>_report.png next to the result)")
    p.add_argument("--slide", type=Path, default=None, metavar="NEWPATH",
                   help="the slide, when it moved since the result was written (default: the path the result records)")
    p.add_argument("--ground-truth", type=Path, default=None, metavar="MASK.png",
                   help="class-mask PNG (+ .json) to show beside the result (default: the demo slide's "
                        "<stem>_mask.png when it is next to the slide)")
    p.add_argument("--partial", action="store_true",
                   help="also report an incomplete result (an interrupted run), marked as such; its areas cover "
                        "only what was written (default: refuse it)")
    p.set_defaults(func=run)


def default_report_path(result: Path) -> Path:
    from wsi_seg.result.format import result_name

    return result.with_name(f"{result_name(result)}_report.png")


def run(args: argparse.Namespace) -> int:
    from wsi_seg.reports.slide_report import check_report_path, write_report

    out = check_report_path(args.out if args.out is not None else default_report_path(args.result))
    report = write_report(args.result, out, slide=args.slide, ground_truth=args.ground_truth, partial=args.partial)
    for a in report.areas:
        print(f"{a.name:>12}: {a.area_mm2:10.4f} mm²  {a.tissue_fraction:6.1%} of tissue")
    print(f"report: {out}")
    return 0
