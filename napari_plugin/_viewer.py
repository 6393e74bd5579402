"""Small helpers between readers and a napari viewer (napari imported only when called)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wsi_seg_napari._slide_reader import METADATA_KEY as SLIDE_KEY

if TYPE_CHECKING:
    import napari
    from magicgui.widgets import Container
    from napari.layers import Layer


def add_layer_data(viewer: napari.viewer.Viewer, layer_data: list[tuple[Any, dict[str, Any], str]]) -> list[Layer]:
    """Add reader-style (data, kwargs, type) tuples to ``viewer``; returns the new layers."""
    from napari.layers import Layer

    return [viewer.add_layer(Layer.create(data, dict(kwargs), kind)) for data, kwargs, kind in layer_data]


def slide_layers(viewer: napari.viewer.Viewer) -> list[Layer]:
    """Layers of the viewer that show a slide opened by this plugin."""
    return [layer for layer in viewer.layers if SLIDE_KEY in layer.metadata]


def connect_until_closed(widget: Container, connections: list[tuple[Any, Any]], on_close: Any = None) -> None:
    """Connect viewer events to ``widget`` and disconnect them when its Qt widget is destroyed."""
    for event, callback in connections:
        event.connect(callback)

    def disconnect(*_: Any) -> None:
        for event, callback in connections:
            event.disconnect(callback)
        if on_close is not None:
            on_close()

    widget.native.destroyed.connect(disconnect)
