"""End-to-end ``segment`` throughput next to model-only throughput, measured in one run.

Model-only: the same network, batch size, device, precision and inference streams on
random uint8 patches already in memory (normalisation and CAM/softmax post-processing
included), and the model alone on one stream of every thread (``1-stream``). ``ratio`` holds
end to end to the faster of the two, the best the model alone does; ``vs 1-str`` to the
one-stream figure.
End-to-end: ``segment_slide`` on a generated demo slide (reading, tissue detection,
inference, stitching, pyramid), patches run / wall seconds.

    python benchmarks/segment_throughput.py                     # small + swin-t presets
    python benchmarks/segment_throughput.py --presets small --size 4096
    python benchmarks/segment_throughput.py --readers openslide,auto   # decoders side by side
    python benchmarks/segment_throughput.py --streams 1,auto           # one stream vs the default

Every configuration (streams × reader) of a preset runs once per repeat, end-to-end and
model-only alternating; medians are reported, ratios as medians of per-repeat ratios
(``e2e vs 1st``: end to end against the preset's first configuration in the same
repeat). The streams each row ran with are read back from its result's provenance. Ends
with ``ratio end_to_end/best_model_only = X.XX`` for the last row.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from wsi_seg.inference.allocator import pin_malloc_thresholds
from wsi_seg.inference.options import DEFAULT_CHUNK_PX
from wsi_seg.inference.runtime import resolve_runtime, torch_threads
from wsi_seg.inference.segment import SegmentOptions, segment_slide
from wsi_seg.inference.streams import InferenceStreams, run_batch
from wsi_seg.model import PsclNet, load_checkpoint, preset_config, save_checkpoint
from wsi_seg.result.format import read_provenance
from wsi_seg.synthetic import write_demo_slide


def model_only(net: PsclNet, device: torch.device, batch_size: int, n_patches: int, precision: str,
               streams: int = 1, threads: int | None = None) -> float:
    """Patches/s of the engine's batch step (``PsclNet.predict`` and the activations'
    conversion) on in-memory random patches (tissue patches of the slide ran at the same
    speed), on ``streams`` streams sharing ``threads`` CPU threads (None: the CPUs), as
    ``segment`` resolves them."""
    rt = resolve_runtime(str(device), precision, workers=0, batch_size=batch_size, threads=threads, streams=streams)
    p = net.cfg.patch_size_px
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, 3, p, p), dtype=torch.uint8, generator=gen).to(device)
    background = torch.zeros(batch_size, p, p, dtype=torch.bool, device=device)
    n_batches = max(2 * streams, n_patches // batch_size)
    with torch_threads(rt.torch_threads), InferenceStreams(streams) as pool:
        for k in range(streams):  # warm-up, every stream
            pool.put(k, run_batch, net, rt, images, background)
        pool.drain()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for k in range(n_batches):
            pool.put(k, run_batch, net, rt, images, background)
        pool.drain()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return n_batches * batch_size / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="small,swin-t")
    ap.add_argument("--stage", type=int, default=2, choices=[1, 2])
    ap.add_argument("--size", type=int, default=8192, help="demo slide side, px at 0.25 µm/px")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=None, help="patches per call (default: the engine's auto)")
    ap.add_argument("--workers", type=int, default=None, help="reader processes (default: the engine's auto)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--readers", default="auto", help="slide decoders to compare (--reader of segment)")
    ap.add_argument("--streams", default="auto", help="inference streams to compare (auto or N, comma-separated)")
    ap.add_argument("--chunks", default=str(DEFAULT_CHUNK_PX),
                    help="output chunk sizes to compare (--chunk-px of segment, comma-separated)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per preset; medians are reported")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for the model (default: the CPUs)")
    args = ap.parse_args()
    malloc = pin_malloc_thresholds()  # as the wsi-seg CLI runs (wsi_seg.inference.allocator)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        demo = write_demo_slide(tmp / "bench.tif", size_px=(args.size, args.size), seed=0)
        for preset in args.presets.split(","):
            torch.manual_seed(0)
            ckpt = save_checkpoint(PsclNet(preset_config(preset, stage=args.stage)), tmp / f"ck_{preset}")
            configs = []
            for streams in args.streams.split(","):
                n_streams = None if streams == "auto" else int(streams)
                rt = resolve_runtime(args.device, args.precision, workers=args.workers, batch_size=args.batch_size,
                                     threads=args.threads, streams=n_streams)
                for reader in args.readers.split(","):
                    for chunk in (int(c) for c in args.chunks.split(",")):
                        opts = SegmentOptions(device=str(rt.device), batch_size=args.batch_size, workers=args.workers,
                                              precision=args.precision, threads=args.threads, streams=n_streams,
                                              reader=reader, chunk_px=chunk, overwrite=True, progress=False)
                        # each configuration its own output: its provenance is read back below
                        configs.append((reader, rt, opts, [], tmp / f"out_{preset}_{len(configs)}.zarr"))
            model = load_checkpoint(ckpt, device=rt.device)
            segment_slide(demo.path, configs[0][4], model, configs[0][2])  # warm-up: imports, kernels
            # every configuration once per repeat, e2e and model-only alternating: a slow minute
            # of a shared machine hits all of them
            for _ in range(args.repeats):
                for reader, rt, opts, runs, out in configs:
                    res = segment_slide(demo.path, out, model, opts)
                    mo = model_only(model.net, rt.device, rt.batch_size, res.patches_run, args.precision,
                                    rt.streams, args.threads)
                    one = model_only(model.net, rt.device, rt.batch_size, res.patches_run, args.precision,
                                     1, args.threads)
                    runs.append((res, mo, one))
            first = configs[0][3]
            for reader, rt, opts, runs, _ in configs:
                res = sorted(runs, key=lambda r: r[0].patches_per_second)[len(runs) // 2][0]
                e2e = statistics.median(r.patches_per_second for r, _, _ in runs)
                # held to the fastest way of running the model alone: one stream, or this row's streams
                ratio = statistics.median(r.patches_per_second / max(m, o) for r, m, o in runs)
                ratio_one = statistics.median(r.patches_per_second / o for r, _, o in runs)
                vs_first = statistics.median(r.patches_per_second / f[0].patches_per_second for (r, _, _), f in zip(runs, first))
                mo = statistics.median(m for _, m, _ in runs)
                one = statistics.median(o for _, _, o in runs)
                used = read_provenance(res.out)["inference"]["reader"]
                name = used["used"] + (f" 1/{used['dct_reduction']}" if used.get("dct_reduction", 1) > 1 else "")
                ran = read_provenance(res.out)["inference"]  # what took effect, not what was asked
                rows.append((preset, f"{reader}={name}", f"{ran['streams']}×{ran['torch_threads']}",
                             read_provenance(res.out)["block_px"], res.patches_run,
                             res.seconds, e2e, mo, one, ratio, ratio_one, vs_first, res.timings))
    print(f"device {rt.device}, batch {rt.batch_size}, workers {rt.reader_workers}, "
          f"precision {args.precision} = {rt.precision}, CPUs {rt.cpus.cpus} ({rt.cpus.source}), "
          f"slide {args.size}² px @0.25 µm/px, median of {args.repeats} (ratios: median of per-run ratios); "
          f"malloc {malloc}")
    print(f"{'preset':>8} {'reader':>22} {'streams':>8} {'chunk':>6} {'patches':>8} {'wall s':>7} {'e2e p/s':>8} "
          f"{'model p/s':>10} {'1-stream':>9} {'ratio':>6} {'vs 1-str':>9} {'e2e vs 1st':>10}  split (s)")
    for preset, reader, st, chunk, n, sec, e2e, mo, one, ratio, ratio_one, vs_first, tm in rows:
        split = ", ".join(f"{k} {v:.1f}" for k, v in tm.items())
        print(f"{preset:>8} {reader:>22} {st:>8} {chunk:>6} {n:>8} {sec:>7.1f} {e2e:>8.2f} {mo:>10.2f} {one:>9.2f} {ratio:>6.2f} "
              f"{ratio_one:>9.2f} {vs_first:>10.2f}  {split}")
    print(f"ratio end_to_end/best_model_only = {rows[-1][9]:.2f}")


if __name__ == "__main__":
    main()
