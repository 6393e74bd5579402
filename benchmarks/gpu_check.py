"""One prepared GPU check (< 5 min on one GPU): is the engine fed as fast as the model runs?

1. swin-t (stage 2, random weights) model-only vs end-to-end ``segment_slide`` patches/s,
   in fp16 and bf16, at batch 32, 64 and 128 (default reader ``auto``); then, at batch
   32 fp16, the end-to-end run with each decoder forced (openslide, jpeg-cpu).
2. Reading alone (no model), patches/s per reader-process count (1, 2, 4, 8, every
   usable core) for the openslide, jpeg-cpu (reduced-DCT) and jpeg-device (nvJPEG)
   paths, over the first ``--read-blocks`` blocks.
3. The engine's ceiling: ``segment_slide`` with a null model (``engine_ceiling.py``), per
   reader-process count: what the engine around the model can feed.
4. Last line: ``ratio end_to_end/model_only = X.XX`` for swin-t fp16 at the engine's
   default CUDA batch, reader auto.

End-to-end figures are over the inference phase (reading + model + writing, which
overlap), so the fixed start-up (thumbnail, tissue detection, worker start) of a short
run does not hide the steady state; wall-clock patches/s are printed beside them.

The slide: a demo slide (``--base`` px², 0.25 µm/px, JPEG) repeated ``--mosaic``² times
by copying its compressed tiles, which takes seconds instead of rendering minutes.

    python benchmarks/gpu_check.py                     # on the GPU machine
    python benchmarks/gpu_check.py --quick             # smoke run on the CPU (tiny preset)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import demo_slide, print_table, random_model, work_folder  # noqa: E402
from null_model_run import NullNet  # noqa: E402
from reader_scaling import make_dataset, reader_throughput  # noqa: E402
from segment_throughput import model_only  # noqa: E402

from wsi_seg.inference.allocator import pin_malloc_thresholds  # noqa: E402
from wsi_seg.inference.runtime import (  # noqa: E402
    available_cpus,
    resolve_batch_size,
    resolve_device,
    resolve_precision,
    resolve_runtime,
)
from wsi_seg.inference.segment import SegmentOptions, segment_slide  # noqa: E402
from wsi_seg.model.checkpoint import LoadedModel  # noqa: E402
from wsi_seg.result.format import read_provenance


def mosaic_slide(src: Path, dst: Path, reps: int) -> Path:
    """``src`` (a demo slide whose level sizes are whole tiles) repeated reps × reps, by
    copying compressed tiles; same description (so OpenSlide sees an Aperio slide)."""
    if dst.exists():
        return dst
    with tifffile.TiffFile(src) as tif:
        pages = list(tif.pages)
        fh = tif.filehandle
        levels = []
        for page in pages:
            rows, cols = -(-page.imagelength // page.tilelength), -(-page.imagewidth // page.tilewidth)
            if page.imagewidth % page.tilewidth or page.imagelength % page.tilelength:
                raise ValueError(f"{src}: level {page.shape} is not whole tiles; pick another --base")
            tiles = []
            for off, cnt in zip(page.dataoffsets, page.databytecounts):
                fh.seek(off)
                tiles.append(fh.read(cnt))
            levels.append((page, rows, cols, tiles))
        w0, h0 = pages[0].imagewidth * reps, pages[0].imagelength * reps
        desc = pages[0].description.replace(f"{pages[0].imagewidth}x{pages[0].imagelength}", f"{w0}x{h0}")
        tmp = dst.with_suffix(".partial.tif")
        with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            for k, (page, rows, cols, tiles) in enumerate(levels):
                def order(tiles=tiles, rows=rows, cols=cols):
                    for r in range(rows * reps):
                        for c in range(cols * reps):
                            yield tiles[(r % rows) * cols + c % cols]
                tw.write(order(), shape=(page.imagelength * reps, page.imagewidth * reps, 3), dtype=np.uint8,
                         tile=(page.tilelength, page.tilewidth), photometric=page.photometric,
                         compression=page.compression, subsampling=page.subsampling,
                         description=desc if k == 0 else None, metadata=None, subfiletype=0 if k == 0 else 1)
    tmp.rename(dst)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None, help="folder for the slides (kept and reused)")
    ap.add_argument("--quick", action="store_true", help="smoke run on the CPU: tiny preset, small slide")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--preset", default="swin-t")
    ap.add_argument("--base", type=int, default=8192, help="demo slide side, px at 0.25 µm/px")
    ap.add_argument("--mosaic", type=int, default=3, help="the demo slide repeated N × N")
    ap.add_argument("--batches", default="32,64,128")
    ap.add_argument("--precisions", default="fp16,bf16")
    ap.add_argument("--readers", default="", help="reader process counts (default 1,2,4,8,all cores)")
    ap.add_argument("--read-blocks", type=int, default=120, help="blocks read per reading-alone figure")
    args = ap.parse_args()
    malloc = pin_malloc_thresholds()  # as the wsi-seg CLI runs (wsi_seg.inference.allocator)
    device = resolve_device(args.device)
    if args.quick:
        args.preset, args.base, args.mosaic, args.read_blocks = "tiny", 1024, 1, 4
        args.batches = "2,4"
        args.precisions = "fp32" if device.type == "cpu" else "fp16"
        args.readers = args.readers or "0,1"
    budget = available_cpus()
    cpus = budget.cpus
    counts = [int(c) for c in args.readers.split(",")] if args.readers else sorted({1, 2, 4, 8, cpus})
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    print(f"gpu_check: device {device} ({gpu}), torch {torch.__version__}, {cpus} usable CPUs of "
          f"{os.cpu_count()} (limit: {budget.source}), {platform.processor() or platform.machine()}; malloc {malloc}", flush=True)
    t_all = time.perf_counter()
    with work_folder(args.work) as work:
        base = demo_slide(work, args.base, 0.6)
        slide = base.path if args.mosaic == 1 else mosaic_slide(base.path, work / f"mosaic{args.mosaic}_{base.path.name}", args.mosaic)
        print(f"slide {slide.name} ready after {time.perf_counter() - t_all:.0f} s", flush=True)
        model = random_model(args.preset, work, stage=2)
        net = model.net.to(device).eval()

        print(f"\n1. {args.preset} model-only vs end-to-end (reader auto), patches/s")
        rows = []
        e2e_of: dict[tuple[str, int, str], tuple[float, float]] = {}

        def e2e(precision: str, batch: int, reader: str) -> tuple[float, float, str, int, float]:
            opts = SegmentOptions(device=str(device), batch_size=batch, precision=precision, reader=reader,
                                  overwrite=True, progress=False)
            res = segment_slide(slide, work / "out.zarr", model, opts)
            used = read_provenance(res.out)["inference"]["reader"]
            infer = res.patches_run / res.timings["inference"]
            return infer, res.patches_per_second, used["used"], res.patches_run, res.seconds

        streams = resolve_runtime(str(device)).streams  # as segment runs the model: 1 on CUDA
        for precision in args.precisions.split(","):
            resolve_precision(device, precision)
            for batch in (int(b) for b in args.batches.split(",")):
                mo = model_only(net, device, batch, max(4 * batch, 512 if device.type == "cuda" else 16), precision,
                                streams)
                infer, wall, used, n, sec = e2e(precision, batch, "auto")
                e2e_of[precision, batch, "auto"] = (infer, mo)
                rows.append([precision, batch, used, n, mo, infer, wall, infer / mo])
                print(f"  {precision} batch {batch}: model {mo:.1f}, e2e {infer:.1f} (wall {wall:.1f}) p/s", flush=True)
        default_batch = resolve_batch_size(device, None)
        first_precision = args.precisions.split(",")[0]
        if device.type == "cuda" or args.quick:
            batch = default_batch if str(default_batch) in args.batches.split(",") else int(args.batches.split(",")[0])
            mo = model_only(net, device, batch, max(4 * batch, 16), first_precision, streams)
            for reader in ("openslide", "jpeg-cpu"):
                infer, wall, used, n, sec = e2e(first_precision, batch, reader)
                rows.append([first_precision, batch, used, n, mo, infer, wall, infer / mo])
        print_table(["precision", "batch", "reader", "patches", "model p/s", "e2e p/s", "e2e wall p/s", "e2e/model"],
                    rows)

        print(f"\n2. reading alone (no model), patches/s over {args.read_blocks} blocks, jpeg-device on {device}")
        dataset, _ = make_dataset(slide, seeding=True)
        dataset.blocks = dataset.blocks[: args.read_blocks]
        dataset[0]  # warm the file cache
        readers = ("openslide", "jpeg-cpu", "jpeg-device")
        reading = {r: [reader_throughput(dataset, r, w, device) for w in counts] for r in readers}
        print_table(["reader processes", *readers, "jpeg-cpu/openslide", "jpeg-device/openslide"],
                    [[w, *[reading[r][i] for r in readers], reading["jpeg-cpu"][i] / reading["openslide"][i],
                      reading["jpeg-device"][i] / reading["openslide"][i]] for i, w in enumerate(counts)])

        print("\n3. the engine's ceiling: segment with a null model (engine_ceiling.py), per reader-process count")
        null = LoadedModel(NullNet(model.net), model.config, model.path, model.sha256)
        ceiling = []
        for w in counts:
            res = segment_slide(slide, work / "null.zarr", null,
                                SegmentOptions(device=str(device), workers=w, overwrite=True, progress=False))
            ceiling.append([w, res.patches_run, res.seconds, res.patches_per_second,
                            res.patches_run / res.timings["inference"]])
        print_table(["reader processes", "patches", "whole s", "whole p/s", "loop p/s"], ceiling)

    batch = default_batch if (first_precision, default_batch, "auto") in e2e_of else int(args.batches.split(",")[0])
    infer, mo = e2e_of[first_precision, batch, "auto"]
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s; single runs, no repeats (to stay under 5 min)")
    print(f"ratio end_to_end/model_only = {infer / mo:.2f} ({args.preset} {first_precision}, batch {batch}, "
          f"reader auto)")


if __name__ == "__main__":
    main()
