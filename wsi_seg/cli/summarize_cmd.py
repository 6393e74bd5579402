"""``wsi-seg summarize``: rebuild a cohort's summary and report.html from its results."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "summarize",
        help="rebuild wsi_seg_summary.csv/.json (with per-class areas) and report.html of a results folder",
        description="Reads the results already in RESULTS_DIR (and its summary, if any); runs nothing.",
    )
    p.add_argument("results_dir", type=Path, metavar="RESULTS_DIR", help="a folder of wsi-seg results (segment --out-dir)")
    p.add_argument("--partial", action="store_true",
                   help="also summarize unfinished results, listed as incomplete with the areas written so far "
                        "(default: refuse them)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from wsi_seg.cohort.report import summarize

    csv_path, _, html_path, outcomes = summarize(args.results_dir, partial=args.partial)
    for o in outcomes:
        tissue = f", tissue {o.tissue_mm2:.4g} mm²" if o.tissue_mm2 is not None else ""
        print(f"{Path(o.out).name}: {o.status}{tissue}")
    print(f"{len(outcomes)} slides → {csv_path} and {html_path}")
    return 0
