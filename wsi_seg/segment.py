"""The segment pipeline: slide → tissue → tiles → batched inference → zarr pyramid."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsi_seg import __version__
from wsi_seg.errors import ConfigError, NoTissueError, OutputError, SlideError
from wsi_seg.model.checkpoint import LoadedModel
from wsi_seg.lock import RunLock
from wsi_seg.output import ResultStore
from wsi_seg.ownership import check_output, output_lock
from wsi_seg.predict import autocast_context, predict_patches, resolve_device, resolve_precision
from wsi_seg.reader import READERS, BlockReader, plan_reader
from wsi_seg.result import partial_path, read_provenance
from wsi_seg.slide import Slide, SlideInfo
from wsi_seg.tiling import Block, TileGrid, make_grid
from wsi_seg.tissue import SeedParams, TissueParams, tissue_mask

log = logging.getLogger(__name__)


# 4·10¹⁰ px: a 200,000 × 200,000 px output, beyond any 40x slide at the model's resolution
DEFAULT_MAX_OUTPUT_PX = 40_000_000_000
MAX_UPSAMPLING = 2.0  # model px per slide level-0 px without --allow-upsampling


@dataclass(frozen=True)
class SegmentOptions:
    """How to run one slide; the CLI flags map onto these fields."""

    device: str = "auto"
    batch_size: int | None = None  # patches per model call; None: auto (see resolve_batch_size)
    workers: int | None = None  # reader processes; None: auto (see resolve_workers)
    overlap_px: int = 32
    mpp: float | None = None  # level-0 µm/px override for slides without metadata
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    reader: str = "auto"  # slide decoder, one of wsi_seg.reader.READERS
    tissue: TissueParams = field(default_factory=TissueParams)
    overwrite: bool = False
    progress: bool = True
    allow_upsampling: bool = False  # read the slide more than 2× finer than level 0
    max_output_px: int = DEFAULT_MAX_OUTPUT_PX  # level-0 output pixels a run may plan

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch size must be ≥ 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"workers must be ≥ 0, got {self.workers}")
        if not 0.0 <= self.tissue.min_tissue_fraction <= 1.0:
            raise ConfigError(f"tissue threshold must be in [0, 1], got {self.tissue.min_tissue_fraction}")
        if self.reader not in READERS:
            raise ConfigError(f"unknown reader {self.reader!r}; use one of {', '.join(READERS)}")
        if self.mpp is not None and not (math.isfinite(self.mpp) and self.mpp > 0):
            raise ConfigError(f"--mpp must be a positive number of µm per pixel, got {self.mpp}")
        if self.max_output_px < 1:
            raise ConfigError(f"--max-output-px must be ≥ 1, got {self.max_output_px}")


def resolve_batch_size(device: torch.device, batch_size: int | None) -> int:
    """Patches per model call for ``batch_size`` (None: auto).

    Auto is 2 on the CPU, where small batches stay in cache: swin-t ran 1.3–1.5× faster
    per patch at batch 2 than at 8 (fp32 and bf16, 2 cores), the ``small`` preset about
    10 % slower. 32 on CUDA.
    """
    if batch_size is not None:
        return batch_size
    return 2 if device.type == "cpu" else 32


def resolve_workers(device: torch.device, workers: int | None) -> int:
    """Reader processes for ``workers`` (None: auto).

    Auto is 0 on the CPU: the model's threads already use every core, and reader
    processes only compete with them (``benchmarks/segment_throughput.py --workers``:
    swin-t end-to-end/model-only 1.01 in-process vs 0.93 with one reader on 2 cores).
    On CUDA, where decoding is the limit, one reader per spare core, up to 8.
    """
    if workers is not None:
        return workers
    if device.type == "cpu":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


@dataclass
class SegmentResult:
    """What one run did; the CLI prints it as the summary line."""

    out: Path
    patches_run: int
    patches_skipped: int
    patches_resumed: int
    seconds: float
    timings: dict[str, float]

    @property
    def patches_per_second(self) -> float:
        return self.patches_run / self.seconds if self.seconds > 0 else 0.0

    def summary(self, slide_name: str) -> str:
        """The one-line summary the CLI prints."""
        resumed = f", {self.patches_resumed} resumed" if self.patches_resumed else ""
        return (
            f"{slide_name}: {self.patches_run} patches run, {self.patches_skipped} skipped{resumed}, "
            f"{self.seconds:.1f} s, {self.patches_per_second:.1f} patches/s → {self.out}"
        )


@dataclass(frozen=True)
class SegmentPlan:
    """What a run will do, known before it starts; the CLI prints it first."""

    slide: str
    out_shape: tuple[int, int]  # (H, W) px of output level 0
    out_mpp: float
    slide_mpp: float
    tissue_patches: int
    todo_patches: int  # tissue patches not done by an earlier, interrupted run
    seconds_per_patch: float  # measured on one batch of the model on its device
    device: str

    @property
    def estimate_s(self) -> float:
        return self.todo_patches * self.seconds_per_patch

    def describe(self) -> str:
        h, w = self.out_shape
        est = self.estimate_s
        when = f"{est:.0f} s" if est < 120 else f"{est / 60:.0f} min" if est < 7200 else f"{est / 3600:.1f} h"
        return (
            f"{Path(self.slide).name}: planned output {w} × {h} px ({w * h / 1e6:,.1f} Mpx) at {self.out_mpp:g} µm/px "
            f"from a {self.slide_mpp:g} µm/px slide; {self.todo_patches} of {self.tissue_patches} tissue patches to run, "
            f"≈ {when} of model time on {self.device}"
        )


def check_bounds(slide: Slide, grid: TileGrid, model_mpp: float, options: SegmentOptions) -> None:
    """Refuse, before any reading, a run that would upsample absurdly or plan a huge output."""
    if grid.scale > MAX_UPSAMPLING and not options.allow_upsampling:
        raise SlideError(
            f"{slide.path}: the slide is {slide.mpp:g} µm/px and the model runs at {model_mpp:g} µm/px: "
            f"{grid.scale:.3g}× upsampling of level 0 (more than {MAX_UPSAMPLING:g}×); check the slide's µm/px "
            "(--mpp), or pass --allow-upsampling"
        )
    h, w = grid.out_shape
    if h * w > options.max_output_px:
        raise SlideError(
            f"{slide.path}: the output would be {w} × {h} px ({h * w / 1e9:.3g} Gpx) at the model's {model_mpp:g} µm/px, "
            f"over --max-output-px {options.max_output_px:.3g}; check the slide's µm/px (--mpp), or raise --max-output-px"
        )


def plan(slide: Slide, model_mpp: float, patch_px: int, options: SegmentOptions) -> tuple[TileGrid, np.ndarray]:
    """(grid, which patches to run: (rows, cols) bool) for a slide; bounds are checked first."""
    grid = make_grid(slide.dimensions, slide.mpp, model_mpp, patch_px, options.overlap_px)
    check_bounds(slide, grid, model_mpp, options)
    if min(grid.out_shape) < patch_px:
        raise SlideError(
            f"{slide.path}: slide is {grid.out_shape[1]}×{grid.out_shape[0]} px at the model's "
            f"{model_mpp} µm/px, smaller than one {patch_px}-px patch"
        )
    thumb_mpp = max(options.tissue.thumbnail_mpp, slide.mpp)
    thumb, thumb_mpp = slide.thumbnail(thumb_mpp)
    tissue = tissue_mask(thumb, thumb_mpp, options.tissue)
    run = grid.tissue_fractions(tissue) >= max(options.tissue.min_tissue_fraction, 1e-6)
    if not run.any():
        raise NoTissueError(f"{slide.path}: no tissue found (threshold {options.tissue.min_tissue_fraction:.2f}); nothing to segment")
    return grid, run


def _provenance(info: SlideInfo, model: LoadedModel, grid: TileGrid, options: SegmentOptions) -> dict[str, Any]:
    return {
        "software": {"name": "wsi-seg", "version": __version__},
        "slide": {
            "path": str(Path(info.path).resolve()),
            "fingerprint": info.fingerprint,
            "vendor": info.vendor,
            "dimensions_px": list(info.dimensions),
            "mpp": info.mpp,
            "mpp_source": info.mpp_source,
        },
        "model": {"path": str(model.path), "sha256": model.sha256, "config": model.config.to_dict()},
        "mpp": model.config.mpp,
        "patch_size_px": grid.patch_px,
        "overlap_px": grid.overlap_px,
        "block_px": grid.block_px,
        "output_shape_px": list(grid.out_shape),
        "tissue": asdict(options.tissue),
        "class_names": list(model.config.class_names),
        "class_colors": [list(c) for c in model.config.class_colors],
    }


# settings that must match for an interrupted run to be resumed (besides slide and model)
_RESUME_KEYS = ("patch_size_px", "overlap_px", "block_px", "output_shape_px", "tissue")


def _same_run(old: dict[str, Any], new: dict[str, Any]) -> bool:
    def key(p: dict[str, Any]) -> list[Any]:
        return [
            p.get("slide", {}).get("fingerprint"),
            p.get("model", {}).get("sha256"),
            *[p.get(k) for k in _RESUME_KEYS],
        ]

    return key(old) == key(new)


def _mismatch(tmp: Path, old: dict[str, Any], new: dict[str, Any]) -> str:
    """Why the interrupted run in ``tmp`` is not this run, naming both sides."""
    old_slide, new_slide = old.get("slide", {}), new.get("slide", {})
    if old_slide.get("fingerprint") != new_slide.get("fingerprint"):
        return (
            f"{tmp}: holds an interrupted run of another slide ({old_slide.get('path')}, fingerprint "
            f"{old_slide.get('fingerprint')}), not of {new_slide.get('path')} (fingerprint "
            f"{new_slide.get('fingerprint')}); pass --overwrite to discard it"
        )
    if old.get("model", {}).get("sha256") != new.get("model", {}).get("sha256"):
        return (
            f"{tmp}: holds an interrupted run of another model ({old.get('model', {}).get('path')}), not of "
            f"{new.get('model', {}).get('path')}; pass --overwrite to discard it"
        )
    keys = [k for k in _RESUME_KEYS if old.get(k) != new.get(k)]
    return f"{tmp}: holds an interrupted run with other settings ({', '.join(keys)}); pass --overwrite to discard it"


def _prepare_store(out: Path, grid: TileGrid, model: LoadedModel, provenance: dict[str, Any], overwrite: bool) -> ResultStore:
    """A store to write into: resumed if a matching partial run exists, else fresh.

    ``out`` was checked by ``ownership.check_output`` and its ``.partial`` is locked by this run.
    """
    tmp = partial_path(out)
    old = read_provenance(tmp)
    if old is not None and not overwrite:
        if _same_run(old, provenance):
            log.info("resuming the interrupted run in %s", tmp)
            return ResultStore(tmp)
        raise OutputError(_mismatch(tmp, old, provenance))
    return ResultStore.create(tmp, grid.out_shape, model.config.num_classes, grid.block_px, provenance)


def _seconds_per_patch(net: torch.nn.Module, device: torch.device, autocast: Any, batch_size: int,
                       patch_px: int, seeded: bool) -> float:
    """Model time per patch, from the second of two batches of noise (the first warms up)."""
    x = torch.randint(0, 256, (batch_size, 3, patch_px, patch_px), dtype=torch.uint8, device=device)
    bkg = torch.zeros((batch_size, patch_px, patch_px), dtype=torch.bool, device=device) if seeded else None
    with torch.inference_mode(), autocast:
        predict_patches(net, x, bkg)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        predict_patches(net, x, bkg).mask.cpu()
    return (time.perf_counter() - t) / batch_size


def _batches(loader: Iterable[dict[str, Any]], batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]]:
    """Re-batch block items into model batches of ``batch_size`` patches.

    Yields (patches, backgrounds, owners) where owners[k] = (block item, patch index).
    """
    buf_p: list[torch.Tensor] = []
    buf_b: list[torch.Tensor] = []
    owners: list[tuple[int, int]] = []
    count = 0
    for item in loader:
        if "error" in item:
            raise SlideError(item["error"])
        n = item["patches"].shape[0]
        buf_p.append(item["patches"])
        buf_b.append(item["background"])
        owners.extend((int(item["block"]), k) for k in range(n))
        count += n
        while count >= batch_size:
            p, b = torch.cat(buf_p), torch.cat(buf_b)
            yield p[:batch_size], b[:batch_size], owners[:batch_size]
            buf_p, buf_b, owners = [p[batch_size:]], [b[batch_size:]], owners[batch_size:]
            count -= batch_size
    if count:
        yield torch.cat(buf_p), torch.cat(buf_b), owners


class _BackgroundWriter:
    """Writes blocks on one thread (one writer per chunk, as zarr needs) while the model
    runs; at most ``max_pending`` blocks wait, so memory stays bounded."""

    def __init__(self, store: ResultStore, max_pending: int = 8) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsi-seg-writer")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._futures: list[Future] = []

    def submit(self, index: tuple[int, int], y0: int, x0: int, acts: np.ndarray, mask: np.ndarray) -> None:
        self._raise_failed()
        self._slots.acquire()
        future = self._pool.submit(self.store.write_block, index, y0, x0, acts, mask)
        future.add_done_callback(lambda _: self._slots.release())
        self._futures.append(future)

    def _raise_failed(self) -> None:
        done = [f for f in self._futures if f.done()]
        self._futures = [f for f in self._futures if not f.done()]
        for f in done:
            f.result()  # re-raises a write error in the caller's thread

    def close(self) -> None:
        """Wait for every pending write; re-raise the first failure."""
        self._pool.shutdown(wait=True)
        futures, self._futures = self._futures, []
        for f in futures:
            f.result()


class _BlockAssembler:
    """Collects centre crops of patch predictions until a block is whole, then writes it."""

    def __init__(self, grid: TileGrid, blocks: list[Block], num_classes: int, store: _BackgroundWriter) -> None:
        self.grid, self.blocks, self.store = grid, blocks, store
        self.num_classes = num_classes
        self.pending: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}

    def add(self, item: int, patch_idx: int, activations: np.ndarray, mask: np.ndarray) -> bool:
        """Place one patch's owned square; returns True when its block was written."""
        block = self.blocks[item]
        h, w = block.y1 - block.y0, block.x1 - block.x0
        if item not in self.pending:
            self.pending[item] = (np.zeros((self.num_classes, h, w), np.uint8), np.zeros((h, w), np.uint8), 0)
        acts, msk, done = self.pending[item]
        g = self.grid
        i, j = block.patches[patch_idx]
        s, m = g.stride_px, g.margin_px
        y, x = i * s, j * s
        hh, ww = min(s, h - y), min(s, w - x)
        acts[:, y : y + hh, x : x + ww] = activations[:, m : m + hh, m : m + ww]
        msk[y : y + hh, x : x + ww] = mask[m : m + hh, m : m + ww]
        done += 1
        if done < len(block.patches):
            self.pending[item] = (acts, msk, done)
            return False
        del self.pending[item]
        self.store.submit(block.index, block.y0, block.x0, acts, msk)
        return True


def segment_slide(
    slide_path: str | Path,
    out: str | Path,
    model: LoadedModel,
    options: SegmentOptions = SegmentOptions(),
    on_progress: Callable[[int, int], None] | None = None,
    on_plan: Callable[[SegmentPlan], None] | None = None,
) -> SegmentResult:
    """Segment one slide into an OME-Zarr at ``out`` (layout: ``wsi_seg.result``).

    ``out`` must be new or a result of ours (``--overwrite``); the run holds the lock of
    ``out`` throughout. ``on_plan(plan)`` is called once the work is known, before
    inference. ``on_progress(patches_done, patches_total)`` is called after every batch;
    raising from it (e.g. a GUI's cancel) stops the run and leaves a resumable ``.partial``.
    """
    out = Path(out)
    check_output(out, options.overwrite)
    with output_lock(out) as lock:
        return _segment_locked(Path(slide_path), out, model, options, on_progress, on_plan, lock)


def _segment_locked(
    slide_path: Path,
    out: Path,
    model: LoadedModel,
    options: SegmentOptions,
    on_progress: Callable[[int, int], None] | None,
    on_plan: Callable[[SegmentPlan], None] | None,
    lock: RunLock,
) -> SegmentResult:
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    cfg = model.config
    device = resolve_device(options.device)
    precision = resolve_precision(device, options.precision)  # validates before any work
    autocast = autocast_context(device, precision)
    batch_size = resolve_batch_size(device, options.batch_size)
    workers = resolve_workers(device, options.workers)
    with Slide(slide_path, mpp=options.mpp) as slide:
        info = slide.info()
        _ = slide.mpp  # raises MissingMppError early
        t = time.perf_counter()
        grid, run = plan(slide, cfg.mpp, cfg.patch_size_px, options)
        timings["tissue"] = time.perf_counter() - t
        reader_plan = plan_reader(options.reader, slide, cfg.mpp, device)
    provenance = _provenance(info, model, grid, options)
    provenance["inference"] = {"device": str(device), "precision": precision,
                               "reader_workers": workers, "batch_size": batch_size,
                               "reader": reader_plan.provenance()}
    store = _prepare_store(out, grid, model, provenance, options.overwrite)
    blocks = grid.blocks(run)
    done = store.done_blocks()
    todo = [b for b in blocks if b.index not in done]
    n_total = int(run.sum())
    n_resumed = sum(len(b.patches) for b in blocks if b.index in done)
    n_skipped = grid.grid_shape[0] * grid.grid_shape[1] - n_total
    seed = SeedParams.of_model(cfg)
    reader = BlockReader(reader_plan, str(slide_path), info.mpp if options.mpp is None else options.mpp,
                         grid, todo, seed, device, workers)
    net = model.net.to(device).eval()
    todo_patches = sum(len(b.patches) for b in todo)
    plan_ = SegmentPlan(
        str(slide_path), grid.out_shape, cfg.mpp, info.mpp if options.mpp is None else options.mpp, n_total,
        todo_patches, _seconds_per_patch(net, device, autocast, batch_size, cfg.patch_size_px, seed.enabled) if todo else 0.0,
        str(device),
    )
    log.info("%s", plan_.describe())
    if on_plan is not None:
        on_plan(plan_)
    store.open_for_writing(expected=[b.index for b in blocks])  # the store grows the pyramid as blocks come
    writer = _BackgroundWriter(store)
    assembler = _BlockAssembler(grid, todo, cfg.num_classes, writer)
    n_run = 0
    t_infer = time.perf_counter()
    bar = tqdm(total=n_total, initial=n_resumed, desc=Path(slide_path).name, unit="patch", disable=not options.progress)
    try:
        with torch.inference_mode(), autocast:
            for patches, backgrounds, owners in _batches(reader, batch_size):
                patches = patches.to(device, non_blocking=True)
                bkg = backgrounds.to(device, non_blocking=True) if seed.enabled else None
                pred = predict_patches(net, patches, bkg)
                acts = (pred.activations.float() * 255.0 + 0.5).clamp_(0, 255).to(torch.uint8).cpu().numpy()
                masks = pred.mask.cpu().numpy()
                for k, (item, patch_idx) in enumerate(owners):
                    assembler.add(item, patch_idx, acts[k], masks[k])
                n_run += len(owners)
                bar.update(len(owners))
                if on_progress is not None:
                    on_progress(n_resumed + n_run, n_total)
    finally:
        bar.close()
        try:
            writer.close()  # finished blocks are kept and recorded, even on interrupt
        finally:
            store.close()
    timings["inference"] = time.perf_counter() - t_infer
    if assembler.pending:  # cannot happen unless a block's patches went missing
        raise OutputError(f"{store.root}: {len(assembler.pending)} blocks incomplete after inference")
    t = time.perf_counter()
    stats = {"patches_run": n_run, "patches_skipped": n_skipped, "patches_resumed": n_resumed, "tissue_patches": n_total}
    store.finish(out, stats, started=t_start, progress=options.progress,
                 inference={**provenance["inference"], "reader": reader.provenance()})
    timings["pyramid"] = time.perf_counter() - t
    lock.moved(out)
    seconds = time.perf_counter() - t_start
    return SegmentResult(out, n_run, n_skipped, n_resumed, seconds, timings)
