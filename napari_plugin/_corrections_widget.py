"""The "Corrections" dock widget: paint corrections over a result, save them to ``labels/corrected``.

"Previous / Next region" walk the regions ``wsi-seg review`` ranks (most uncertain tissue
first, corrected ones left out: :mod:`wsi_seg.reports.review`), centring the view on each;
"Show uncertainty" adds the per-pixel uncertainty (:mod:`wsi_seg.result.uncertainty`) as
a lazy image layer. Logic lives in ``_corrections`` (no Qt); this widget wires it to buttons. Errors are one
line, shown in the widget and as a napari notification; nothing is half-written (see
``wsi_seg.result.corrections``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import Container, Label, PushButton
from wsi_seg_napari import _notify
from wsi_seg_napari._corrections import (
    EDIT_KEY,
    edit_layer_kwargs,
    edit_layers,
    level0_box,
    load_edit_region,
    visible_world_box,
)
from wsi_seg_napari._result_reader import RESULT_KEY, label_colormap, labels_layer_data
from wsi_seg_napari._summary_widget import current_mask_layer, result_mask_layers

from wsi_seg.errors import WsiSegError
from wsi_seg.reports.review import Region, rank_regions
from wsi_seg.reports.review_options import ReviewOptions
from wsi_seg.result.corrections import CorrectionSave, open_for_corrections
from wsi_seg.result.format import CORRECTED_NAME
from wsi_seg.result.reader import Result

if TYPE_CHECKING:  # napari only for typing
    import napari
    from napari.layers import Image, Labels

HELP_TEXT = (
    "1. Zoom to a region and press <b>Edit visible region</b>.<br>"
    "2. Paint with napari's brush or fill: the label is the class<br>"
    "&nbsp;&nbsp;&nbsp;(hover to see class names; 0 erases to background).<br>"
    "3. <b>Save corrections</b> writes them to labels/corrected;<br>"
    "&nbsp;&nbsp;&nbsp;the model's labels/mask is never changed.<br>"
    "<b>Next region</b> goes to the next most uncertain region not yet corrected."
)
UNCERTAINTY_KIND = "uncertainty"  # metadata kind of the uncertainty layer


class CorrectionsWidget(Container):
    """Edit the labels in view, then save the edits into the result."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = napari_viewer
        self.help = Label(value=HELP_TEXT)
        self.edit_button = PushButton(text="Edit visible region")
        self.save_button = PushButton(text="Save corrections")
        self.previous_button = PushButton(text="◀ Previous region")
        self.next_button = PushButton(text="Next region ▶")
        self.uncertainty_button = PushButton(text="Show uncertainty")
        self.status = Label(value="")
        self.extend([self.help, self.previous_button, self.next_button, self.edit_button, self.save_button,
                     self.uncertainty_button, self.status])
        self.edit_button.clicked.connect(self.edit_visible_region)
        self.save_button.clicked.connect(self.save)
        self.next_button.clicked.connect(lambda: self.go_to_region(+1))
        self.previous_button.clicked.connect(lambda: self.go_to_region(-1))
        self.uncertainty_button.clicked.connect(self.show_uncertainty)
        self.review_options = ReviewOptions()
        self._regions: dict[str, list[Region]] = {}  # result path → its ranked regions
        self._region_index = -1

    def _fail(self, exc: WsiSegError) -> None:
        self.status.value = str(exc)
        _notify.error(str(exc))

    def edit_visible_region(self) -> Labels | None:
        """Add a paintable layer with the labels in view (corrected ones when there are)."""
        mask_layer = current_mask_layer(self._viewer)
        if mask_layer is None:
            self.status.value = "Open a wsi-seg result first."
            return None
        try:
            result = open_for_corrections(mask_layer.metadata[RESULT_KEY]["path"])  # refusals before painting
            box = level0_box(visible_world_box(self._viewer), tuple(mask_layer.scale[-2:]),
                             tuple(mask_layer.translate[-2:]), result.level_shape(0))
            if box is None:
                self.status.value = "The view shows none of the result; pan or zoom onto it."
                return None
            region = load_edit_region(result, box)
        except WsiSegError as exc:
            self._fail(exc)
            return None
        kwargs = edit_layer_kwargs(result, region, tuple(mask_layer.scale[-2:]), tuple(mask_layer.translate[-2:]),
                                   label_colormap(result))
        layer = self._viewer.add_labels(region.before.copy(), **kwargs)
        layer.mode = "paint"
        layer.selected_label = 1
        self._viewer.layers.selection.active = layer
        h, w = region.before.shape
        self.status.value = f"Editing {w} × {h} px at level {region.level} ({2**region.level}× level 0)."
        return layer

    def save(self) -> list[CorrectionSave]:
        """Save every edit layer's changes; show the corrected labels."""
        saved: list[CorrectionSave] = []
        layers = edit_layers(self._viewer)
        if not layers:
            self.status.value = "Nothing to save: press Edit visible region and paint first."
            return saved
        paths = set()
        for layer in layers:
            region = layer.metadata[EDIT_KEY]
            try:
                record = region.save(layer.data)
            except WsiSegError as exc:
                self._fail(exc)
                return saved
            saved.append(record)
            if record.pixels_changed:
                paths.add(region.path)
        for path in paths:
            self._show_corrected(path)
            self._regions.pop(path, None)  # corrected regions drop out of the list
        pixels = sum(r.pixels_changed for r in saved)
        chunks = sum(len(r.chunks) for r in saved)
        self.status.value = (f"Saved {pixels:,} px in {chunks} chunks to labels/{CORRECTED_NAME}."
                             if pixels else "No changes to save.")
        if pixels:
            _notify.info(self.status.value)
        return saved

    def regions(self, path: str, refresh: bool = False) -> list[Region]:
        """The ranked regions of the result at ``path`` (computed once, again after a save)."""
        if refresh or path not in self._regions:
            self._regions[path] = rank_regions(Result.open(path), self.review_options)
            self._region_index = -1
        return self._regions[path]

    def go_to_region(self, step: int = 1) -> Region | None:
        """Centre the view on the next (``step`` 1) or previous (-1) ranked region."""
        mask_layer = current_mask_layer(self._viewer)
        if mask_layer is None:
            self.status.value = "Open a wsi-seg result first."
            return None
        try:
            regions = self.regions(mask_layer.metadata[RESULT_KEY]["path"])
        except WsiSegError as exc:
            self._fail(exc)
            return None
        if not regions:
            self.status.value = "No uncertain region left outside the corrected ones."
            return None
        self._region_index = (self._region_index + step) % len(regions)
        region = regions[self._region_index]
        (sy, sx), (ty, tx) = tuple(mask_layer.scale[-2:]), tuple(mask_layer.translate[-2:])
        center = (ty + (region.y0 + region.side / 2 - 0.5) * sy, tx + (region.x0 + region.side / 2 - 0.5) * sx)
        canvas = getattr(self._viewer, "canvas", None)
        size = min(canvas.size) if canvas is not None else min(self._viewer._canvas_size)
        camera = self._viewer.scene.camera if hasattr(self._viewer, "scene") else self._viewer.camera
        camera.center = center
        camera.zoom = 0.9 * size / (region.side * max(sy, sx))
        self.status.value = (f"Region {self._region_index + 1} of {len(regions)}: "
                             f"{region.uncertain_um2 / 1e6:.4f} mm² uncertain ({region.uncertain_fraction:.0%} of its "
                             f"tissue, mostly {region.main_class}). Edit visible region to correct it.")
        return region

    def show_uncertainty(self) -> Image | None:
        """Add (or show again) the uncertainty of the current result as an image layer."""
        from wsi_seg.result.uncertainty import UNCERTAINTY_NAME, uncertainty_pyramid

        mask_layer = current_mask_layer(self._viewer)
        if mask_layer is None:
            self.status.value = "Open a wsi-seg result first."
            return None
        path = mask_layer.metadata[RESULT_KEY]["path"]
        for layer in self._viewer.layers:
            meta = layer.metadata.get(RESULT_KEY) or {}
            if meta.get("kind") == UNCERTAINTY_KIND and meta.get("path") == path:
                layer.visible = True
                return layer
        try:
            result = Result.open(path)
            levels = uncertainty_pyramid(result)
        except WsiSegError as exc:
            self._fail(exc)
            return None
        layer = self._viewer.add_image(
            levels if len(levels) > 1 else levels[0], multiscale=len(levels) > 1,
            name=f"{result.name}: {UNCERTAINTY_NAME}", colormap="inferno", contrast_limits=(0, 255), opacity=0.6,
            blending="translucent", scale=tuple(mask_layer.scale[-2:]), translate=tuple(mask_layer.translate[-2:]),
            units=tuple(mask_layer.units[-2:]),
            metadata={RESULT_KEY: {**mask_layer.metadata[RESULT_KEY], "kind": UNCERTAINTY_KIND}})
        self.status.value = "Uncertainty: bright where the top two classes are close (1 − their margin)."
        return layer

    def _show_corrected(self, path: str) -> None:
        """(Re)load the corrected labels of ``path`` just above its mask; hide the mask."""
        from napari.layers import Layer

        def of_path(labels: str | None = None) -> list[Labels]:
            return [layer for layer in result_mask_layers(self._viewer)
                    if layer.metadata[RESULT_KEY]["path"] == path
                    and (labels is None or layer.metadata[RESULT_KEY].get("labels") == labels)]

        for layer in of_path(CORRECTED_NAME):
            self._viewer.layers.remove(layer)
        masks = of_path()
        for layer in masks:
            layer.visible = False
        index = max((self._viewer.layers.index(layer) for layer in masks), default=len(self._viewer.layers) - 1) + 1
        data, kwargs, kind = labels_layer_data(Result.open(path), CORRECTED_NAME)
        self._viewer.layers.insert(index, Layer.create(data, kwargs, kind))
