"""The engine's ceiling: ``segment`` with a model that costs nothing, and where the time goes.

On a GPU the model is nearly free and the engine around it decides the speed. A null
model (``predict`` returns zeros at once) shows that regime on any machine. Printed, for
each number of reader processes: patches/s of the whole ``segment_slide`` call and of its
inference loop, and the split of one run measured piece by piece in this process:

- start-up: a ``wsi-seg segment --help`` process (imports, parser), and a whole
  ``wsi-seg segment`` command of the tiny preset minus the seconds its run reports;
- tissue: the thumbnail read and the tissue mask (``plan``); fingerprint: ``Slide.info``;
- plan: the reader's plan;
- read, seed: every block read in this process, with and without background seeding;
- assemble + write: the inference loop with the null model minus reading;
- pyramid: the rest of the call (``store.finish``).

    python benchmarks/engine_ceiling.py                      # 8192² demo slide, 0 and 1 reader processes
    python benchmarks/engine_ceiling.py --workers 0,1,2 --size 8192 --repeats 3
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import demo_slide, print_table, random_model, slide_arguments, work_folder
from reader_scaling import make_dataset, reader_throughput
from torch import nn

from wsi_seg.inference.allocator import pin_malloc_thresholds
from wsi_seg.inference.options import SegmentOptions
from wsi_seg.inference.reader import plan_reader
from wsi_seg.inference.segment import plan, segment_slide
from wsi_seg.model.checkpoint import LoadedModel
from wsi_seg.model.heads import PatchPrediction
from wsi_seg.slide.slide import Slide


class NullNet(nn.Module):
    """A network whose prediction costs nothing: zero activations, all background."""

    def __init__(self, real: nn.Module) -> None:
        super().__init__()
        self.cfg, self.head = real.cfg, real.head

    def predict(self, patches: torch.Tensor, background: Any = None, image_labels: Any = None,
                rules: Any = None) -> PatchPrediction:
        n, _, h, w = patches.shape
        return PatchPrediction(activations=torch.zeros(n, self.cfg.num_classes, h, w),
                               mask=torch.zeros(n, h, w, dtype=torch.uint8))


def _seconds(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def startup_seconds(slide_path: Path, checkpoint: Path, work: Path) -> tuple[float, float]:
    """(``wsi-seg segment --help`` wall s, a whole tiny-preset command's wall s minus its run's)."""
    cli = [sys.executable, "-c", "import sys; from wsi_seg.cli.main import main; sys.exit(main())"]
    help_s = _seconds(lambda: subprocess.run([*cli, "segment", "--help"], capture_output=True, check=True))
    out = work / "startup.zarr"
    t = time.perf_counter()
    p = subprocess.run([*cli, "segment", str(slide_path), "--out", str(out), "--model", str(checkpoint),
                        "--device", "cpu", "--no-progress", "--overwrite"], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    found = re.search(r"([\d.]+) s, [\d.]+ patches/s → ", p.stdout)  # "…, 2.8 s, 10.4 patches/s → out.zarr"
    return help_s, wall - float(found.group(1)) if found else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    slide_arguments(ap, size_px=8192, model=False)
    ap.add_argument("--workers", default="0,1", help="reader processes to compare (comma-separated)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reader", default="auto")
    args = ap.parse_args()
    malloc = pin_malloc_thresholds()
    with work_folder(args.work) as work:
        slide = demo_slide(work, 2048 if args.quick else args.size, args.tissue_fraction)
        tiny = random_model("tiny", work)
        null = LoadedModel(NullNet(tiny.net), tiny.config, tiny.path, tiny.sha256)
        rows, loops = [], {}
        for workers in (int(w) for w in args.workers.split(",")):
            options = SegmentOptions(device="cpu", workers=workers, reader=args.reader, overwrite=True, progress=False)
            segment_slide(slide.path, work / "null.zarr", null, options)  # warm-up
            runs = [segment_slide(slide.path, work / "null.zarr", null, options) for _ in range(args.repeats)]
            n = runs[0].patches_run
            whole = statistics.median(r.seconds for r in runs)
            loop = statistics.median(r.timings["inference"] for r in runs)
            loops[workers] = (runs, loop)
            rows.append([workers, n, whole, n / whole, loop, n / loop])
        print(f"{slide.size_px}² demo slide (tissue {args.tissue_fraction:g}) at 0.25 µm/px, null model at "
              f"{tiny.config.mpp} µm/px, {tiny.config.patch_size_px}-px patches, CPU, reader {args.reader}, "
              f"{torch.get_num_threads()} torch threads, median of {args.repeats}; malloc {malloc}")
        print_table(["reader procs", "patches", "whole s", "whole p/s", "loop s", "loop p/s"], rows)

        options = SegmentOptions(device="cpu", workers=0, reader=args.reader, overwrite=True, progress=False)
        runs, loop = loops[min(loops)]
        with Slide(slide.path) as s:
            fingerprint = statistics.median(_seconds(lambda: Slide(slide.path).info()) for _ in range(args.repeats))
            cfg = tiny.config
            tissue = statistics.median(_seconds(lambda: plan(s, cfg.mpp, cfg.patch_size_px, options))
                                       for _ in range(args.repeats))
            thumb = statistics.median(_seconds(lambda: s.thumbnail(max(options.tissue.thumbnail_mpp, s.mpp)))
                                      for _ in range(args.repeats))
            reader_plan = statistics.median(_seconds(lambda: plan_reader(args.reader, s, cfg.mpp, torch.device("cpu")))
                                            for _ in range(args.repeats))
        # reading alone, as reader_scaling.py measures it (the BlockReader segment builds)
        plain, n_read = make_dataset(slide.path, seeding=False)
        seeded, _ = make_dataset(slide.path, seeding=True)
        cpu = torch.device("cpu")
        read = n_read / max(reader_throughput(plain, args.reader, 0, cpu) for _ in range(args.repeats))
        read_seed = n_read / max(reader_throughput(seeded, args.reader, 0, cpu) for _ in range(args.repeats))
        whole = statistics.median(r.seconds for r in runs)
        pyramid = statistics.median(r.timings["pyramid"] for r in runs)
        help_s, startup = startup_seconds(slide.path, tiny.path, work)
        outside = whole - loop
        split = [
            ["start-up: `segment --help` process", help_s, ""],
            ["start-up: command wall − its run (imports, checkpoint, checks)", startup, ""],
            ["tissue (thumbnail + mask)", tissue, f"of which the thumbnail {thumb:.2f} s"],
            ["fingerprint (Slide.info)", fingerprint, ""],
            ["reader plan", reader_plan, ""],
            ["read, in-process", read, f"{n_read / read:.0f} patches/s"],
            ["background seeding", read_seed - read, f"{n_read / max(read_seed - read, 1e-9):.0f} patches/s"],
            ["assemble + write (loop − read − seed)", max(loop - read_seed, 0.0), ""],
            ["pyramid + finish", pyramid, ""],
            ["whole call outside the loop", outside, "target ≤ 1.0 s"],
        ]
        print()
        print_table(["part (workers 0)", "s", "note"], split)
        print(f"null-model loop = {n_read / loop:.0f} patches/s (target ≥ 300 on 2 cores); "
              f"whole call = {runs[0].patches_run / whole:.0f} patches/s")


if __name__ == "__main__":
    main()
