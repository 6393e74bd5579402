"""The segment job behind the "Segment slide" widget, as a plain generator (no Qt).

``segment_job`` yields ``JobProgress`` while ``wsi_seg.segment.segment_slide`` runs and
returns its ``SegmentResult`` (or None when cancelled). The widget runs it in a napari
``thread_worker``; tests drive it directly. Cancelling sets a ``threading.Event``; the
engine's ``on_progress`` callback raises ``JobCancelled`` at the next batch boundary,
which stops the run with its resumable ``<out>.partial`` store left in place, never a
complete-looking output.

The engine thread hands each batch's report over and waits until this generator has
passed it on (a thread worker does so at once), so a cancel set by whoever receives a
report is always seen before the next batch starts, and pausing the worker pauses the
run.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_seg.errors import WsiSegError

if TYPE_CHECKING:
    from wsi_seg.segment import SegmentOptions, SegmentResult

log = logging.getLogger(__name__)

STAGE_MODEL = "loading model"
STAGE_TISSUE = "finding tissue"
STAGE_SEGMENT = "segmenting"
STAGE_PYRAMID = "building pyramid"


class JobCancelled(Exception):
    """Raised from the progress callback to stop a run the user cancelled."""


@dataclass(frozen=True)
class SegmentRequest:
    """What the widget asks for; mirrors ``wsi-seg segment`` flags."""

    slide_path: Path
    out: Path
    model_path: Path | None = None  # None: the bundled demo model
    device: str = "auto"
    batch_size: int | None = None  # None: the engine's default for the device
    overlap_px: int = 32
    mpp: float | None = None  # level-0 µm/px for slides without metadata
    overwrite: bool = False
    workers: int = 0  # reader processes; 0 reads in-process (no fork from a Qt app)

    def options(self) -> SegmentOptions:
        from wsi_seg.segment import SegmentOptions

        return SegmentOptions(
            device=self.device, batch_size=self.batch_size, workers=self.workers,
            overlap_px=self.overlap_px, mpp=self.mpp, overwrite=self.overwrite, progress=False,
        )


@dataclass(frozen=True)
class JobProgress:
    """One progress report; ``total == 0`` means the stage's length is unknown."""

    stage: str
    done: int = 0
    total: int = 0

    @property
    def text(self) -> str:
        if self.total:
            return f"{self.stage}: {self.done}/{self.total} patches"
        return f"{self.stage}…"


@dataclass(frozen=True)
class JobFailed:
    """How a job ended when it raised: the one-line message for the user, and the error."""

    message: str
    error: BaseException


_DONE = object()


def segment_job(
    request: SegmentRequest, cancel: threading.Event | None = None
) -> Generator[JobProgress, None, SegmentResult | None]:
    """Run one segmentation, yielding progress; returns the result, or None if cancelled.

    Errors of the engine (``WsiSegError`` and subclasses) propagate unchanged, so the
    caller can show ``str(exc)``, the same one-line message as the CLI. ``segment_slide``
    runs in a helper thread so that this generator can yield while it works; closing
    the generator early cancels the run and waits for it to stop.
    """
    from wsi_seg.model.checkpoint import load_checkpoint
    from wsi_seg.model.default import default_model_path
    from wsi_seg.runtime import resolve_device
    from wsi_seg.segment import segment_slide

    cancel = cancel if cancel is not None else threading.Event()
    options = request.options()  # validates (ConfigError) before any work
    yield JobProgress(STAGE_MODEL)
    device = resolve_device(request.device)
    model = load_checkpoint(request.model_path or default_model_path(), device=device)
    if cancel.is_set():
        return None

    events: queue.SimpleQueue[Any] = queue.SimpleQueue()
    consumed = threading.Semaphore(0)
    outcome: dict[str, Any] = {}

    def on_progress(done: int, total: int) -> None:
        events.put(JobProgress(STAGE_PYRAMID if done >= total else STAGE_SEGMENT, done, total))
        # wait until the report is taken, so a cancel set on seeing it stops the next batch;
        # stop waiting on a cancel too, in case the consumer is gone (an aborted worker)
        while not consumed.acquire(timeout=0.2) and not cancel.is_set():
            pass
        if cancel.is_set():
            raise JobCancelled(f"{request.slide_path}: cancelled after {done} of {total} patches")

    def run() -> None:
        try:
            outcome["result"] = segment_slide(request.slide_path, request.out, model, options, on_progress=on_progress)
        except JobCancelled:
            outcome["cancelled"] = True
        except BaseException as exc:  # handed to the caller's thread below, not swallowed
            outcome["error"] = exc
        finally:
            events.put(_DONE)

    thread = threading.Thread(target=run, name=f"wsi-seg segment {request.slide_path.name}", daemon=True)
    yield JobProgress(STAGE_TISSUE)
    thread.start()
    try:
        while (report := events.get()) is not _DONE:
            yield report
            consumed.release()
    finally:
        if thread.is_alive():  # generator closed early: stop the run cleanly
            cancel.set()
            consumed.release()
            thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


def guarded_segment_job(
    request: SegmentRequest, cancel: threading.Event | None = None
) -> Generator[JobProgress, None, SegmentResult | JobFailed | None]:
    """``segment_job`` that returns ``JobFailed`` instead of raising.

    For GUI workers: the message of a ``WsiSegError`` is ``str(exc)``, as the CLI prints
    it; anything else is a bug, logged with its traceback and reported in one line.
    """
    try:
        return (yield from segment_job(request, cancel))
    except WsiSegError as exc:
        return JobFailed(str(exc), exc)
    except Exception as exc:  # not swallowed: logged with traceback, shown to the user
        log.error("segmentation failed", exc_info=exc)
        return JobFailed(f"segmentation failed: {type(exc).__name__}: {exc}", exc)


def run_to_end(job: Generator[JobProgress, None, Any]) -> tuple[list[JobProgress], Any]:
    """Drive a job generator in the calling thread: (all progress reports, return value)."""
    reports = []
    while True:
        try:
            reports.append(next(job))
        except StopIteration as stop:
            return reports, stop.value
