"""How ``segment`` scales: wall time vs tissue area, peak memory vs slide size.

(a) Tissue area: square demo slides of one size whose generator ``tissue_fraction``
    differs (ground-truth tissue share and the tissue patches actually run are both
    reported); each is segmented ``--repeats`` times, the slides interleaved so other
    load hits all alike; the median wall time is used. Proportional scaling means a flat
    time per patch: the last column (wall/patch relative to the first slide) stays ≈ 1,
    and the fitted fixed cost (wall = fixed + per-patch · patches) is small.
(b) Slide size: demo slides of growing side (same tissue fraction), each segmented in a
    fresh process; peak RSS of the main process (its VmHWM) plus that of its DataLoader
    reader worker (RUSAGE_CHILDREN maxrss), read in the child, and the RSS sum over the
    process tree sampled with psutil. Target: largest/smallest ≤ 1.2. The row
    "imports+model" is the same child without the segmentation: the floor that does
    not depend on the slide. The first run generates the slides (the 50000² one takes
    minutes; its time and the generator's peak RSS are reported); later runs with the
    same ``--work`` reuse them.

Default networks are random-init stage-2 ``small`` (a) and ``tiny`` at a coarse µm/px
(b), so the figures measure the engine, not the swin-t. Slides go into ``--work``
(kept, reused on the next run) or a temporary folder. Examples::

    python benchmarks/scaling.py --work /tmp/wsi_bench             # both parts
    python benchmarks/scaling.py --work /tmp/wsi_bench --part rss --sizes 10000,25000,50000
    python benchmarks/scaling.py --quick                           # smoke run, < 1 min
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    GeneratedSlide,
    demo_slide,
    engine_precision,
    engine_workers,
    ground_truth_tissue,
    peak_rss_mib,
    print_table,
    random_model,
    slide_name,
    work_folder,
)

from wsi_seg.inference.segment import SegmentOptions, SegmentResult, segment_slide  # noqa: E402
from wsi_seg.model import load_checkpoint  # noqa: E402

# ---------------------------------------------------------------- (a) tissue area


@dataclass
class AreaRow:
    """One slide of part (a) and the runs it got."""

    slide: GeneratedSlide
    gt_tissue: float
    results: list[SegmentResult] = field(default_factory=list)

    @property
    def patches(self) -> int:
        return self.results[0].patches_run

    @property
    def grid_patches(self) -> int:
        r = self.results[0]
        return r.patches_run + r.patches_skipped

    @property
    def wall(self) -> float:
        return statistics.median(r.seconds for r in self.results)

    def split(self, key: str) -> float:
        return statistics.median(r.timings.get(key, 0.0) for r in self.results)


def run_tissue_area(args: argparse.Namespace, work: Path) -> None:
    """Part (a): segment slides of one size and growing tissue area, interleaved."""
    fractions = [float(f) for f in args.fractions.split(",")]
    rows = []
    for f in fractions:
        slide = demo_slide(work, args.size, f, args.mpp, args.seed)
        print(f"slide {slide.path.name}: {'reused' if slide.reused else f'generated in {slide.seconds:.1f} s'}",
              flush=True)
        rows.append(AreaRow(slide, ground_truth_tissue(slide)))
    model = random_model(args.preset, work, stage=2)
    opts = SegmentOptions(device=args.device, batch_size=args.batch_size, workers=args.workers,
                          precision=args.precision, overwrite=True, progress=False)
    for rep in range(args.repeats):
        for row in rows:
            res = segment_slide(row.slide.path, work / "scaling_area_out.zarr", model, opts)
            row.results.append(res)
            print(f"  repeat {rep + 1}: tissue {row.slide.tissue_fraction:g}: {res.patches_run} patches, "
                  f"{res.seconds:.1f} s", flush=True)
    ref = rows[0]
    ref_per_patch = ref.wall / ref.patches
    print(f"\n(a) wall time vs tissue area: {args.size}² px at {args.mpp} µm/px, preset {args.preset} "
          f"(random init, stage 2), batch {args.batch_size}, {engine_workers(args.device, args.workers)} reader worker(s), "
          f"precision {args.precision} = {engine_precision(args.device, args.precision)}, "
          f"{torch.get_num_threads()} torch threads, median of {args.repeats}")
    print_table(
        ["tissue_fraction", "gt tissue %", "patches", "grid %", "wall s", "tissue s", "infer s", "pyramid s",
         "s/1000 patches", "wall/patch rel."],
        [[f"{r.slide.tissue_fraction:g}", f"{100 * r.gt_tissue:.1f}", r.patches,
          f"{100 * r.patches / r.grid_patches:.1f}", r.wall, r.split("tissue"), r.split("inference"),
          r.split("pyramid"), 1000 * r.wall / r.patches, (r.wall / r.patches) / ref_per_patch] for r in rows],
    )
    n = np.array([r.patches for r in rows], float)
    wall = np.array([r.wall for r in rows])
    if len(rows) >= 2 and np.ptp(n) > 0:
        slope, fixed = np.polyfit(n, wall, 1)
        print(f"fit wall = {fixed:.2f} s fixed + {1000 * slope:.1f} ms/patch")
    last = rows[-1]
    pair = f"{last.slide.tissue_fraction:g}/{ref.slide.tissue_fraction:g}"
    print(f"ratio patches {pair} = {last.patches / ref.patches:.2f}, "
          f"ratio wall = {last.wall / ref.wall:.2f}, "
          f"ratio wall/patch = {(last.wall / last.patches) / ref_per_patch:.2f} (1.00 = proportional)")


# ---------------------------------------------------------------- (b) peak RSS vs slide size


def child_main(spec: dict) -> None:
    """In a fresh process: segment a slide (or only load the model); print one JSON line."""
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    model = load_checkpoint(spec["model"])
    out: dict = {}
    if spec["task"] == "segment":
        opts = SegmentOptions(device=spec["device"], batch_size=spec["batch_size"], workers=spec["workers"],
                              precision=spec["precision"], overwrite=True, progress=False)
        res = segment_slide(spec["slide"], spec["out"], model, opts)
        out = {"patches": res.patches_run, "seconds": res.seconds, "timings": res.timings}
    own, children = peak_rss_mib()
    print(json.dumps({**out, "rss_self_mib": own, "rss_children_mib": children}))


def _tree_rss_mib(proc: "psutil.Process") -> float:  # noqa: F821
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def run_child(spec: dict, poll_s: float = 0.02) -> dict:
    """Run ``child_main(spec)`` (or, for ``generate``, ``demo_slide`` alone) in a fresh
    interpreter; adds ``rss_tree_mib``, the peak
    of the sampled RSS sum over the child and its descendants (None without psutil)."""
    if spec["task"] == "generate":  # only the generator's imports (no torch)
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
                "from pathlib import Path; from common import demo_slide; "
                f"demo_slide(Path({spec['work']!r}), {spec['size']}, {spec['fraction']}, {spec['mpp']}, "
                f"{spec['seed']}, fresh_process=True); print('{{}}')")
        cmd = [sys.executable, "-c", code]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak: list[float] = [0.0]
    try:
        import psutil

        ps = psutil.Process(proc.pid)
        own_cmdline = psutil.Process().cmdline()

        def poll() -> None:
            started = False  # until exec, the forked child still holds (and counts) our pages
            while proc.poll() is None:
                try:
                    started = started or ps.cmdline() != own_cmdline
                    if started:
                        peak[0] = max(peak[0], _tree_rss_mib(ps))
                except psutil.Error:
                    break
                time.sleep(poll_s)

        poller: threading.Thread | None = threading.Thread(target=poll, daemon=True)
        poller.start()
    except ImportError:
        poller = None
    stdout, stderr = proc.communicate()
    if poller is not None:
        poller.join()
    if proc.returncode:
        raise RuntimeError(f"child {spec['task']} failed (exit {proc.returncode}):\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["rss_tree_mib"] = peak[0] if poller is not None else None
    return result


def run_rss(args: argparse.Namespace, work: Path) -> None:
    """Part (b): generate slides of growing size, segment each in a fresh process."""
    sizes = [int(s) for s in args.sizes.split(",")]
    gens = {}
    for size in sizes:
        stem = slide_name(size, args.rss_fraction, args.mpp, args.seed)
        reused = (work / f"{stem}.done.json").is_file()
        print(f"slide {size}² px: {'reusing' if reused else 'generating'} {stem}.tif …", flush=True)
        if not reused:  # in a fresh process, so the marker records the generator's own peak RSS
            run_child({"task": "generate", "work": str(work), "size": size, "fraction": args.rss_fraction,
                       "mpp": args.mpp, "seed": args.seed})
        meta = json.loads((work / f"{stem}.done.json").read_text())
        gens[size] = {**meta, "reused": reused, "path": work / f"{stem}.tif"}
        print(f"  {meta['seconds']:.1f} s to generate, {meta['bytes'] / 2**20:.1f} MiB on disk", flush=True)
    model = random_model(args.rss_preset, work, stage=2, mpp=args.rss_model_mpp)
    base = {"task": "segment", "model": str(model.path), "device": args.device, "batch_size": args.batch_size,
            "workers": args.workers, "precision": args.precision, "threads": args.threads}
    floor = run_child({**base, "task": "model_only"})
    results = {}
    for size in sizes:
        results[size] = run_child({**base, "slide": str(gens[size]["path"]), "out": str(work / "scaling_rss_out.zarr")})
        r = results[size]
        print(f"  {size}² px: {r['patches']} patches, {r['seconds']:.1f} s, tree peak {r['rss_tree_mib']:.0f} MiB",
              flush=True)

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.0f}"

    print(f"\n(b) peak RSS vs slide size: tissue_fraction {args.rss_fraction:g}, {args.mpp} µm/px slides, preset "
          f"{args.rss_preset} (random init, stage 2) at {args.rss_model_mpp} µm/px, batch {args.batch_size}, "
          f"{engine_workers(args.device, args.workers)} reader worker(s), precision {engine_precision(args.device, args.precision)}; "
          "each segmentation in a fresh process")
    print_table(
        ["slide px", "gen s", "gen peak MiB", "patches", "wall s", "tree peak MiB", "main MiB", "worker MiB",
         "main+worker MiB"],
        [["imports+model", "", "", 0, "", fmt(floor["rss_tree_mib"]), fmt(floor["rss_self_mib"]), "", ""]]
        + [[f"{s}²", f"{gens[s]['seconds']:.0f}" + (" (cached)" if gens[s]["reused"] else ""),
            fmt(gens[s].get("peak_rss_mib")), results[s]["patches"], results[s]["seconds"],
            fmt(results[s]["rss_tree_mib"]), fmt(results[s]["rss_self_mib"]), fmt(results[s]["rss_children_mib"]),
            fmt(results[s]["rss_self_mib"] + results[s]["rss_children_mib"])] for s in sizes],
    )
    small, large = results[sizes[0]], results[sizes[-1]]
    print("main: VmHWM of the main process; worker: RUSAGE_CHILDREN maxrss (largest reader worker); pages the "
          "forked worker shares with the main process count in both. tree peak: RSS sum over the process tree, "
          "sampled every 20 ms (can miss short peaks in short runs)")
    both = lambda r: r["rss_self_mib"] + r["rss_children_mib"]  # noqa: E731
    print(f"ratio main+worker {sizes[-1]}²/{sizes[0]}² = {both(large) / both(small):.2f} (target ≤ 1.2), "
          f"main only = {large['rss_self_mib'] / small['rss_self_mib']:.2f}")
    if small["rss_tree_mib"]:
        print(f"ratio tree peak {sizes[-1]}²/{sizes[0]}² = {large['rss_tree_mib'] / small['rss_tree_mib']:.2f}")


# ---------------------------------------------------------------- main


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child_main(json.loads(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["area", "rss", "both"], default="both")
    ap.add_argument("--work", type=Path, default=None,
                    help="folder for slides (kept and reused); default: a temp folder")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny slides and few repeats (< 1 min)")
    ap.add_argument("--mpp", type=float, default=0.25, help="level-0 µm/px of the generated slides")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=None, help="reader processes (default: the engine's auto)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    g = ap.add_argument_group("(a) tissue area")
    g.add_argument("--size", type=int, default=6144, help="slide side, px")
    g.add_argument("--fractions", default="0.1,0.3,0.5,0.7,0.9", help="generator tissue_fraction values")
    g.add_argument("--preset", default="small")
    g.add_argument("--repeats", type=int, default=2)
    g = ap.add_argument_group("(b) peak RSS")
    g.add_argument("--sizes", default="10000,25000,50000", help="slide sides, px (smallest first)")
    g.add_argument("--rss-fraction", type=float, default=0.1)
    g.add_argument("--rss-preset", default="tiny")
    g.add_argument("--rss-model-mpp", type=float, default=2.0, help="model µm/px (coarse: few patches)")
    args = ap.parse_args()
    if args.quick:
        args.size, args.fractions, args.repeats = 2048, "0.1,0.9", 1
        args.sizes = "2048,4096"
    if args.threads:
        torch.set_num_threads(args.threads)
    print("networks have random weights: the figures time the engine (reading, tissue, inference, writing), "
          "not a trained model")
    t0 = time.perf_counter()
    with work_folder(args.work) as work:
        if args.part in ("area", "both"):
            run_tissue_area(args, work)
        if args.part in ("rss", "both"):
            if args.part == "both":
                print()
            run_rss(args, work)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
