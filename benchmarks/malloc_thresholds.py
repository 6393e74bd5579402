"""What pinning glibc's malloc thresholds (``wsi_seg.inference.allocator``) does to a segment run.

The setting belongs to a process, so each side runs in processes of its own, alternating
(pinned, default, pinned, …: a slow minute of a shared machine hits both). Each child
segments a generated demo slide (after a warm-up run) and runs the model alone on the
same patches, and reports throughput, minor page faults, kernel CPU time and peak RSS.

    python benchmarks/malloc_thresholds.py                        # small preset, 6144² slide, 5 pairs
    python benchmarks/malloc_thresholds.py --preset swin-t --size 4096 --pairs 2

Printed: medians per side, then pinned/default as the median of per-pair ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import demo_slide, peak_rss_mib, print_table, random_model, work_folder

from wsi_seg.inference.allocator import OFF_VARIABLE, USER_VARIABLES

SIDES = {"pinned": {}, "default": {OFF_VARIABLE: "default"}}


def child(slide: Path, preset: str, folder: Path, repeats: int) -> dict:
    """One side's figures, measured in this process (the thresholds as the CLI sets them)."""
    import torch
    from segment_throughput import model_only

    from wsi_seg.inference.allocator import pin_malloc_thresholds
    from wsi_seg.inference.runtime import resolve_runtime
    from wsi_seg.inference.segment import SegmentOptions, segment_slide

    state = pin_malloc_thresholds()
    model = random_model(preset, folder)
    rt = resolve_runtime("cpu")
    options = SegmentOptions(device="cpu", overwrite=True, progress=False)
    out = folder / f"malloc_{os.getpid()}.zarr"
    segment_slide(slide, out, model, options)  # warm-up: imports, first calls
    runs = []
    for _ in range(repeats):
        before, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        res = segment_slide(slide, out, model, options)
        after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t
        alone = model_only(model.net, torch.device("cpu"), rt.batch_size, res.patches_run, "auto", rt.streams)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        runs.append({"e2e": res.patches_per_second, "model": alone,
                     "faults_per_patch": (after.ru_minflt - before.ru_minflt) / res.patches_run,
                     "kernel_share": (after.ru_stime - before.ru_stime) / cpu, "cpu_busy": cpu / (wall * rt.cpus.cpus)})
    shutil.rmtree(out, ignore_errors=True)
    return {"state": state, "rss_mib": peak_rss_mib()[0],
            **{k: statistics.median(r[k] for r in runs) for k in runs[0]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--size", type=int, default=6144, help="demo slide side, px at 0.25 µm/px")
    ap.add_argument("--pairs", type=int, default=5, help="processes per side")
    ap.add_argument("--repeats", type=int, default=2, help="runs per process; their median counts")
    ap.add_argument("--work", type=Path, default=None, help="folder for the slide (kept and reused)")
    ap.add_argument("--quick", action="store_true", help="smoke run (< 1 min)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.size, args.pairs, args.repeats = 2048, 1, 1
    with work_folder(args.work) as work:
        slide = demo_slide(work, args.size)
        if args.child:
            print(json.dumps(child(slide.path, args.preset, work, args.repeats)))
            return
        env = {k: v for k, v in os.environ.items() if k not in (*USER_VARIABLES, OFF_VARIABLE)}
        cmd = [sys.executable, __file__, "--child", "--preset", args.preset, "--size", str(args.size),
               "--repeats", str(args.repeats), "--work", str(work)]
        results: dict[str, list[dict]] = {side: [] for side in SIDES}
        for _ in range(args.pairs):
            for side, extra in SIDES.items():
                done = subprocess.run(cmd, env={**env, **extra}, capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"child ({side}) failed:\n{done.stderr[-3000:]}")
                results[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
    rows = []
    for side, rs in results.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "state"}
        rows.append((side, f"{med['e2e']:.2f}", f"{med['model']:.2f}",
                     f"{statistics.median(r['e2e'] / r['model'] for r in rs):.2f}",
                     f"{med['faults_per_patch']:.0f}", f"{100 * med['kernel_share']:.1f} %",
                     f"{100 * med['cpu_busy']:.0f} %", f"{med['rss_mib']:.0f}"))
    print(f"preset {args.preset}, {args.size}² slide, CPU, {args.pairs} processes per side × {args.repeats} runs; "
          f"pinned = {results['pinned'][0]['state']!r}")
    print_table(["malloc", "e2e p/s", "model p/s", "ratio", "faults/patch", "kernel CPU", "CPU busy", "peak RSS MiB"], rows)
    for key, name in (("e2e", "end to end"), ("model", "model alone"), ("rss_mib", "peak RSS")):
        pair = statistics.median(p[key] / d[key] for p, d in zip(results["pinned"], results["default"]))
        print(f"pinned/default, {name}: {pair:.2f}×")


if __name__ == "__main__":
    main()
