"""Block reading for inference: which slide decoder a run uses, and the block items it
feeds the model with, read by DataLoader workers while the model runs.

Each item is one block: the slide region under all its patches is read once (from the
nearest pyramid level not coarser than the model's µm/px), brought to the model's µm/px
and cut into patches. Three decoders do the reading (``READERS``):

- ``openslide``: ``Slide.read_at_mpp``; every format OpenSlide opens;
- ``jpeg-cpu``: the level's raw JPEG tiles (Aperio SVS, generic tiled TIFF) decoded by
  PIL in the workers, at 1/2, 1/4 or 1/8 scale when the level is that much finer than
  the model (``decode.reduced``);
- ``jpeg-device``: workers only read the tiles' bytes; the main process decodes them in
  batches on the model's device and resizes and seeds there (``decode.device``).

``auto`` takes ``jpeg-device`` on CUDA and ``jpeg-cpu`` on the CPU where the level is
made of JPEG tiles, else ``openslide``.
"""

from __future__ import annotations

import math
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from wsi_seg.errors import ConfigError, SlideError, WsiSegError
from wsi_seg.inference.options import READERS
from wsi_seg.inference.tiling import Block, TileGrid
from wsi_seg.slide.decode.reduced import JpegRegionReader, dct_reduction
from wsi_seg.slide.decode.tiff_jpeg import (
    JPEG_TILE_VENDORS,
    JpegLevel,
    TileFile,
    find_jpeg_level,
)
from wsi_seg.slide.slide import Slide
from wsi_seg.slide.tissue import BackgroundSeedParams


@dataclass(frozen=True)
class ReaderPlan:
    """The decoder a run uses and what it was chosen from (recorded in the provenance)."""

    requested: str  # one of READERS
    used: str  # openslide | jpeg-cpu | jpeg-device
    level: int  # pyramid level read
    downsample: float  # of that level
    dct_reduction: int = 1  # jpeg-cpu: tiles decoded at 1/dct_reduction scale
    jpeg: JpegLevel | None = None
    reason: str = ""  # why JPEG tiles are not used, when they are not
    # blocks may be read by several threads at once (our JPEG tile reader, OpenSlide on TIFF
    # slides); else one thread reads
    parallel_reads: bool = True

    def provenance(self) -> dict[str, Any]:
        out: dict[str, Any] = {"requested": self.requested, "used": self.used, "level": self.level}
        if self.used == "jpeg-cpu":
            out["dct_reduction"] = self.dct_reduction
        if self.jpeg is not None:
            out["tiff_page"] = self.jpeg.page
        if self.reason:
            out["reason"] = self.reason
        return out


def plan_reader(requested: str, slide: Slide, model_mpp: float, device: torch.device) -> ReaderPlan:
    """The decoder for reading ``slide`` at ``model_mpp`` for a model on ``device``.

    ``requested`` "openslide" always works; "jpeg-cpu" / "jpeg-device" need the level
    to be plain JPEG tiles and raise ConfigError otherwise; "auto" picks.
    """
    if requested not in READERS:
        raise ConfigError(f"unknown reader {requested!r}; use one of {', '.join(READERS)}")
    level = slide.level_for_mpp(model_mpp)
    ds = slide.level_downsamples[level]
    # OpenSlide reads TIFF-based slides on any thread (a TIFF handle each); its PNG reader
    # failed when two threads read at once ("broken PNG file"), and wsidicom has no such promise
    parallel = slide.reader == "openslide" and slide.vendor in JPEG_TILE_VENDORS
    if requested == "openslide":
        return ReaderPlan(requested, "openslide", level, ds, parallel_reads=parallel)
    if slide.reader != "openslide":  # "openslide" below then means Slide.read_at_mpp, through that library
        jpeg, why = None, f"a {slide.vendor} slide that {slide.reader} reads (not OpenSlide), not read tile by tile"
    elif slide.vendor not in JPEG_TILE_VENDORS:
        jpeg, why = None, f"OpenSlide format {slide.vendor!r} is not read tile by tile"
    else:
        jpeg, why = find_jpeg_level(slide.path, slide.level_dimensions[level])
    if jpeg is None:
        if requested == "auto":
            return ReaderPlan(requested, "openslide", level, ds, reason=why, parallel_reads=parallel)
        raise ConfigError(f"{slide.path}: --reader {requested} needs pyramid level {level} in JPEG tiles "
                          f"({why}); use --reader auto or openslide")
    used = requested if requested != "auto" else ("jpeg-device" if device.type == "cuda" else "jpeg-cpu")
    reduction = dct_reduction(model_mpp / (slide.mpp * ds)) if used == "jpeg-cpu" else 1
    return ReaderPlan(requested, used, level, ds, reduction, jpeg)


def level_box(grid: TileGrid, block: Block, downsample: float) -> tuple[tuple[float, float, float, float], tuple[int, int]]:
    """(level-pixel box (x0, y0, x1, y1), output size (W, H)) of a block's read window,
    with ``Slide.read_at_mpp``'s geometry: read from ``floor(level-0 x0)`` over
    ``ceil(width / downsample)`` level pixels, then resized to the output size."""
    y0, x0, y1, x1 = grid.block_read_window(block)
    bx0, by0, bx1, by1 = x0 / grid.scale, y0 / grid.scale, x1 / grid.scale, y1 / grid.scale
    read_w = max(1, math.ceil((bx1 - bx0) / downsample))
    read_h = max(1, math.ceil((by1 - by0) / downsample))
    lx0, ly0 = math.floor(bx0) / downsample, math.floor(by0) / downsample
    return (lx0, ly0, lx0 + read_w, ly0 + read_h), (x1 - x0, y1 - y0)


class BlockDataset(Dataset):
    """Items: dict(block=int, patches=(n, 3, P, P) uint8, background=(n, P, P) bool or empty).

    Decodes with OpenSlide, or with ``jpeg-cpu`` when ``plan`` says so. A block that
    cannot be read gives dict(block=int, error=message) instead.
    """

    def __init__(
        self,
        slide_path: str,
        slide_mpp: float,
        grid: TileGrid,
        blocks: list[Block],
        background_seed: BackgroundSeedParams = BackgroundSeedParams(enabled=False),
        plan: ReaderPlan | None = None,
    ) -> None:
        self.slide_path = slide_path
        self.slide_mpp = slide_mpp
        self.grid = grid
        self.blocks = blocks
        self.background_seed = background_seed
        self.plan = plan
        self._slide: Slide | JpegRegionReader | None = None
        self._opening = threading.Lock()

    def __len__(self) -> int:
        return len(self.blocks)

    def _open(self) -> Slide | JpegRegionReader:
        # opened lazily so each DataLoader worker process has its own handle; once for
        # the reading threads of a process
        with self._opening:
            if self._slide is None:
                p = self.plan
                if p is not None and p.used == "jpeg-cpu" and p.jpeg is not None:
                    self._slide = JpegRegionReader(p.jpeg, p.downsample, p.dct_reduction)
                else:
                    self._slide = Slide(self.slide_path, mpp=self.slide_mpp)
            return self._slide

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_slide"], state["_opening"] = None, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _opening=threading.Lock())

    def read_block(self, block: Block) -> np.ndarray:
        """(H, W, 3) uint8 RGB of the block's read window at the model's µm/px."""
        g = self.grid
        y0, x0, y1, x1 = g.block_read_window(block)
        box = (x0 / g.scale, y0 / g.scale, x1 / g.scale, y1 / g.scale)
        return self._open().read_at_mpp(box, (x1 - x0, y1 - y0))

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor | int | str]:
        block = self.blocks[idx]
        try:
            rgb = self.read_block(block)
        except WsiSegError as exc:
            # returned, not raised: a worker's exception would reach the user wrapped
            # in its traceback; the consumer raises it again as one clean line
            return {"block": idx, "error": str(exc)}
        bkg = self.background_seed.seed(rgb) if self.background_seed.enabled else None
        p = self.grid.patch_px
        n = len(block.patches)
        # in a reader process the item is made in shared memory, which is how it reaches
        # the main process: handed over without another copy
        shared = get_worker_info() is not None
        patches = _empty((n, 3, p, p), torch.uint8, shared)
        backgrounds = _empty((n, p, p) if bkg is not None else (0, p, p), torch.bool, shared)
        chw = np.ascontiguousarray(rgb.transpose(2, 0, 1))  # one transposition for the block
        out_p, out_b = patches.numpy(), backgrounds.numpy()
        for k, (y, x) in enumerate(self.grid.patch_corners(block)):
            out_p[k] = chw[:, y : y + p, x : x + p]
            if bkg is not None:
                out_b[k] = bkg[y : y + p, x : x + p]
        return {"block": idx, "patches": patches, "background": backgrounds}


def _empty(shape: tuple[int, ...], dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """An uninitialised tensor, made in shared memory when ``shared`` (as DataLoader's
    default_collate makes a worker's batch: ``share_memory_()`` would copy it there)."""
    n = math.prod(shape)
    if not shared or n == 0:
        return torch.empty(shape, dtype=dtype)
    storage = torch.UntypedStorage._new_shared(n * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)


class TileBytesDataset(Dataset):
    """Items for ``jpeg-device``: dict(block=int, streams=[bytes], where=[(row, col)]),
    the complete JPEG streams of the tiles under a block's read window (not decoded)."""

    def __init__(self, level: JpegLevel, downsample: float, grid: TileGrid, blocks: list[Block]) -> None:
        self.level, self.downsample, self.grid, self.blocks = level, downsample, grid, blocks
        self._file = TileFile(level.path)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        (x0, y0, x1, y1), _ = level_box(self.grid, self.blocks[idx], self.downsample)
        streams, where = [], []
        try:
            for row, col in self.level.tiles_in(math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)):
                stream = self._file.read(self.level, row, col)
                if stream is not None:
                    streams.append(stream)
                    where.append((row, col))
        except (OSError, ValueError) as exc:
            return {"block": idx, "error": f"{self.level.path}: cannot read JPEG tiles of TIFF page "
                                           f"{self.level.page} ({exc})"}
        return {"block": idx, "streams": streams, "where": where}


# In-process reading runs on background threads ahead of the model (``Runtime.read_threads``
# for blocks decoded on the CPU, one thread for jpeg-device): decoding (simplejpeg,
# OpenSlide, PIL, the GPU), the blur and most of the seeding release the GIL.
PREFETCH_THREAD = True
_PREFETCH_DEPTH = 2


def prefetched(items: Iterator[Any], depth: int = _PREFETCH_DEPTH) -> Iterator[Any]:
    """``items`` produced on a background thread at most ``depth`` ahead; an exception
    there is raised here; stopping early (break, error, GC) stops the thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(x: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # re-raised in the consumer
            put(_Raised(exc))
            return
        put(done)

    thread = threading.Thread(target=produce, name="wsi-seg-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()


def ordered_map(fn: Callable[[int], Any], n: int, threads: int, depth: int | None = None) -> Iterator[Any]:
    """``fn(0) … fn(n - 1)`` computed on ``threads`` background threads, at most ``depth``
    (default 2 per thread) ahead, yielded in order. An exception is raised here at its
    item; stopping early (break, error, GC) cancels what has not started and waits for
    the rest."""
    depth = max(1, depth if depth is not None else 2 * threads)
    pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="wsi-seg-reader")
    pending: deque[Future] = deque()
    try:
        for i in range(n):
            pending.append(pool.submit(fn, i))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class _Raised:
    exc: BaseException


class BlockReader:
    """The block items of one run, in order: an iterable of dict(block, patches,
    background) as ``BlockDataset`` gives them, with ``jpeg-device`` items decoded,
    resized and seeded on ``device`` (their tensors are already there)."""

    def __init__(self, plan: ReaderPlan, slide_path: str, slide_mpp: float, grid: TileGrid, blocks: list[Block],
                 background_seed: BackgroundSeedParams, device: torch.device, workers: int,
                 read_threads: int = 1) -> None:
        self.plan, self.grid, self.blocks, self.background_seed, self.device = plan, grid, blocks, background_seed, device
        self.prefetch_thread = PREFETCH_THREAD
        self.read_threads = read_threads
        self.decoder = None
        if plan.used == "jpeg-device" and plan.jpeg is not None:
            from wsi_seg.slide.decode.device import TileDecoder

            self.decoder = TileDecoder(device)
            dataset: Dataset = TileBytesDataset(plan.jpeg, plan.downsample, grid, blocks)
        else:
            dataset = BlockDataset(slide_path, slide_mpp, grid, blocks, background_seed, plan)
        self.loader = DataLoader(
            dataset, batch_size=None, shuffle=False, num_workers=workers,
            pin_memory=device.type == "cuda" and self.decoder is None,
            prefetch_factor=4 if workers else None, persistent_workers=False,
        )

    def __len__(self) -> int:
        return len(self.blocks)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.prefetch_thread and self.loader.num_workers == 0 and self.decoder is None:
            items = self._read_in_threads()  # in-process CPU decoding, on read_threads threads
        else:
            items = self._produce()
            # device decoding runs on a thread ahead of the model (reader processes do their own)
            if self.prefetch_thread and self.decoder is not None:
                items = prefetched(items)
        for item in items:
            ready = item.pop("ready", None)
            if ready is not None:  # made on the reader's CUDA stream: the model's waits for it
                stream = torch.cuda.current_stream(self.device)
                stream.wait_event(ready)
                item["patches"].record_stream(stream)
                item["background"].record_stream(stream)
            yield item

    def _read_in_threads(self) -> Iterator[dict[str, Any]]:
        """Blocks read and seeded in this process by ``read_threads`` threads, in order;
        pinned for a copy to CUDA that overlaps the model, as the loader would pin them."""
        dataset = self.loader.dataset
        threads = self.read_threads if self.plan.parallel_reads else 1
        for item in ordered_map(dataset.__getitem__, len(dataset), threads):
            if self.loader.pin_memory and "patches" in item:
                item["patches"], item["background"] = item["patches"].pin_memory(), item["background"].pin_memory()
            yield item

    def _produce(self) -> Iterator[dict[str, Any]]:
        """Loader items, decoded on the device for jpeg-device; on CUDA on a stream of their
        own, so decoding overlaps the model and waits on it only where it must."""
        if self.decoder is None:
            yield from self.loader
            return
        with torch.inference_mode():
            if self.device.type != "cuda":
                for item in self.loader:
                    yield item if "error" in item else self._on_device(item)
                return
            stream = torch.cuda.Stream(self.device)
            with torch.cuda.device(self.device), torch.cuda.stream(stream):
                for item in self.loader:
                    if "error" not in item:
                        item = self._on_device(item)
                        if "patches" in item:
                            item["ready"] = torch.cuda.Event()
                            item["ready"].record(stream)
                    yield item

    def _on_device(self, item: dict[str, Any]) -> dict[str, Any]:
        from wsi_seg.slide.decode.device import assemble_region
        from wsi_seg.slide.decode.device_seed import background_seed

        idx = int(item["block"])
        block, level = self.blocks[idx], self.plan.jpeg
        assert level is not None and self.decoder is not None
        box, out_size = level_box(self.grid, block, self.plan.downsample)
        try:
            tiles = self.decoder.decode(level, item["streams"], item["where"]) if item["streams"] else []
        except SlideError as exc:
            return {"block": idx, "error": str(exc)}
        rgb = assemble_region(level, tiles, item["where"], box, out_size, self.device)
        if not self.background_seed.enabled:
            bkg = None
        elif self.device.type == "cuda":
            bkg = background_seed(rgb, self.background_seed)
        else:  # skimage is faster than the tensor version on the CPU
            bkg = torch.from_numpy(self.background_seed.seed(rgb.permute(1, 2, 0).numpy()))
        p = self.grid.patch_px
        corners = self.grid.patch_corners(block)
        patches = torch.stack([rgb[:, y : y + p, x : x + p] for y, x in corners])
        if bkg is None:
            backgrounds = torch.zeros((0, p, p), dtype=torch.bool, device=self.device)
        else:
            backgrounds = torch.stack([bkg[y : y + p, x : x + p] for y, x in corners])
        return {"block": idx, "patches": patches, "background": backgrounds}

    def provenance(self) -> dict[str, Any]:
        """The plan, plus tiles decoded on the device and CPU fallbacks for ``jpeg-device``."""
        out = self.plan.provenance()
        if self.decoder is not None:
            out["device_tiles"] = self.decoder.tiles
            out["cpu_fallbacks"] = self.decoder.fallbacks
        return out
