"""Helpers shared by the benchmark scripts: reusable generated slides, random-weight
checkpoints, plain tables. Not a benchmark itself.

Generated slides are cached in a work folder under a name that spells out their
parameters; a ``<stem>.done.json`` marker (written last, with the generation time and
peak RSS) says the slide is complete, so an interrupted generation is redone, not reused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wsi_seg.synthetic import read_ground_truth, write_demo_slide

if TYPE_CHECKING:  # torch is imported where needed, so slide generation runs without it
    from wsi_seg.model import LoadedModel


@dataclass(frozen=True)
class GeneratedSlide:
    """A demo slide on disk and what making it cost (seconds 0 if unknown)."""

    path: Path
    mask_path: Path
    size_px: int
    mpp: float
    tissue_fraction: float
    seconds: float
    reused: bool


def slide_name(size_px: int, tissue_fraction: float, mpp: float, seed: int, levels: int | None = None) -> str:
    return f"demo_{size_px}px_t{tissue_fraction:g}_mpp{mpp:g}_s{seed}" + (f"_l{levels}" if levels else "")


def demo_slide(work: Path, size_px: int, tissue_fraction: float = 0.6, mpp: float = 0.25,
               seed: int = 0, fresh_process: bool = False, levels: int | None = None) -> GeneratedSlide:
    """A square demo slide in ``work``: reused when its marker exists, else written now.
    ``levels``: pyramid levels (None: the generator's, 4× apart down to < 1024 px).

    ``fresh_process``: this process does nothing else, so its peak RSS is the
    generator's and is recorded in the marker (``peak_rss_mib``).
    """
    stem = slide_name(size_px, tissue_fraction, mpp, seed, levels)
    path = work / f"{stem}.tif"
    marker = work / f"{stem}.done.json"
    if marker.is_file() and path.is_file():
        meta = json.loads(marker.read_text())
        return GeneratedSlide(path, work / f"{stem}_mask.png", size_px, mpp, tissue_fraction,
                              float(meta.get("seconds", 0.0)), True)
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    demo = write_demo_slide(path, size_px=(size_px, size_px), mpp=mpp, seed=seed, tissue_fraction=tissue_fraction,
                            levels=levels)
    seconds = time.perf_counter() - t
    meta = {"seconds": round(seconds, 2), "bytes": path.stat().st_size,
            "levels": [list(d) for d in demo.level_dimensions]}
    if fresh_process:
        meta["peak_rss_mib"] = round(peak_rss_mib()[0], 1)
    marker.write_text(json.dumps(meta))
    return GeneratedSlide(path, demo.mask_path, size_px, mpp, tissue_fraction, seconds, False)


def ground_truth_tissue(slide: GeneratedSlide) -> float:
    """Share of the slide area that is tissue in the generator's ground-truth mask."""
    mask, _, _ = read_ground_truth(slide.mask_path)
    return float((mask > 0).mean())


def slide_arguments(ap: argparse.ArgumentParser, size_px: int = 8192, model: bool = True) -> None:
    """The demo-slide options (and the model's) that the segmenting benchmarks share."""
    ap.add_argument("--work", type=Path, default=None, help="folder for the slide (kept and reused)")
    ap.add_argument("--quick", action="store_true", help="smoke run (< 1 min)")
    ap.add_argument("--size", type=int, default=size_px, help="demo slide side, px at 0.25 µm/px")
    ap.add_argument("--tissue-fraction", type=float, default=0.6)
    if model:
        ap.add_argument("--preset", default="small")
        ap.add_argument("--checkpoint", default="", help="a checkpoint instead of --preset; 'demo' = the bundled one")


@contextlib.contextmanager
def work_folder(work: Path | None) -> Iterator[Path]:
    """``work`` (created, kept) or a temporary folder removed afterwards."""
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
        yield work
        return
    with tempfile.TemporaryDirectory(prefix="wsi_seg_bench_") as tmp:
        yield Path(tmp)


def benchmark_model(checkpoint: str, preset: str, folder: Path) -> tuple[LoadedModel, str]:
    """The network a comparison runs, and a description of it: ``checkpoint`` ("demo" =
    the bundled model, a path, or "" for a random-init stage-2 ``preset``)."""
    from wsi_seg.model import load_checkpoint
    from wsi_seg.model.default import default_model_path

    if checkpoint == "demo":
        return load_checkpoint(default_model_path()), "bundled demo model (trained, synthetic tissue)"
    if checkpoint:
        return load_checkpoint(checkpoint), f"checkpoint {checkpoint}"
    return random_model(preset, folder, stage=2), f"preset {preset} (random init, stage 2)"


def random_model(preset: str, folder: Path, stage: int = 2, seed: int = 0, **overrides: object) -> LoadedModel:
    """A random-init network of ``preset`` saved as a checkpoint and loaded back, as the
    engine would load it (seeded: the same weights every run)."""
    import torch

    from wsi_seg.model import PsclNet, load_checkpoint, preset_config, save_checkpoint

    torch.manual_seed(seed)
    net = PsclNet(preset_config(preset, stage=stage, **overrides))
    tag = "_".join(f"{k}{v}" for k, v in sorted(overrides.items()))
    return load_checkpoint(save_checkpoint(net, folder / f"ckpt_{preset}_s{stage}_{tag}"))


def engine_precision(device: str, precision: str) -> str:
    """What ``precision`` (e.g. "auto") means for ``segment_slide`` on ``device``."""
    from wsi_seg.inference.runtime import resolve_device, resolve_precision

    return resolve_precision(resolve_device(device), precision)


def engine_workers(device: str, workers: int | None) -> int:
    """The reader processes ``segment_slide`` starts for ``workers`` (None: auto) on ``device``."""
    from wsi_seg.inference.runtime import resolve_runtime

    return resolve_runtime(device, workers=workers).reader_workers


def autocast_name(ctx: object) -> str:
    """fp32 / bf16 / fp16 of an autocast context (anything but torch.autocast: fp32)."""
    import torch

    if isinstance(ctx, torch.autocast):
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(ctx.fast_dtype, str(ctx.fast_dtype))
    return "fp32"


def read_result_mask(out: Path, level: int = 0) -> np.ndarray:
    """The class-index mask (H, W) uint8 of a ``segment_slide`` output."""
    import zarr

    return zarr.open_group(str(out), mode="r")[f"labels/mask/{level}"][:]


def peak_rss_mib() -> tuple[float, float]:
    """(this process' peak RSS, largest reaped child's peak RSS) in MiB.

    Own peak: ``VmHWM`` of /proc/self/status, the high-water mark of this address space
    (getrusage's RUSAGE_SELF would start from the parent's peak: Linux carries maxrss
    across fork + exec). Children: RUSAGE_CHILDREN maxrss (Linux: KiB units).
    """
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                own = int(line.split()[1]) / 1024
    except OSError:
        pass
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain right-aligned table; floats with 2 decimals unless already strings."""
    def cell(v: object) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    text = [[cell(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    for r in text:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths)))


def print_speeds(header: str, runs: Sequence[tuple[str, int, Sequence[float]]]) -> list[float]:
    """``header``, then one row per run: (name, patches, wall times) → patches/s of the best
    time. Returns those rates, in order."""
    print(f"\n{header}")
    rates = [n / min(times) for _, n, times in runs]
    print_table(["run", "patches", "wall s", "patches/s"],
                [[name, n, min(times), rate] for (name, n, times), rate in zip(runs, rates)])
    return rates
