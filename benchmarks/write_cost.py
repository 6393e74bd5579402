"""What writing a result costs: CPU per block and bytes on disk, per store setting.

Segments a generated demo slide once (the bundled demo model by default: trained, so its
activations compress like a real model's), then writes the same level-0 blocks again
through ``ResultStore`` (pyramid streamed, as ``segment`` does) under each setting.
The shipped setting is the first row; the others are what it was chosen against.

    python benchmarks/write_cost.py                    # 8192² slide, demo model (1 µm/px: 2048² px result)
    python benchmarks/write_cost.py --preset small --checkpoint ''   # random-weight network

Every setting is written ``--repeats`` times, interleaved; medians are reported.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    benchmark_model,
    demo_slide,
    print_table,
    slide_arguments,
    work_folder,
)

from wsi_seg.inference.segment import SegmentOptions, segment_slide
from wsi_seg.result import store as store_mod
from wsi_seg.result.reader import Result


def _settings() -> dict[str, tuple[Any, dict[str, Any], Any]]:
    """name → (compressor factory, array write config, activations' chunking); the first is what ships."""
    import zarr

    def blosc(cname: str, clevel: int) -> Any:
        return lambda: zarr.codecs.BloscCodec(cname=cname, clevel=clevel, shuffle="bitshuffle")

    skip_empty = {"write_empty_chunks": False}  # zarr's default: check each chunk for all zeros
    no_check = {"write_empty_chunks": True}
    shard = store_mod._activation_chunks

    def per_class(classes: int, chunk: int) -> dict[str, Any]:  # one file per class and block
        return {"chunks": (1, chunk, chunk)}

    return {
        "shipped (zstd-1, no check, a block's classes in one shard)": (store_mod._compressor, store_mod._WRITE_CONFIG, shard),
        "zstd-1, no check, a file per class": (blosc("zstd", 1), no_check, per_class),
        "zstd-3, empty check, a file per class": (blosc("zstd", 3), skip_empty, per_class),
        "zstd-1, empty check, a file per class": (blosc("zstd", 1), skip_empty, per_class),
        "zstd-3, no check, shard": (blosc("zstd", 3), no_check, shard),
        "lz4-5, no check, shard": (blosc("lz4", 5), no_check, shard),
    }


def write_all(result: Result, blocks: list[tuple[tuple[int, int], np.ndarray, np.ndarray]], root: Path,
              compressor: Any, config: dict[str, Any], chunking: Any) -> tuple[float, float, int, int]:
    """(CPU s, wall s, bytes, files) of writing ``blocks`` into a fresh store at ``root``."""
    saved = store_mod._compressor, store_mod._WRITE_CONFIG, store_mod._activation_chunks
    store_mod._compressor, store_mod._WRITE_CONFIG, store_mod._activation_chunks = compressor, config, chunking
    try:
        shutil.rmtree(root, ignore_errors=True)
        chunk = blocks[0][2].shape[0]
        store = store_mod.ResultStore.create(root, result.level_shape(0), len(result.class_names), chunk,
                                             {"mpp": result.mpp})
        store.open_for_writing(expected=[index for index, _, _ in blocks])
        c, t = time.process_time(), time.perf_counter()
        for (i, j), acts, mask in blocks:
            store.write_block((i, j), i * chunk, j * chunk, acts, mask)
        store.close()
        cpu, wall = time.process_time() - c, time.perf_counter() - t
    finally:
        store_mod._compressor, store_mod._WRITE_CONFIG, store_mod._activation_chunks = saved
    files = [p for p in root.rglob("*") if p.is_file()]
    return cpu, wall, sum(p.stat().st_size for p in files), len(files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    slide_arguments(ap, size_px=8192)
    ap.set_defaults(checkpoint="demo")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.quick:
        args.size, args.repeats = 3072, 1
    with work_folder(args.work) as work:
        slide = demo_slide(work, args.size, args.tissue_fraction)
        model, what = benchmark_model(args.checkpoint, args.preset, work)
        out = work / "write_cost_source.zarr"
        segment_slide(slide.path, out, model, SegmentOptions(overwrite=True, progress=False))
        result = Result.open(out)
        chunk = int(result.provenance.block_px)
        act0, mask0 = result.activations(0), result.mask(0)
        blocks = []
        for i in range(-(-result.level_shape(0)[0] // chunk)):
            for j in range(-(-result.level_shape(0)[1] // chunk)):
                window = (slice(i * chunk, (i + 1) * chunk), slice(j * chunk, (j + 1) * chunk))
                mask = np.asarray(mask0[window])
                if mask.any():  # tissue blocks, as the engine writes them
                    blocks.append(((i, j), np.ascontiguousarray(act0[(slice(None), *window)]), mask))
        settings = _settings()
        runs: dict[str, list[tuple[float, float, int, int]]] = {name: [] for name in settings}
        for _ in range(args.repeats):
            for name, (compressor, config, chunking) in settings.items():
                runs[name].append(write_all(result, blocks, work / "write_cost.zarr", compressor, config, chunking))
        shutil.rmtree(work / "write_cost.zarr", ignore_errors=True)
    base_cpu = statistics.median(r[0] for r in next(iter(runs.values())))
    rows = []
    for name, rs in runs.items():
        cpu = statistics.median(r[0] for r in rs)
        wall = statistics.median(r[1] for r in rs)
        rows.append((name, f"{cpu / len(blocks) * 1e3:.1f}", f"{wall / len(blocks) * 1e3:.1f}",
                     f"{rs[0][2] / 1e6:.2f}", rs[0][3], f"{cpu / base_cpu:.2f}"))
    print(f"{len(blocks)} blocks of {chunk}² px × {len(result.class_names)} classes + mask, pyramid streamed; "
          f"{what}; {args.size}² slide; median of {args.repeats}")
    print_table(["setting", "CPU ms/block", "wall ms/block", "MB on disk", "files", "CPU vs shipped"], rows)


if __name__ == "__main__":
    main()
