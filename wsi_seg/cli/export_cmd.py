"""``wsi-seg export``: a result's class regions as GeoJSON polygons for QuPath, or as
training patches (image + index mask, CSV dataset layout) for fine-tuning."""

from __future__ import annotations

import argparse
from pathlib import Path

from wsi_seg.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a result: GeoJSON polygons (QuPath) or training patches (fine-tuning)")
    p.add_argument("result", type=Path, metavar="MASK.zarr", help="a complete result of `wsi-seg segment`")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--geojson", type=Path, metavar="OUT.geojson",
                      help="GeoJSON FeatureCollection to write, in slide level-0 pixel coordinates")
    what.add_argument("--patches", type=Path, metavar="DIR",
                      help="folder of patch + index-mask pairs at the model's µm/px with labels.csv (the CSV "
                           "dataset layout; wsi-seg train --stage 2 --init CKPT --data DIR fine-tunes on it); "
                           "the corrected labels when the result has some")
    g = p.add_argument_group("GeoJSON")
    g.add_argument("--level", type=int, default=0, metavar="N", help="pyramid level of the mask to trace (default: %(default)s)")
    g.add_argument("--simplify", type=float, default=None, metavar="PX",
                   help="simplification tolerance in slide level-0 px; 0 = exact pixel outlines "
                        "(default: 2 pixels of the traced level)")
    g.add_argument("--min-area-um2", type=float, default=0.0, metavar="UM2",
                   help="drop regions smaller than this (default: %(default)s)")
    g.add_argument("--min-hole-um2", type=float, default=None, metavar="UM2",
                   help="fill holes smaller than this (default: --min-area-um2)")
    g.add_argument("--classes", default=None, metavar="NAME,…", help="only these classes (default: all)")
    t = p.add_argument_group("patches")
    t.add_argument("--only-corrected", action="store_true",
                   help="only patches holding pixels the saved corrections changed")
    t.add_argument("--slide", type=Path, default=None, metavar="NEWPATH",
                   help="the slide, when it moved since the result was written (its fingerprint is checked) "
                        "(default: the path the result records)")
    t.add_argument("--min-tissue", type=float, default=None, metavar="F",
                   help="skip patches with less than this fraction of labelled pixels (default: 0.05)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.patches is not None:
        return run_patches(args)
    if args.only_corrected or args.slide is not None or args.min_tissue is not None:
        raise ConfigError("--only-corrected, --slide and --min-tissue go with --patches DIR")
    from wsi_seg.exports.geojson import export_geojson
    from wsi_seg.lock import sibling_lock

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    with sibling_lock(args.geojson):  # two exports to one file: the second stops at once
        summary = export_geojson(
            args.result, args.geojson, level=args.level, simplify_px=args.simplify,
            min_area_um2=args.min_area_um2, min_hole_um2=args.min_hole_um2, classes=classes,
            overwrite=args.overwrite, progress=not args.no_progress,
        )
    for line in summary.lines():
        print(line)
    print(f"{sum(summary.counts.values())} polygons → {summary.out} ({summary.seconds:.1f} s)")
    return 0


def run_patches(args: argparse.Namespace) -> int:
    from wsi_seg.exports.patches import DEFAULT_MIN_TISSUE, export_patches
    from wsi_seg.lock import sibling_lock

    with sibling_lock(args.patches):  # two exports into one folder: the second stops at once
        done = export_patches(
            args.result, args.patches, only_corrected=args.only_corrected, slide=args.slide,
            min_tissue=DEFAULT_MIN_TISSUE if args.min_tissue is None else args.min_tissue, overwrite=args.overwrite,
        )
    shares = ", ".join(f"{k} {v:,} px" for k, v in done.class_pixels.items())
    print(f"{done.patches} patches of {done.patch_px} px at {done.mpp:g} µm/px from labels/{done.labels} "
          f"→ {done.out} ({shares})")
    return 0
