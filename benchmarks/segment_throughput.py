"""End-to-end ``segment`` throughput next to model-only throughput, measured in one run.

Model-only: the same network, batch size, device and precision on random uint8
patches already in memory (normalisation and CAM/softmax post-processing included).
End-to-end: ``segment_slide`` on a generated demo slide (reading, tissue detection,
inference, stitching, pyramid), patches run / wall seconds.

    python benchmarks/segment_throughput.py                     # small + swin-t presets
    python benchmarks/segment_throughput.py --presets small --size 4096
    python benchmarks/segment_throughput.py --readers openslide,auto   # decoders side by side

Each preset × reader runs ``--repeats`` times, end-to-end and model-only alternating;
medians are reported. Ends with ``ratio end_to_end/model_only = X.XX`` for the last row.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from wsi_seg.model import PsclNet, load_checkpoint, preset_config, save_checkpoint
from wsi_seg.result import read_provenance
from wsi_seg.runtime import autocast, available_cpus, resolve_batch_size, resolve_device, resolve_precision, resolve_workers
from wsi_seg.segment import SegmentOptions, segment_slide
from wsi_seg.synthetic import write_demo_slide


def model_only(net: PsclNet, device: torch.device, batch_size: int, n_patches: int, precision: str) -> float:
    """Patches/s of PsclNet.predict on in-memory random patches."""
    p = net.cfg.patch_size_px
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, 3, p, p), dtype=torch.uint8, generator=gen).to(device)
    background = torch.zeros(batch_size, p, p, dtype=torch.bool, device=device)
    n_batches = max(2, n_patches // batch_size)
    with torch.inference_mode(), autocast(device, precision):
        net.predict(images, background)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n_batches):
            pred = net.predict(images, background)
            pred.mask.cpu()
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
    ap.add_argument("--repeats", type=int, default=3, help="runs per preset; medians are reported")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.batch_size = resolve_batch_size(device, args.batch_size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        demo = write_demo_slide(tmp / "bench.tif", size_px=(args.size, args.size), seed=0)
        for preset in args.presets.split(","):
            torch.manual_seed(0)
            ckpt = save_checkpoint(PsclNet(preset_config(preset, stage=args.stage)), tmp / f"ck_{preset}")
            model = load_checkpoint(ckpt, device=device)
            for reader in args.readers.split(","):
                opts = SegmentOptions(device=str(device), batch_size=args.batch_size, workers=args.workers,
                                      precision=args.precision, reader=reader, overwrite=True, progress=False)
                runs = []  # e2e and model-only alternate, so a slow phase of a shared machine hits both
                for _ in range(args.repeats):
                    res = segment_slide(demo.path, tmp / f"out_{preset}.zarr", model, opts)
                    mo = model_only(model.net, device, args.batch_size, res.patches_run, args.precision)
                    runs.append((res, mo))
                res, _ = sorted(runs, key=lambda r: r[0].patches_per_second)[len(runs) // 2]
                e2e = statistics.median(r.patches_per_second for r, _ in runs)
                mo = statistics.median(m for _, m in runs)
                used = read_provenance(res.out)["inference"]["reader"]
                name = used["used"] + (f" 1/{used['dct_reduction']}" if used.get("dct_reduction", 1) > 1 else "")
                rows.append((preset, f"{reader}={name}", res.patches_run, res.seconds, e2e, mo, res.timings))
    print(f"device {device}, batch {args.batch_size}, workers {resolve_workers(device, args.workers, available_cpus().cpus)}, "
          f"precision {args.precision} = {resolve_precision(device, args.precision)}, "
          f"threads {torch.get_num_threads()}, slide {args.size}² px @0.25 µm/px, median of {args.repeats}")
    print(f"{'preset':>8} {'reader':>22} {'patches':>8} {'wall s':>8} {'e2e p/s':>9} {'model p/s':>10} "
          f"{'ratio':>6}  split (s)")
    for preset, reader, n, sec, e2e, mo, tm in rows:
        split = ", ".join(f"{k} {v:.1f}" for k, v in tm.items())
        print(f"{preset:>8} {reader:>22} {n:>8} {sec:>8.1f} {e2e:>9.2f} {mo:>10.2f} {e2e / mo:>6.2f}  {split}")
    print(f"ratio end_to_end/model_only = {rows[-1][4] / rows[-1][5]:.2f}")


if __name__ == "__main__":
    main()
