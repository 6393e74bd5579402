"""``wsi-seg export``: a result's class regions as GeoJSON polygons for QuPath."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export class regions of a result as GeoJSON polygons (QuPath)")
    p.add_argument("result", type=Path, metavar="MASK.zarr", help="a complete result of `wsi-seg segment`")
    p.add_argument("--geojson", type=Path, required=True, metavar="OUT.geojson",
                   help="GeoJSON FeatureCollection to write, in slide level-0 pixel coordinates")
    p.add_argument("--level", type=int, default=0, metavar="N", help="pyramid level of the mask to trace (default: %(default)s)")
    p.add_argument("--simplify", type=float, default=None, metavar="PX",
                   help="simplification tolerance in slide level-0 px; 0 = exact pixel outlines "
                        "(default: 2 pixels of the traced level)")
    p.add_argument("--min-area-um2", type=float, default=0.0, metavar="UM2",
                   help="drop regions smaller than this (default: %(default)s)")
    p.add_argument("--min-hole-um2", type=float, default=None, metavar="UM2",
                   help="fill holes smaller than this (default: --min-area-um2)")
    p.add_argument("--classes", default=None, metavar="NAME,…", help="only these classes (default: all)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT.geojson")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from wsi_seg.export import export_geojson

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    summary = export_geojson(
        args.result, args.geojson, level=args.level, simplify_px=args.simplify,
        min_area_um2=args.min_area_um2, min_hole_um2=args.min_hole_um2, classes=classes,
        overwrite=args.overwrite, progress=not args.no_progress,
    )
    for line in summary.lines():
        print(line)
    print(f"{sum(summary.counts.values())} polygons → {summary.out} ({summary.seconds:.1f} s)")
    return 0
