"""``wsi-seg segment``: one slide to ``--out``, or many slides into ``--out-dir``."""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from wsi_seg.errors import ConfigError
from wsi_seg.inference.options import DEFAULT_MAX_OUTPUT_PX, READERS, SegmentOptions
from wsi_seg.slide.tissue import TissueParams

if TYPE_CHECKING:
    from wsi_seg.inference.segment import SegmentPlan

log = logging.getLogger(__name__)


def _pixel_count(text: str) -> int:
    """A pixel count such as 4e10 (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value >= 1 and value < 2**62):
        raise argparse.ArgumentTypeError(f"expected a number of pixels ≥ 1 such as 4e10, got {text!r}")
    return int(value)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment whole slides into OME-Zarr masks and activation maps")
    p.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files (.svs, .tif, .ndpi, .mrxs, …), quoted glob patterns, or a CSV manifest (column 'slide')")
    dest = p.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", type=Path, metavar="ZARR", help="output .zarr for a single slide")
    dest.add_argument("--out-dir", type=Path, metavar="DIR", help="folder for one <slide>.zarr per slide")
    p.add_argument("--model", type=Path, default=None, metavar="CKPT",
                   help="checkpoint directory or .safetensors (default: the bundled demo model)")
    p.add_argument("--device", default="auto", metavar="DEVICE", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="patches per model call (default: 2 on CPU, where small batches ran fastest; 32 on CUDA)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="slide-reading worker processes (default: 0 = in-process on CPU, where the model uses "
                        "every core; on CUDA one per spare CPU this process may use, up to 8)")
    p.add_argument("--streams", type=int, default=None, metavar="N",
                   help="batches the model runs at once, each on its own thread (default: on CPU one per CPU this "
                        "process may use, up to 8, with one torch thread each, where the model alone ran 1.3–1.6× "
                        "as fast as on one stream of every thread on 2 cores; 1 on CUDA)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads the model uses in all, shared by its streams (default: the CPUs this process "
                        "may use: affinity, cgroup quota, SLURM)")
    p.add_argument("--overlap", type=int, default=SegmentOptions.overlap_px, metavar="PX",
                   help="patch overlap in px at the model resolution; centre-cropped (default: %(default)s)")
    p.add_argument("--mpp", type=float, default=None, metavar="UM",
                   help="level-0 µm/px of the slide: for slides whose metadata lacks it or gives an implausible "
                        "value, and for plain PNG/JPEG/TIFF images, read as one level (default: from the "
                        "slide's metadata)")
    p.add_argument("--allow-upsampling", action="store_true",
                   help="allow a model µm/px more than 2× finer than the slide's level 0")
    p.add_argument("--max-output-px", type=_pixel_count, default=DEFAULT_MAX_OUTPUT_PX, metavar="N",
                   help="refuse a slide whose output at the model's µm/px would exceed N px "
                        "(default: %(default).0e, a 200,000² px output)")
    p.add_argument("--tissue-threshold", type=float, default=TissueParams.min_tissue_fraction, metavar="F",
                   help="minimum tissue fraction of a patch to run it (default: %(default)s)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast precision (default: auto = bf16 where the device computes it natively: CUDA GPUs "
                        "with bf16, CPUs with AVX512-BF16/AMX; fp16 on older CUDA GPUs; else fp32)")
    p.add_argument("--preview", type=Path, default=None, metavar="REPORT.png|.html",
                   help="with --out: also write the slide report (overlay, legend, per-class areas) (default: none)")
    p.add_argument("--reader", default="auto", choices=list(READERS),
                   help="slide decoder: openslide (any format); jpeg-cpu (JPEG tiles of SVS/tiled TIFF decoded at "
                        "1/2, 1/4, 1/8 scale when the level is that much finer than the model); jpeg-device "
                        "(tiles decoded in batches on the model's device, nvJPEG on CUDA); auto: jpeg-device on "
                        "CUDA, jpeg-cpu on the CPU where the slide has JPEG tiles, else openslide (default: auto)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs; corrections saved in napari are carried over onto the new result "
                        "when it is of the same slide and pixel grid, else refused")
    p.add_argument("--discard-corrections", action="store_true",
                   help="with --overwrite: replace a corrected result without carrying its corrections over")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
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
    options = SegmentOptions(
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        streams=args.streams,
        threads=args.threads,
        overlap_px=args.overlap,
        mpp=args.mpp,
        precision=args.precision,
        reader=args.reader,
        tissue=TissueParams(min_tissue_fraction=args.tissue_threshold),
        overwrite=args.overwrite,
        discard_corrections=args.discard_corrections,
        progress=not args.no_progress,
        allow_upsampling=args.allow_upsampling,
        max_output_px=args.max_output_px,
    )
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
            check_output(args.out, args.overwrite)
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
    device = "cpu" if on_cluster else resolve_device(args.device)
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

