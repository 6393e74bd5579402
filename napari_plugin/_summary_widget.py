"""The "Result summary" dock widget: legend of the current result with per-class areas.

The current result is the one of the active layer when that layer belongs to a
wsi-seg result, else the topmost wsi-seg mask layer. Areas come from ``wsi_seg.reports.areas``.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from magicgui.widgets import Container, Label, PushButton
from wsi_seg_napari._result_reader import RESULT_KEY
from wsi_seg_napari._viewer import connect_until_closed

from wsi_seg.reports.areas import ClassArea, class_areas, format_area

if TYPE_CHECKING:  # napari only for typing
    import napari
    from napari.layers import Layer

EMPTY_TEXT = "Open a wsi-seg result (mask.zarr) to see its classes."


def result_mask_layers(viewer: napari.viewer.Viewer) -> list[Layer]:
    """The viewer's wsi-seg mask layers, bottom to top."""
    return [layer for layer in viewer.layers if (layer.metadata.get(RESULT_KEY) or {}).get("kind") == "mask"]


def current_mask_layer(viewer: napari.viewer.Viewer) -> Layer | None:
    """The mask layer of the active layer's result, else the topmost mask layer."""
    masks = result_mask_layers(viewer)
    active = viewer.layers.selection.active
    meta = (active.metadata.get(RESULT_KEY) or {}) if active is not None else {}
    for layer in reversed(masks):
        if meta and layer.metadata[RESULT_KEY]["path"] == meta.get("path"):
            return layer
    return masks[-1] if masks else None


def summarize_layer(layer: Layer) -> list[ClassArea]:
    """Per-class areas of a wsi-seg mask layer (multiscale or not)."""
    meta = layer.metadata[RESULT_KEY]
    levels = list(layer.data) if layer.multiscale else [layer.data]
    return class_areas(levels, float(meta["mpp"]), meta["class_names"], meta["class_colors"])


def legend_html(title: str, rows: list[ClassArea]) -> str:
    cells = "".join(
        f"<tr><td><span style='color:{r.hex_color}'>■</span> {html.escape(r.name)}</td>"
        f"<td align='right'>{html.escape(format_area(r.area_um2))}</td>"
        f"<td align='right'>{r.tissue_fraction:.1%}</td></tr>"
        for r in rows
    )
    return (
        f"<b>{html.escape(title)}</b><table cellspacing='4'>"
        "<tr><th align='left'>class</th><th align='right'>area</th><th align='right'>% of tissue</th></tr>"
        f"{cells}</table>"
    )


class SummaryWidget(Container):
    """Legend (class names and colours) with area in µm² and % of tissue per class."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = napari_viewer
        self.legend = Label(value=EMPTY_TEXT)
        self.refresh_button = PushButton(text="Refresh")
        self.extend([self.legend, self.refresh_button])
        self.rows: list[ClassArea] = []
        self.layer: Layer | None = None
        self._cache: dict[tuple[str, bool, str, int], list[ClassArea]] = {}
        self.refresh_button.clicked.connect(lambda: self.refresh(force=True))
        layers = napari_viewer.layers
        connect_until_closed(self, [
            (layers.events.inserted, self._on_layers_changed),
            (layers.events.removed, self._on_layers_changed),
            (layers.selection.events.active, self._on_layers_changed),
        ])
        self.refresh()

    def _on_layers_changed(self, _event: Any = None) -> None:
        self.refresh()

    def refresh(self, force: bool = False) -> list[ClassArea]:
        """Recompute (or reuse) the summary of the current result; returns its rows."""
        layer = current_mask_layer(self._viewer)
        self.layer = layer
        if layer is None:
            self.rows = []
            self.legend.value = EMPTY_TEXT
            return self.rows
        meta = layer.metadata[RESULT_KEY]
        key = (meta["path"], bool(meta["complete"]), str(meta.get("labels", "mask")), id(layer))
        if force or key not in self._cache:
            self._cache[key] = summarize_layer(layer)
        self.rows = self._cache[key]
        self.legend.value = legend_html(layer.name, self.rows)
        return self.rows
