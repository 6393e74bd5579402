"""The engine's ceiling: ``segment`` with a model that costs nothing, and where the time goes.

On a GPU the model is nearly free and the engine around it decides the speed. A null
model (``predict`` returns zeros at once) shows that regime on any machine. Printed:

- the scaling curve: patches/s of the whole ``segment_slide`` call and of its inference
  loop, per number of reader processes (``--workers``) and, without reader processes,
  per number of reading threads (``--read-threads``); each configuration in a fresh
  process (``null_model_run.py``);
- with ``--before CHECKOUT``: the same runs with another checkout's engine (same slide,
  same script, configurations interleaved), before → after side by side;
- the split of one run measured piece by piece in this process: start-up (a
  ``wsi-seg segment --help`` process; a whole ``wsi-seg segment`` command of the tiny
  preset minus the seconds its run reports), tissue (thumbnail + mask), fingerprint,
  the reader's plan, reading and seeding alone (every block, this process, as
  ``segment`` reads them), assembling + writing (the loop minus reading), pyramid.

    python benchmarks/engine_ceiling.py                      # 8192² demo slide
    python benchmarks/engine_ceiling.py --workers 0,1,2 --read-threads 1,2 --repeats 3
    git worktree add /tmp/before 794c03c && python benchmarks/engine_ceiling.py --before /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import demo_slide, print_table, random_model, slide_arguments, work_folder
from null_model_run import null_model
from reader_scaling import make_dataset, reader_throughput

from wsi_seg.inference.allocator import pin_malloc_thresholds
from wsi_seg.inference.options import SegmentOptions
from wsi_seg.inference.reader import plan_reader
from wsi_seg.inference.runtime import available_cpus
from wsi_seg.inference.segment import plan, segment_slide
from wsi_seg.slide.slide import Slide

HERE = Path(__file__).resolve().parent


def null_runs(slide: Path, engine: Path, workers: int, read_threads: int | None, repeats: int,
              reader: str) -> list[dict[str, Any]]:
    """``repeats`` null-model runs of ``engine`` (a checkout's root) in a fresh process."""
    cmd = [sys.executable, str(HERE / "null_model_run.py"), str(slide), "--workers", str(workers),
           "--repeats", str(repeats), "--reader", reader]
    if read_threads is not None:
        cmd += ["--read-threads", str(read_threads)]
    env = {**os.environ, "PYTHONPATH": str(engine)}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=engine)
    if p.returncode != 0:
        raise SystemExit(f"{engine}: null-model run failed: {p.stderr.strip().splitlines()[-1:]}")
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


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
    ap.add_argument("--workers", default="0,1,2", help="reader processes to compare (comma-separated)")
    ap.add_argument("--read-threads", default=None,
                    help="in-process reading threads to compare, without reader processes (default: 1 … the CPUs)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reader", default="auto")
    ap.add_argument("--levels", type=int, default=None,
                    help="pyramid levels of the demo slide (default 4× apart down to < 1024 px; 1: level 0 only, "
                         "so the thumbnail comes from full resolution)")
    ap.add_argument("--before", type=Path, default=None,
                    help="another checkout of wsi-seg (e.g. a git worktree of an older commit): its engine runs too")
    args = ap.parse_args()
    malloc = pin_malloc_thresholds()
    cpus = available_cpus().cpus
    here = HERE.parent
    threads = [int(t) for t in args.read_threads.split(",")] if args.read_threads else list(range(1, cpus + 1))
    configs = [(0, t) for t in threads] + [(int(w), None) for w in args.workers.split(",") if int(w) > 0]
    with work_folder(args.work) as work:
        slide = demo_slide(work, 2048 if args.quick else args.size, args.tissue_fraction, levels=args.levels)
        tiny = random_model("tiny", work)
        rows, before_rows = [], []
        for workers, read_threads in configs:
            engines = [here] if args.before is None else [args.before.resolve(), here]
            for engine in engines:  # interleaved: before and after of one configuration back to back
                runs = null_runs(slide.path, engine, workers, read_threads, args.repeats, args.reader)
                n = runs[0]["patches"]
                whole = statistics.median(r["whole_s"] for r in runs)
                loop = statistics.median(r["loop_s"] for r in runs)
                recorded = runs[0]["read_threads"]  # from the run's provenance: what took effect
                row = [runs[0]["reader_workers"], recorded if recorded is not None else "-", n, whole, n / whole,
                       loop, n / loop]
                (rows if engine == here else before_rows).append(row)
        with Slide(slide.path) as s:
            levels = " × ".join(f"{w}²" if w == h else f"{w}×{h}" for w, h in s.level_dimensions)
        print(f"{slide.size_px}² demo slide (levels {levels}, tissue {args.tissue_fraction:g}) at 0.25 µm/px, null model at "
              f"{tiny.config.mpp} µm/px, {tiny.config.patch_size_px}-px patches, CPU, reader {args.reader}, "
              f"{cpus} CPUs, median of {args.repeats}, each configuration in a fresh process; malloc {malloc}")
        headers = ["reader procs", "read threads", "patches", "whole s", "whole p/s", "loop s", "loop p/s"]
        print_table(headers, rows)
        if before_rows:
            print(f"\nbefore ({args.before}) → after ({here}), same slide and configurations (reader processes "
                  "and reading threads as the after run's provenance records them; an engine without reading "
                  "threads reads on one):")
            print_table(["reader procs", "read threads", "whole p/s before", "after", "×", "loop p/s before", "after", "×"],
                        [[a[0], a[1], b[4], a[4], f"{a[4] / b[4]:.2f}", b[6], a[6], f"{a[6] / b[6]:.2f}"]
                         for a, b in zip(rows, before_rows)])

        options = SegmentOptions(device="cpu", workers=0, reader=args.reader, overwrite=True, progress=False)
        null = null_model()
        segment_slide(slide.path, work / "null.zarr", null, options)  # warm-up
        runs = [segment_slide(slide.path, work / "null.zarr", null, options) for _ in range(args.repeats)]
        loop = statistics.median(r.timings["inference"] for r in runs)
        with Slide(slide.path) as s:
            fingerprint = statistics.median(_seconds(lambda: Slide(slide.path).info()) for _ in range(args.repeats))
            cfg = tiny.config
            tissue = statistics.median(_seconds(lambda: plan(s, cfg.mpp, cfg.patch_size_px, options))
                                       for _ in range(args.repeats))
            thumb = statistics.median(_seconds(lambda: s.thumbnail(max(options.tissue.thumbnail_mpp, s.mpp)))
                                      for _ in range(args.repeats))
            reader_plan = statistics.median(_seconds(lambda: plan_reader(args.reader, s, cfg.mpp, torch.device("cpu")))
                                            for _ in range(args.repeats))
        # reading alone on one thread, as reader_scaling.py measures it (the BlockReader segment builds)
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
            ["read, in-process, one reading thread", read, f"{n_read / read:.0f} patches/s"],
            ["background seeding", read_seed - read, f"{n_read / max(read_seed - read, 1e-9):.0f} patches/s"],
            ["assemble + write (loop − read − seed)", max(loop - read_seed, 0.0), ""],
            ["pyramid + finish", pyramid, ""],
            ["whole call outside the loop", outside, "target ≤ 1.0 s"],
        ]
        print()
        print_table(["part (workers 0, default threads)", "s", "note"], split)
        print(f"null-model loop = {n_read / loop:.0f} patches/s (target ≥ 300 on 2 cores); "
              f"whole call = {runs[0].patches_run / whole:.0f} patches/s")


if __name__ == "__main__":
    main()
