"""``wsi-seg review``: the regions of a result most worth a correction, as a CSV and an HTML page."""

from __future__ import annotations

import argparse
from pathlib import Path

from wsi_seg.cli.flags import add_config_flags, config_overrides
from wsi_seg.reports.review_options import ReviewOptions


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "review", help="list the regions most worth a correction, ranked by uncertain tissue area (CSV + HTML)",
        description="Rank squares of the result by their tissue area where the model hesitates between two "
                    "classes (top-two probability margin), leave out those already corrected, and write "
                    "OUT/review.csv and OUT/review.html (thumbnails: slide, labels, uncertainty). napari's "
                    "Corrections widget walks the same list (next / previous region).",
    )
    p.add_argument("result", type=Path, metavar="RESULT.zarr", help="a result of `wsi-seg segment`")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="folder for review.csv and review.html (default: <result>_review/ next to the result)")
    p.add_argument("--slide", type=Path, default=None, metavar="NEWPATH",
                   help="the slide, when it moved since the result was written (default: the path the result "
                        "records; without it the page shows no slide thumbnails)")
    add_config_flags(p, {"": ReviewOptions})
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from wsi_seg.reports.review import write_review
    from wsi_seg.settings import with_overrides

    options = with_overrides(ReviewOptions(), config_overrides(args))
    review = write_review(args.result, args.out, options, slide=args.slide)
    for r in review.regions:
        print(f"{r.rank:3d}. x {r.x_um:8.0f} µm  y {r.y_um:8.0f} µm  {r.uncertain_um2 / 1e6:8.4f} mm² uncertain "
              f"({r.uncertain_fraction:4.0%} of its tissue)  {r.main_class}")
    if not review.regions:
        print("no uncertain tissue outside the corrected regions")
    print(f"review: {review.csv}, {review.html}")
    return 0
