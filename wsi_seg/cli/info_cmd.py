"""``wsi-seg info``: what a slide holds, and how much of it is tissue."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print a slide's levels, µm/px, vendor and tissue fraction")
    p.add_argument("slide", type=Path, metavar="SLIDE", help="slide file (.svs, .tif, .ndpi, .mrxs, …) or DICOM slide (a folder of instances, or one .dcm)")
    p.add_argument("--mpp", type=float, default=None, metavar="UM",
                   help="level-0 µm/px if the slide lacks it (default: from the slide's metadata)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from wsi_seg.errors import SlideError
    from wsi_seg.slide.slide import PLAUSIBLE_MPP, Slide
    from wsi_seg.slide.tissue import TissueParams, tissue_mask

    with Slide(args.slide, mpp=args.mpp) as slide:
        info = slide.info()
        w, h = info.dimensions
        mpp = "unknown (pass --mpp)" if info.mpp is None else f"{info.mpp:.4f} ({info.mpp_source})"
        if info.mpp is not None and slide.mpp_problem is not None:
            mpp += f"; implausible, outside {PLAUSIBLE_MPP[0]:g}–{PLAUSIBLE_MPP[1]:g} µm/px: pass --mpp"
        print(f"slide:       {info.path}")
        print(f"vendor:      {info.vendor}")
        print(f"reader:      {info.reader}" + (f" ({slide.reader_note})" if slide.reader_note else ""))
        print(f"size:        {w} × {h} px")
        print(f"µm/px:       {mpp}")
        if info.objective_power:
            print(f"objective:   {info.objective_power:g}x")
        for level, ((lw, lh), ds) in enumerate(zip(info.level_dimensions, info.level_downsamples)):
            extra = f"  {info.mpp * ds:.3f} µm/px" if info.mpp else ""
            print(f"level {level}:     {lw} × {lh} px  downsample {ds:g}{extra}")
        print(f"fingerprint: {info.fingerprint}")
        if info.mpp is not None and slide.mpp_problem is None:
            params = TissueParams()
            try:
                thumb, thumb_mpp = slide.thumbnail(max(params.thumbnail_mpp, info.mpp))
            except SlideError as exc:  # a slide too large to thumbnail: say so, the rest stands
                print(f"tissue:      not measured ({str(exc).removeprefix(f'{slide.path}: ')})")
                return 0
            tissue = tissue_mask(thumb, thumb_mpp, params)
            area_mm2 = tissue.sum() * thumb_mpp**2 / 1e6
            print(f"tissue:      {tissue.mean():.1%} of the slide, {area_mm2:.2f} mm²")
    return 0
