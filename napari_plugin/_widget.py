"""The "Segment slide" dock widget: form → ``segment_job`` in a thread worker → result layers.

The pipeline lives in ``_jobs`` (plain Python); this module only builds the form, runs
the job in a napari ``thread_worker`` (progress bar, Cancel button, responsive UI) and
adds the result's layers when it is done. Engine errors show as a napari notification
with ``str(exc)``: the same one-line message the CLI prints.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from wsi_seg_napari import _notify
from wsi_seg_napari._jobs import (
    JobFailed,
    JobProgress,
    SegmentRequest,
    guarded_segment_job,
    gui_options,
)
from wsi_seg_napari._result_reader import result_layer_data
from wsi_seg_napari._slide_reader import METADATA_KEY as SLIDE_KEY
from wsi_seg_napari._slide_reader import SLIDE_EXTENSIONS
from wsi_seg_napari._viewer import add_layer_data, connect_until_closed, slide_layers

from wsi_seg.errors import ConfigError, WsiSegError
from wsi_seg.inference.options import SegmentOptions
from wsi_seg.result.format import partial_path

if TYPE_CHECKING:  # napari only for typing
    import napari
    from napari.layers import Layer
    from napari.qt.threading import GeneratorWorker

    from wsi_seg.inference.segment import SegmentResult

DEVICES = ("auto", "cpu", "cuda")
SLIDE_FILTER = "Slides (" + " ".join(f"*{e}" for e in SLIDE_EXTENSIONS) + ")"


def _text(edit: FileEdit) -> str:
    return str(edit.line_edit.value).strip()


class SegmentWidget(Container):
    """Choose a slide, a model and settings; segment the slide; show the result."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = napari_viewer
        self.slide_layer = ComboBox(label="slide layer", choices=self._slide_layer_choices, nullable=True)
        self.slide_file = FileEdit(label="slide file", mode="r", filter=SLIDE_FILTER)
        self.model = FileEdit(label="model", mode="r", filter="Checkpoints (*.safetensors)")
        self.model.tooltip = "checkpoint directory or .safetensors file; empty: the bundled demo model"
        self.device = ComboBox(label="device", choices=DEVICES, value="auto")
        self.batch_size = SpinBox(label="batch size (0 = auto)", value=0, min=0, max=1024)
        self.overlap = SpinBox(label="overlap (px)", value=SegmentOptions.overlap_px, min=0, max=96)
        self.mpp = FloatSpinBox(label="µm/px (0: from slide)", value=0.0, min=0.0, max=100.0, step=0.01)
        self.output = FileEdit(label="output", mode="w", filter="OME-Zarr (*.zarr)")
        self.overwrite = CheckBox(text="overwrite existing output", value=False)
        self.run_button = PushButton(text="Segment")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.status = Label(value="")
        self.extend([
            self.slide_layer, self.slide_file, self.model, self.device, self.batch_size, self.overlap,
            self.mpp, self.output, self.overwrite, self.run_button, self.cancel_button, self.progress,
            self.status,
        ])
        self.worker: GeneratorWorker | None = None
        self.last_result: SegmentResult | None = None
        self._request: SegmentRequest | None = None
        self._job: Generator[JobProgress, None, Any] | None = None
        self._cancel = threading.Event()
        self._closed = False
        self.slide_layer.changed.connect(self._on_slide_layer)
        self.run_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        connect_until_closed(self, [
            (napari_viewer.layers.events.inserted, self.reset_choices),
            (napari_viewer.layers.events.removed, self.reset_choices),
        ], on_close=self._cancel_on_close)
        self.reset_choices()

    # -- form -------------------------------------------------------------------
    def _slide_layer_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in slide_layers(self._viewer)]

    def _on_slide_layer(self, layer: Layer | None) -> None:
        if layer is None:
            return
        path = Path(layer.metadata[SLIDE_KEY]["path"])
        self.slide_file.value = path
        if not self.mpp.value and layer.metadata[SLIDE_KEY].get("mpp") is None:
            self.status.value = "this slide has no µm/px metadata: set µm/px before segmenting"
        if not _text(self.output):
            self.output.value = path.with_name(path.stem + ".zarr")

    def request(self) -> SegmentRequest:
        """The job the form describes; raises ``ConfigError`` for a missing slide."""
        slide = _text(self.slide_file)
        if not slide:
            raise ConfigError("choose a slide layer or a slide file to segment")
        slide_path = Path(slide)
        out = _text(self.output)
        model = _text(self.model)
        return SegmentRequest(
            slide_path=slide_path,
            out=Path(out) if out else slide_path.with_name(slide_path.stem + ".zarr"),
            model_path=Path(model) if model else None,
            options=gui_options(
                device=str(self.device.value),
                batch_size=int(self.batch_size.value) or None,
                overlap_px=int(self.overlap.value),
                mpp=float(self.mpp.value) or None,
                overwrite=bool(self.overwrite.value),
            ),
        )

    # -- running ----------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self) -> GeneratorWorker | None:
        """Start segmenting in a worker thread; returns the worker (None if the form is invalid)."""
        from napari.qt.threading import create_worker

        if self.running:
            return self.worker
        try:
            request = self.request()
        except WsiSegError as exc:
            _notify.error(str(exc))
            self.status.value = str(exc)
            return None
        self._cancel = threading.Event()
        self._request = request
        job = guarded_segment_job(request, self._cancel)
        self._job = job

        def run_job():  # a generator function, so napari makes a GeneratorWorker of it
            return (yield from job)

        worker = create_worker(run_job)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_returned)
        worker.aborted.connect(self._on_aborted)  # worker.quit(), e.g. from napari's activity dock
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._set_running(True)
        self.status.value = f"segmenting {request.slide_path.name} → {request.out}"
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop after the current batch; the run stays resumable in ``<output>.partial``."""
        if self.running:
            self._cancel.set()
            self.cancel_button.enabled = False
            self.status.value = "cancelling after the current batch…"

    def _cancel_on_close(self) -> None:
        """The dock was closed: stop a running job (resumable) and stop updating the form."""
        self._closed = True
        self._cancel.set()

    def _set_running(self, running: bool) -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running
        if running:
            self.progress.max, self.progress.value = 0, 0  # busy until the total is known

    def _on_progress(self, report: JobProgress) -> None:
        if self._closed:
            return
        if report.total:
            self.progress.max = report.total
            self.progress.value = min(report.done, report.total)
        if not self._cancel.is_set():
            self.status.value = report.text

    def _on_aborted(self) -> None:
        self._cancel.set()
        if self._job is not None:  # the worker stopped iterating: stop the run, keep its .partial
            self._job.close()
        self._on_returned(None)

    def _on_returned(self, result: SegmentResult | JobFailed | None) -> None:
        assert self._request is not None
        if self._closed:
            return
        if isinstance(result, JobFailed):
            self.last_result = None
            self.status.value = result.message
            _notify.error(result.message)
            return
        self.last_result = result
        if result is None:
            self.status.value = (
                f"cancelled; the partial run is kept in {partial_path(self._request.out).name}: "
                "press Segment again (overwrite off) to resume"
            )
            _notify.info(self.status.value)
            return
        resumed = f", {result.patches_resumed} resumed" if result.patches_resumed else ""
        self.status.value = (
            f"{result.patches_run} patches run, {result.patches_skipped} skipped{resumed}, "
            f"{result.seconds:.1f} s → {result.out.name}"
        )
        slide = str(self._request.slide_path.resolve())
        shown = any(layer.metadata[SLIDE_KEY].get("path") == slide for layer in slide_layers(self._viewer))
        try:
            add_layer_data(self._viewer, result_layer_data(result.out, include_slide=not shown))
        except WsiSegError as exc:
            _notify.error(str(exc))

    def _on_finished(self) -> None:
        self.worker = None
        if self._closed:
            return
        self._set_running(False)
        if not self.progress.max:
            self.progress.max = 1
