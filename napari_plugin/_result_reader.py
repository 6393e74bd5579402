"""A wsi-seg result (OME-Zarr, read through ``wsi_seg.result.reader``) as napari layers.

Layers, bottom to top:
  1. the source slide (``attrs["wsi_seg"]["slide"]["path"]``), when it still exists;
  2. one image per class activation map (class colour, additive, hidden);
  3. the class-index mask as a Labels layer with the class colours and names;
  4. the user's corrections (``labels/corrected``, saved from napari), when there are
     some, as a second Labels layer; the mask under it is then hidden.

All are multiscale, lazy (one dask array per zarr level) and placed in micrometres
with the same corner convention as ``_slide_reader``. Only stores whose root carries
``attrs["wsi_seg"]`` are ours; other (OME-)Zarr stores are left to napari-ome-zarr.
An unfinished store (``complete: false`` or a ``*.partial`` folder) opens with a
warning and "(incomplete)" in the mask layer's name.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wsi_seg_napari import _notify
from wsi_seg_napari._slide_reader import METADATA_KEY as SLIDE_KEY
from wsi_seg_napari._slide_reader import (
    UNITS_UM,
    LayerData,
    PathLike,
    ReaderFunction,
    _as_list,
    slide_layer_data,
)

from wsi_seg.errors import WsiSegError
from wsi_seg.reports.areas import hex_color
from wsi_seg.result.format import (
    BACKGROUND,
    CORRECTED_NAME,
    LABEL_NAME,
    read_provenance,
)
from wsi_seg.result.reader import Placement, Result

RESULT_KEY = "wsi_seg_result"  # layer.metadata[RESULT_KEY] describes the result


def open_result(path: PathLike) -> Result:
    """The result at ``path``, complete or not; a ResultError (one line) when it is not one."""
    return Result.open(path, allow_incomplete=True)


def _metadata(result: Result, kind: str, **extra: Any) -> dict[str, Any]:
    slide_path = result.provenance.slide.path
    return {
        RESULT_KEY: {
            "kind": kind,
            "path": str(result.path),
            "class_names": list(result.class_names),
            "class_colors": [list(c) for c in result.class_colors],
            "mpp": result.mpp,
            "complete": result.complete,
            "slide_path": str(slide_path) if slide_path else None,
            **extra,
        }
    }


def _placement(placement: Placement) -> dict[str, Any]:
    # NGFF translations place pixel centres; napari layers here put the top-left pixel
    # corner at the origin, as the slide layer does (see _slide_reader)
    (sy, sx), (ty, tx) = placement.scale_um, placement.translation_um
    return {"scale": (sy, sx), "translate": (ty + sy / 2, tx + sx / 2), "units": UNITS_UM}


def _multiscale(levels: list[Any]) -> Any:
    return levels if len(levels) > 1 else levels[0]


def label_colormap(result: Result) -> dict[int | None, list[float]]:
    """napari Labels colormap (a dict → DirectLabelColormap): class i + 1 → its colour."""
    cmap: dict[int | None, list[float]] = {0: [0.0, 0.0, 0.0, 0.0], None: [0.0, 0.0, 0.0, 0.0]}
    for i, (r, g, b) in enumerate(result.class_colors):
        cmap[i + 1] = [r / 255, g / 255, b / 255, 1.0]
    return cmap


def activation_colormap(name: str, color: tuple[int, int, int]) -> dict[str, Any]:
    """napari image colormap (a dict → Colormap): black → the class colour."""
    r, g, b = (c / 255 for c in color)
    return {"name": f"wsi-seg {name} {hex_color(color)}", "display_name": f"{name} {hex_color(color)}",
            "colors": [[0.0, 0.0, 0.0, 1.0], [r, g, b, 1.0]]}


def _slide_layer(result: Result) -> LayerData | None:
    """The source slide's layer, or None (with a warning) when it cannot be shown."""
    from wsi_seg.slide.slide import Slide

    slide = result.provenance.slide
    if slide.path is None or not slide.path.is_file():
        _notify.warn(f"{result.path.name}: source slide {slide.path} not found; showing the result alone")
        return None
    try:
        layer = slide_layer_data(slide.path, mpp=slide.mpp)
        if slide.fingerprint:
            with Slide(slide.path, mpp=slide.mpp) as opened:
                if opened.info().fingerprint != slide.fingerprint:
                    _notify.warn(
                        f"{slide.path}: the slide changed since {result.path.name} was computed; "
                        "the result may not match it"
                    )
    except WsiSegError as exc:
        _notify.warn(f"{result.path.name}: cannot show the source slide ({exc})")
        return None
    return layer


def result_layer_data(path: PathLike, include_slide: bool = True) -> list[LayerData]:
    """napari layer data tuples of a result (lazy; only metadata is read here).

    Raises ``ResultError`` when ``path`` is not a readable wsi-seg result.
    """
    import dask.array as da

    result = open_result(path)
    activations = [da.from_zarr(result.activations(level)) for level in result.levels]
    suffix = "" if result.complete else " (incomplete)"
    if not result.complete:
        _notify.warn(
            f"{result.path.name}: incomplete result (the run was interrupted); showing what was written. "
            "Rerun the same segment command to finish it."
        )

    layers: list[LayerData] = []
    if include_slide:
        slide = _slide_layer(result)
        if slide is not None:
            layers.append(slide)
    for c, (name, color) in enumerate(zip(result.class_names, result.class_colors, strict=True)):
        kwargs = {
            "name": f"{result.name}: {name} activation{suffix}",
            "multiscale": len(activations) > 1,
            "colormap": activation_colormap(name, color),
            "blending": "additive",
            "visible": False,
            "contrast_limits": (0, 255),
            "metadata": _metadata(result, "activation", class_index=c, class_name=name),
            **_placement(result.placement(labels=False)),
        }
        layers.append((_multiscale([level[c] for level in activations]), kwargs, "image"))
    corrected = CORRECTED_NAME in result.label_names
    layers.append(labels_layer_data(result, LABEL_NAME, suffix, visible=not corrected))
    if corrected:
        layers.append(labels_layer_data(result, CORRECTED_NAME, suffix))
    return layers


def labels_layer_data(result: Result, labels: str = LABEL_NAME, suffix: str = "", visible: bool = True) -> LayerData:
    """The Labels layer of the label image ``labels`` (mask or corrected) of a result.

    Its ``features`` name the classes, so hovering shows "class: <name>" (status bar and
    tooltip).
    """
    import dask.array as da

    masks = [da.from_zarr(result.mask(level, labels)) for level in result.levels]
    n_classes = len(result.class_names)
    kwargs = {
        "name": f"{result.name}: {labels}{suffix}",
        "multiscale": len(masks) > 1,
        "colormap": label_colormap(result),
        "features": {"index": list(range(n_classes + 1)), "class": [BACKGROUND, *result.class_names]},
        "opacity": 0.5,
        "visible": visible,
        "metadata": _metadata(result, "mask", labels=labels),
        **_placement(result.placement(labels=True)),
    }
    return _multiscale(masks), kwargs, "labels"


def _slide_open_in_viewer(slide_path: Path | None) -> bool:
    """Whether the current napari viewer already shows ``slide_path``."""
    if slide_path is None or "napari" not in sys.modules:
        return False
    import napari

    viewer = napari.current_viewer()
    if viewer is None:
        return False
    return any(
        (layer.metadata.get(SLIDE_KEY) or {}).get("path") == str(slide_path) for layer in viewer.layers
    )


def read_results(path: PathLike | Sequence[PathLike]) -> list[LayerData]:
    """napari reader function: result layers, with the slide unless the viewer shows it."""
    layers: list[LayerData] = []
    for p in _as_list(path):
        slide_path = open_result(p).provenance.slide.path
        layers.extend(result_layer_data(p, include_slide=not _slide_open_in_viewer(slide_path)))
    return layers


def get_result_reader(path: PathLike | Sequence[PathLike]) -> ReaderFunction | None:
    """npe2 reader contribution: ``read_results`` for wsi-seg results, else None.

    Never raises; any zarr without ``attrs["wsi_seg"]`` is left to other readers.
    """
    paths = _as_list(path)
    if not paths or not all(read_provenance(p) is not None for p in paths):
        return None
    return read_results
