"""The segment job behind the "Segment slide" widget, as a plain generator (no Qt).

``segment_job`` drives the engine's ``wsi_seg.inference.segment.segment_steps`` in the caller's
thread, yields ``JobProgress`` after each batch and returns its ``SegmentResult`` (or
None when cancelled). The widget runs it in a napari ``thread_worker``; tests drive it
directly. Cancelling sets a ``threading.Event`` that the engine checks before every
batch (``Cancelled``), so a cancel set by whoever receives a report stops the run
before its next batch, with its resumable ``<out>.partial`` store left in place, never
a complete-looking output. Pausing the worker pauses the run, and closing the
generator early stops it the same way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_seg.errors import Cancelled, WsiSegError
from wsi_seg.inference.options import SegmentOptions

if TYPE_CHECKING:
    from wsi_seg.inference.segment import SegmentResult

log = logging.getLogger(__name__)

STAGE_MODEL = "loading model"
STAGE_TISSUE = "finding tissue"
STAGE_SEGMENT = "segmenting"
STAGE_PYRAMID = "building pyramid"


def gui_options(**changes: Any) -> SegmentOptions:
    """The engine's options with what a GUI needs: no progress bars, and reading in-process
    (no reader processes forked from a Qt app); ``changes`` set other fields."""
    return SegmentOptions(**{"workers": 0, "progress": False, **changes})


@dataclass(frozen=True)
class SegmentRequest:
    """What the widget asks for: a slide, an output, a model and the engine's own options."""

    slide_path: Path
    out: Path
    model_path: Path | None = None  # None: the bundled demo model
    options: SegmentOptions = field(default_factory=gui_options)


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


def segment_job(
    request: SegmentRequest, cancel: threading.Event | None = None
) -> Generator[JobProgress, None, SegmentResult | None]:
    """Run one segmentation, yielding progress; returns the result, or None if cancelled.

    Errors of the engine (``WsiSegError`` and subclasses) propagate unchanged, so the
    caller can show ``str(exc)``, the same one-line message as the CLI.
    """
    from wsi_seg.inference.runtime import resolve_device
    from wsi_seg.inference.segment import segment_steps
    from wsi_seg.model.checkpoint import load_checkpoint
    from wsi_seg.model.default import default_model_path

    yield JobProgress(STAGE_MODEL)
    model = load_checkpoint(request.model_path or default_model_path(), device=resolve_device(request.options.device))
    if cancel is not None and cancel.is_set():
        return None
    yield JobProgress(STAGE_TISSUE)
    steps = segment_steps(request.slide_path, request.out, model, request.options, cancel)
    try:
        while True:
            try:
                report = next(steps)
            except StopIteration as stop:
                return stop.value
            yield JobProgress(STAGE_PYRAMID if report.done >= report.total else STAGE_SEGMENT, report.done, report.total)
    except Cancelled:
        return None
    finally:
        steps.close()  # closed early (GeneratorExit): the engine stops and keeps its .partial


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
