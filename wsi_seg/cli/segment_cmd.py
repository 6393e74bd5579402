"""``wsi-seg segment``: one slide to ``--out``, or many slides into ``--out-dir``."""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from wsi_seg.cli.flags import add_config_flags, config_overrides
from wsi_seg.errors import ConfigError
from wsi_seg.inference.options import SegmentOptions
from wsi_seg.settings import with_overrides

if TYPE_CHECKING:
    from wsi_seg.inference.segment import SegmentPlan

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment whole slides into OME-Zarr masks and activation maps")
    p.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files (.svs, .tif, .ndpi, .mrxs, …), quoted glob patterns, or a CSV manifest (column 'slide')")
    dest = p.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", type=Path, metavar="ZARR", help="output .zarr for a single slide")
    dest.add_argument("--out-dir", type=Path, metavar="DIR", help="folder for one <slide>.zarr per slide")
    p.add_argument("--model", type=Path, default=None, metavar="CKPT",
                   help="checkpoint directory or .safetensors (default: the bundled demo model)")
    add_config_flags(p, {"": SegmentOptions})  # every option's flag, declared on its field
    p.add_argument("--preview", type=Path, default=None, metavar="REPORT.png|.html",
                   help="with --out: also write the slide report (overlay, legend, per-class areas) (default: none)")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="run the cohort on the dask cluster at ADDRESS (e.g. tcp://host:8786), one task per "
                        "slide; CUDA slides take a worker resource GPU=1 (dask worker --resources GPU=1) "
                        "(default: no cluster, slides one after another here)")
    p.add_argument("--local-cluster", type=int, metavar="N", default=None,
                   help="run the cohort on a local dask cluster of N worker processes (with CUDA: worker i "
                        "uses GPU i); needs wsi-seg[distributed] (default: no cluster)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from wsi_seg.result.ownership import check_output, cohort_lock, output_lock

    if args.out is not None and len(args.slides) != 1:
        raise ConfigError(f"--out takes one slide, got {len(args.slides)}; use --out-dir for several")
    if args.preview is not None:
        from wsi_seg.reports.slide_report import check_report_path

        if args.out is None:
            raise ConfigError("--preview goes with --out; a cohort (--out-dir) writes report.html in its folder")
        check_report_path(args.preview)
    on_cluster = args.scheduler is not None or args.local_cluster is not None
    if args.scheduler is not None and args.local_cluster is not None:
        raise ConfigError("--scheduler and --local-cluster exclude each other; give one")
    if on_cluster and args.out is not None:
        raise ConfigError("--scheduler and --local-cluster run cohorts; use --out-dir instead of --out")
    if args.local_cluster is not None and args.local_cluster < 1:
        raise ConfigError(f"--local-cluster needs at least 1 worker, got {args.local_cluster}")
    options = with_overrides(SegmentOptions(), config_overrides(args))
    if on_cluster:
        from wsi_seg.cohort.distributed import import_distributed

        import_distributed()  # before any work: a one-line install hint when it is missing
        # distributed logs what wsi-seg reports itself (lost scheduler, workers killed at close):
        # -v shows its warnings and errors, -vv its info
        levels = [logging.CRITICAL, logging.WARNING, logging.INFO]
        logging.getLogger("distributed").setLevel(levels[min(args.verbose, 2)])
    with ExitStack() as held:
        # before the model loads: an output that must not be written, or one in use, fails at once
        if args.out is not None:
            check_output(args.out, options.overwrite)
            with output_lock(args.out):
                pass
        else:
            held.enter_context(cohort_lock(args.out_dir))
        return _run(args, options, on_cluster)


def _run(args: argparse.Namespace, options: SegmentOptions, on_cluster: bool) -> int:
    from wsi_seg.cohort.run import SlideOutcome, expand_inputs, run_cohort
    from wsi_seg.inference.runtime import resolve_device
    from wsi_seg.inference.segment import segment_slide
    from wsi_seg.model.checkpoint import load_checkpoint
    from wsi_seg.model.default import default_model_path

    def show_plan(plan: SegmentPlan) -> None:
        print(plan.describe(), flush=True)

    # on a cluster the workers load the model; the client only checks it and takes its sha256
    device = "cpu" if on_cluster else resolve_device(options.device)
    model = load_checkpoint(args.model if args.model is not None else default_model_path(), device=device)
    if args.out is not None:
        result = segment_slide(Path(args.slides[0]), args.out, model, options, on_plan=show_plan)
        print(result.summary(Path(args.slides[0]).name))
        if args.preview is not None:
            from wsi_seg.reports.slide_report import write_report

            write_report(result.out, args.preview, slide=args.slides[0])
            print(f"report: {args.preview}")
        return 0
    slides = expand_inputs(args.slides)

    def report(o: SlideOutcome) -> None:
        if o.status == "failed":
            print(f"wsi-seg: error: {o.error}", file=sys.stderr)
        elif o.status == "skipped":
            print(f"{Path(o.slide).name}: already segmented by this model, skipped ({o.out})")
        else:
            print(f"{Path(o.slide).name}: {o.patches} patches run, {o.seconds:.1f} s → {o.out}")

    if on_cluster:
        from wsi_seg.cohort.distributed import run_cohort_dask

        outcomes = run_cohort_dask(slides, args.out_dir, model, options, scheduler=args.scheduler,
                                   local_workers=args.local_cluster, report=report)
    else:
        outcomes = run_cohort(slides, args.out_dir, model, options, report=report)
    from wsi_seg.cohort.report import write_cohort_report

    html_path = write_cohort_report(args.out_dir, outcomes)
    failed = [o for o in outcomes if o.status == "failed"]
    done = sum(o.status == "done" for o in outcomes)
    skipped = sum(o.status == "skipped" for o in outcomes)
    print(f"{len(outcomes)} slides: {done} done, {skipped} skipped, {len(failed)} failed; "
          f"summary in {args.out_dir / 'wsi_seg_summary.csv'}, report in {html_path}")
    if failed:
        print(f"wsi-seg: {len(failed)} of {len(outcomes)} slides failed", file=sys.stderr)
        return 2
    return 0

