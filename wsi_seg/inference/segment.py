"""The segment pipeline: slide → tissue → tiles → batched inference → zarr pyramid."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from wsi_seg import __version__
from wsi_seg.errors import (
    Cancelled,
    CheckpointError,
    NoTissueError,
    OutputError,
    SlideError,
)
from wsi_seg.inference.options import MAX_UPSAMPLING, SegmentOptions
from wsi_seg.inference.reader import BlockReader, plan_reader
from wsi_seg.inference.runtime import resolve_runtime, torch_threads
from wsi_seg.inference.streams import (
    InferenceStreams,
    ModelTimeEstimate,
    NonFiniteOutput,
    run_batch,
    timed,
)
from wsi_seg.inference.tiling import Block, TileGrid, make_grid
from wsi_seg.lock import RunLock
from wsi_seg.model.checkpoint import LoadedModel
from wsi_seg.model.default import demo_on_real_warning
from wsi_seg.model.predict_rules import PredictRules
from wsi_seg.result.corrections import carry_over, carry_refusal
from wsi_seg.result.format import (
    has_corrections,
    partial_path,
    read_provenance,
    replaced_path,
)
from wsi_seg.result.ownership import (
    check_output,
    is_ours,
    output_lock,
    restore_replaced,
)
from wsi_seg.result.store import ResultStore
from wsi_seg.slide.slide import Slide, SlideInfo
from wsi_seg.slide.tissue import BackgroundSeedParams, tissue_mask

log = logging.getLogger(__name__)


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
    seconds_per_patch: float  # model time, measured on the run's first batches (ModelTimeEstimate)
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
            f"{grid.scale:.4g}× upsampling of level 0 (more than {MAX_UPSAMPLING:g}×); check the slide's µm/px "
            "(--mpp), or pass --allow-upsampling"
        )
    h, w = grid.out_shape
    if h * w > options.max_output_px:
        raise SlideError(
            f"{slide.path}: the output would be {w} × {h} px ({h * w / 1e9:.3g} Gpx) at the model's {model_mpp:g} µm/px, "
            f"over --max-output-px {options.max_output_px:.3g}; check the slide's µm/px (--mpp), or raise --max-output-px"
        )


def plan(slide: Slide, model_mpp: float, patch_px: int, options: SegmentOptions) -> tuple[TileGrid, np.ndarray]:
    """(grid, tissue patches: (rows, cols) bool, the patches to run) for a slide; bounds are checked first."""
    grid = make_grid(slide.dimensions, slide.mpp, model_mpp, patch_px, options.overlap_px, options.chunk_px)
    check_bounds(slide, grid, model_mpp, options)
    if min(grid.out_shape) < patch_px:
        raise SlideError(
            f"{slide.path}: slide is {grid.out_shape[1]}×{grid.out_shape[0]} px at the model's "
            f"{model_mpp} µm/px, smaller than one {patch_px}-px patch"
        )
    thumb_mpp = max(options.tissue.thumbnail_mpp, slide.mpp)
    thumb, thumb_mpp = slide.thumbnail(thumb_mpp)
    tissue = tissue_mask(thumb, thumb_mpp, options.tissue)
    tissue_patches = grid.tissue_fractions(tissue) >= max(options.tissue.min_tissue_fraction, 1e-6)
    if not tissue_patches.any():
        raise NoTissueError(f"{slide.path}: no tissue found (threshold {options.tissue.min_tissue_fraction:.2f}); nothing to segment")
    return grid, tissue_patches


def _provenance(info: SlideInfo, model: LoadedModel, grid: TileGrid, options: SegmentOptions) -> dict[str, Any]:
    return {
        "software": {"name": "wsi-seg", "version": __version__},
        "slide": {
            "path": str(Path(info.path).resolve()),
            "fingerprint": info.fingerprint,
            "vendor": info.vendor,
            "reader": info.reader,  # the library that opened it (openslide, wsidicom)
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


def _corrections_to_carry(out: Path, provenance: dict[str, Any], options: SegmentOptions) -> Path | None:
    """The result whose napari corrections go onto this run's result (an ``--overwrite`` of
    a corrected result of the same slide and grid), or None; refuses an overwrite that
    would lose corrections unless ``discard_corrections``."""
    if not (options.overwrite and is_ours(out) and has_corrections(out)):
        return None
    if options.discard_corrections:
        log.warning("%s: its corrections (labels/corrected) are discarded with it (--discard-corrections)", out)
        return None
    why = carry_refusal(read_provenance(out) or {}, provenance)
    if why is not None:
        raise OutputError(f"{out}: holds corrections saved in napari, and {why}, so they cannot be carried over; "
                          "pass --discard-corrections to replace them, or export them first "
                          f"(wsi-seg export {out} --geojson FILE)")
    return out


def _prepare_store(out: Path, grid: TileGrid, model: LoadedModel, provenance: dict[str, Any], overwrite: bool) -> ResultStore:
    """A store to write into: resumed if a matching partial run exists, else fresh.

    ``out`` was checked by ``ownership.check_output`` and its ``.partial`` is locked by this run.
    """
    tmp = partial_path(out)
    old = read_provenance(tmp)
    if old is not None and _same_run(old, provenance):  # with --overwrite too: an interrupted overwrite resumes
        log.info("resuming the interrupted run in %s", tmp)
        return ResultStore(tmp)
    if old is not None and not overwrite:
        raise OutputError(_mismatch(tmp, old, provenance))
    return ResultStore.create(tmp, grid.out_shape, model.config.num_classes, grid.block_px, provenance)


def _take_rows(queue: deque[torch.Tensor], n: int) -> torch.Tensor:
    """The first ``n`` rows of the queued tensors, removed from the queue: a view of the
    first tensor when they all lie in it, else concatenated."""
    parts = []
    while n:
        head = queue[0]
        if head.shape[0] <= n:
            parts.append(queue.popleft())
            n -= head.shape[0]
        else:
            parts.append(head[:n])
            queue[0], n = head[n:], 0
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _batches(loader: Iterable[dict[str, Any]], batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]]:
    """Re-batch block items into model batches of ``batch_size`` patches.

    Yields (patches, backgrounds, owners) where owners[k] = (block item, patch index);
    backgrounds has no rows when the items carry none (no seeding). A batch within one
    item is a view of it: patches are copied only where a batch spans two items.
    """
    patches: deque[torch.Tensor] = deque()
    backgrounds: deque[torch.Tensor] = deque()
    owners: list[tuple[int, int]] = []
    no_background: torch.Tensor | None = None
    count = 0

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        nonlocal owners, count
        taken, owners, count = owners[:n], owners[n:], count - n
        bkg = _take_rows(backgrounds, n) if backgrounds else no_background
        return _take_rows(patches, n), bkg, taken

    for item in loader:
        if "error" in item:
            raise SlideError(item["error"])
        n = item["patches"].shape[0]
        patches.append(item["patches"])
        if item["background"].shape[0]:
            backgrounds.append(item["background"])
        else:
            no_background = item["background"]
        owners.extend((int(item["block"]), k) for k in range(n))
        count += n
        while count >= batch_size:
            yield batch(batch_size)
    if count:
        yield batch(count)


class _BackgroundWriter:
    """Writes blocks on ``writers`` threads (each block is its own zarr chunks, so blocks
    are written at once) while the model runs; at most ``max_pending`` blocks wait, so
    memory stays bounded."""

    def __init__(self, store: ResultStore, writers: int = 1, max_pending: int = 8) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=max(1, writers), thread_name_prefix="wsi-seg-writer")
        self._slots = threading.BoundedSemaphore(max(max_pending, 2 * writers))
        self._futures: list[Future] = []

    def submit(self, index: tuple[int, int], y0: int, x0: int, acts: np.ndarray, mask: np.ndarray) -> None:
        self._raise_failed()
        self._slots.acquire()
        future = self._pool.submit(self.store.write_block, index, y0, x0, acts, mask)
        future.add_done_callback(lambda _: self._slots.release())
        self._futures.append(future)

    def _raise_failed(self) -> None:
        done, running = [], []
        for f in self._futures:
            (done if f.done() else running).append(f)
        self._futures = running
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


class _PlanAnnouncer:
    """Tells the plan (``on_plan``, the log) once its model-time estimate is known, and
    shows the progress bar from then on: at once where this process has the estimate
    (a cohort's later slides) or nothing is left to run, else after the run's own first
    batches (``ModelTimeEstimate``), so the estimate costs no model call."""

    def __init__(self, draft: SegmentPlan, estimate: ModelTimeEstimate,
                 on_plan: Callable[[SegmentPlan], None] | None, make_bar: Callable[[int], Any]) -> None:
        self.draft, self.estimate, self.on_plan, self.make_bar = draft, estimate, on_plan, make_bar
        self.bar: Any = None

    def announce(self, done: int) -> None:
        """Tell the plan now (with what was measured so far), if not told yet."""
        if self.bar is not None:
            return
        plan_ = replace(self.draft, seconds_per_patch=self.estimate.finish())
        log.info("%s", plan_.describe())
        if self.on_plan is not None:
            self.on_plan(plan_)
        self.bar = self.make_bar(done)

    def batch(self, seconds: float, patches: int, done: int) -> bool:
        """A batch of ``patches`` finished in ``seconds``; ``done`` patches in all. True
        once the plan was told (progress is reported from then on)."""
        if self.bar is None:
            if not self.estimate.add(seconds, patches):
                return False
            self.announce(done)
        else:
            self.bar.update(patches)
        return True

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class CancelFlag(Protocol):
    """What ``cancel`` may be: a ``threading.Event``, or anything with ``is_set()``."""

    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class SegmentProgress:
    """Reported after every batch: ``done`` of ``total`` tissue patches (resumed ones included)."""

    done: int
    total: int


def segment_slide(
    slide_path: str | Path,
    out: str | Path,
    model: LoadedModel,
    options: SegmentOptions = SegmentOptions(),
    on_progress: Callable[[int, int], None] | None = None,
    cancel: CancelFlag | None = None,
    on_plan: Callable[[SegmentPlan], None] | None = None,
) -> SegmentResult:
    """Segment one slide into an OME-Zarr at ``out`` (layout: ``wsi_seg.result.reader``).

    ``out`` must be new or a result of ours (``--overwrite``); the run holds the lock of
    ``out`` throughout. ``on_plan(plan)`` is called once, when the model-time estimate is
    known: after the run's first batches (before any, in a process that already ran
    this model with these settings). ``on_progress(patches_done, patches_total)`` is called after every batch. ``cancel``
    is checked before every batch: once set, the run raises :class:`Cancelled` and
    leaves its finished blocks in a resumable ``.partial`` (rerun to resume).
    """
    steps = segment_steps(slide_path, out, model, options, cancel, on_plan)
    while True:
        try:
            report = next(steps)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(report.done, report.total)


def segment_steps(
    slide_path: str | Path,
    out: str | Path,
    model: LoadedModel,
    options: SegmentOptions = SegmentOptions(),
    cancel: CancelFlag | None = None,
    on_plan: Callable[[SegmentPlan], None] | None = None,
) -> Generator[SegmentProgress, None, SegmentResult]:
    """:func:`segment_slide` as a generator: yields progress after every batch and returns
    the result, so a caller (a GUI job) drives the run in its own thread. Closing the
    generator early stops the run like ``cancel`` does, leaving a resumable ``.partial``.
    The lock on ``out`` is held from the first step until the generator ends.
    """
    out = Path(out)
    check_output(out, options.overwrite)
    with output_lock(out) as lock:
        if is_ours(replaced_path(out)):  # a crash during an earlier --overwrite's swap
            restore_replaced(out)
            check_output(out, options.overwrite)  # a restored result needs --overwrite like any other
        try:
            return (yield from _locked_steps(Path(slide_path), out, model, options, cancel, on_plan, lock))
        except NonFiniteOutput as exc:  # in the plan's estimate or in the loop: nothing is marked complete
            raise CheckpointError(f"{model.path}: {exc} on {slide_path}; the result is left incomplete (the "
                                  "checkpoint's weights overflow at this precision or are damaged)") from exc


def _locked_steps(
    slide_path: Path,
    out: Path,
    model: LoadedModel,
    options: SegmentOptions,
    cancel: CancelFlag | None,
    on_plan: Callable[[SegmentPlan], None] | None,
    lock: RunLock,
) -> Generator[SegmentProgress, None, SegmentResult]:
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    cfg = model.config
    rt = resolve_runtime(device=options.device, precision=options.precision, workers=options.workers,
                         batch_size=options.batch_size, threads=options.threads,
                         streams=options.streams)  # validates before any work
    device, workers = rt.device, rt.reader_workers
    with Slide(slide_path, mpp=options.mpp) as slide:
        t = time.perf_counter()
        grid, tissue_patches = plan(slide, cfg.mpp, cfg.patch_size_px, options)  # bounds first, then tissue
        timings["tissue"] = time.perf_counter() - t
        info = slide.info()  # the fingerprint, once the run is known to be sane
        reader_plan = plan_reader(options.reader, slide, cfg.mpp, device)
    warning = demo_on_real_warning(model.sha256, slide_path)  # the synthetic demo model on real tissue
    if warning is not None:
        log.warning("%s", warning)
    provenance = _provenance(info, model, grid, options)
    provenance["inference"] = {**rt.provenance(), "reader": reader_plan.provenance()}
    carry_from = _corrections_to_carry(out, provenance, options)  # refused here, before any compute
    rules = PredictRules.of_checkpoint(cfg)  # as evaluate and pseudo-labels predict this checkpoint
    if model.net.head.needs_background_seed:  # the CAM head's rules; a segmentation head has none
        provenance["predict_rules"] = rules.record()
    store = _prepare_store(out, grid, model, provenance, options.overwrite)
    blocks = grid.blocks(tissue_patches)
    done = store.done_blocks()
    todo = [b for b in blocks if b.index not in done]
    n_total = int(tissue_patches.sum())
    n_resumed = sum(len(b.patches) for b in blocks if b.index in done)
    n_skipped = grid.grid_shape[0] * grid.grid_shape[1] - n_total
    background_seed = BackgroundSeedParams.of_model(cfg)
    reader = BlockReader(reader_plan, str(slide_path), info.mpp if options.mpp is None else options.mpp,
                         grid, todo, background_seed, device, workers, rt.read_threads)
    net = model.net.to(device).eval()
    seeded = background_seed.enabled
    with torch_threads(rt.torch_threads), InferenceStreams(rt.streams) as streams:
        draft = SegmentPlan(str(slide_path), grid.out_shape, cfg.mpp, info.mpp if options.mpp is None else options.mpp,
                            n_total, sum(len(b.patches) for b in todo), math.nan, str(device))
        estimate = ModelTimeEstimate(net, rt, cfg.patch_size_px, seeded)
        announcer = _PlanAnnouncer(draft, estimate, on_plan, lambda done: tqdm(
            total=n_total, initial=done, desc=Path(slide_path).name, unit="patch", disable=not options.progress))
        if not todo or estimate.seconds_per_patch is not None:
            announcer.announce(n_resumed)
        store.open_for_writing(expected=[b.index for b in blocks])  # the store grows the pyramid as blocks come
        writer = _BackgroundWriter(store, rt.writers)
        assembler = _BlockAssembler(grid, todo, cfg.num_classes, writer)
        n_run = 0
        t_infer = time.perf_counter()
        try:
            batches = _batches(reader, rt.batch_size)
            while True:
                batch = next(batches, None)
                if batch is not None:
                    if cancel is not None and cancel.is_set():
                        raise Cancelled(f"{slide_path}: cancelled after {n_resumed + n_run} of {n_total} patches; "
                                        "rerun to resume")
                    patches, backgrounds, owners = batch
                    finished = streams.put(owners, timed, run_batch, net, rt, patches, backgrounds if seeded else None,
                                           rules)
                else:
                    finished = streams.drain()
                for ((acts, masks), seconds), done_owners in finished:
                    for k, (item, patch_idx) in enumerate(done_owners):
                        assembler.add(item, patch_idx, acts[k], masks[k])
                    n_run += len(done_owners)
                    if announcer.batch(seconds, len(done_owners), n_resumed + n_run):
                        yield SegmentProgress(n_resumed + n_run, n_total)
                if batch is None:
                    break
            announcer.announce(n_resumed + n_run)  # a run shorter than the estimate's round
        finally:
            streams.close()  # batches in flight end before the writer does
            announcer.close()
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
                 before_complete=(lambda new: carry_over(carry_from, new)) if carry_from is not None else None,
                 inference={**provenance["inference"], "reader": reader.provenance()})
    lock.moved(out)
    timings["pyramid"] = time.perf_counter() - t
    seconds = time.perf_counter() - t_start
    return SegmentResult(out, n_run, n_skipped, n_resumed, seconds, timings)
