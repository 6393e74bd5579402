"""A wsi-seg result (OME-Zarr, SPEC §6) as napari layers.

Layers, bottom to top:
  1. the source slide (``attrs["wsi_seg"]["slide"]["path"]``), when it still exists;
  2. one image per class activation map (class colour, additive, hidden);
  3. the class-index mask as a Labels layer with the class colours and names.

All are multiscale, lazy (one dask array per zarr level) and placed in micrometres
with the same corner convention as ``_slide_reader``. Only stores whose root carries
``attrs["wsi_seg"]`` are ours; other (OME-)Zarr stores are left to napari-ome-zarr.
An unfinished store (``complete: false`` or a ``*.partial`` folder) opens with a
warning and "(incomplete)" in the mask layer's name.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_plugin import _notify
from napari_plugin._slide_reader import METADATA_KEY as SLIDE_KEY
from napari_plugin._slide_reader import UNITS_UM, LayerData, PathLike, ReaderFunction, _as_list, slide_layer_data
from wsi_seg.errors import WsiSegError

RESULT_KEY = "wsi_seg_result"  # layer.metadata[RESULT_KEY] describes the result
LABEL_NAME = "mask"
PARTIAL_SUFFIX = ".partial"


class ResultFormatError(WsiSegError, ValueError):
    """A store says it is a wsi-seg result but its content does not match the format."""


@dataclass(frozen=True)
class ResultInfo:
    """What the layers need from a result's provenance."""

    path: Path
    class_names: tuple[str, ...]
    class_colors: tuple[tuple[int, int, int], ...]
    mpp: float  # µm/px of level 0 of the result
    complete: bool
    slide_path: Path | None
    slide_mpp: float | None  # level-0 µm/px of the slide as used for the run
    slide_fingerprint: str | None

    @property
    def name(self) -> str:
        name = self.path.name
        name = name[: -len(PARTIAL_SUFFIX)] if name.endswith(PARTIAL_SUFFIX) else name
        return name[: -len(".zarr")] if name.endswith(".zarr") else name

    def as_metadata(self, kind: str, **extra: Any) -> dict[str, Any]:
        return {
            RESULT_KEY: {
                "kind": kind,
                "path": str(self.path),
                "class_names": list(self.class_names),
                "class_colors": [list(c) for c in self.class_colors],
                "mpp": self.mpp,
                "complete": self.complete,
                "slide_path": str(self.slide_path) if self.slide_path else None,
                **extra,
            }
        }


def _strip(path: PathLike) -> Path:
    return Path(str(path).rstrip("/\\"))


def read_result_provenance(path: PathLike) -> dict[str, Any] | None:
    """``attrs["wsi_seg"]`` of a zarr v3 store, or None if ``path`` is not a wsi-seg result."""
    from wsi_seg.output import read_provenance

    p = _strip(path)
    if not p.is_dir():
        return None
    try:
        return read_provenance(p)
    except (AttributeError, TypeError):  # zarr.json that is JSON but not an object
        return None


def result_info(path: PathLike) -> ResultInfo:
    """Parse a result's provenance; raises ``ResultFormatError`` with a one-line message."""
    p = _strip(path).resolve()
    prov = read_result_provenance(p)
    if prov is None:
        raise ResultFormatError(f"{p}: not a wsi-seg result (no wsi_seg attributes in zarr.json)")
    try:
        names = tuple(str(n) for n in prov["class_names"])
        colors = tuple((int(c[0]), int(c[1]), int(c[2])) for c in prov["class_colors"])
        mpp = float(prov["mpp"])
        slide = prov.get("slide") or {}
        slide_path = Path(slide["path"]) if slide.get("path") else None
        slide_mpp = float(slide["mpp"]) if slide.get("mpp") else None
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ResultFormatError(f"{p}: wsi_seg attributes are incomplete or malformed ({exc!r})") from exc
    if len(names) != len(colors) or not names or not mpp > 0:
        raise ResultFormatError(f"{p}: wsi_seg attributes list {len(names)} classes, {len(colors)} colours, mpp {mpp}")
    complete = bool(prov.get("complete")) and not p.name.endswith(PARTIAL_SUFFIX)
    return ResultInfo(p, names, colors, mpp, complete, slide_path, slide_mpp, slide.get("fingerprint"))


def _levels(group: Any, info: ResultInfo) -> tuple[list[str], tuple[float, float], tuple[float, float]]:
    """(level paths, level-0 scale (y, x) µm, level-0 translation (y, x) µm) of a multiscale group."""
    multiscales = group.attrs.get("ome", {}).get("multiscales") or group.attrs.get("multiscales")
    if multiscales:
        datasets = multiscales[0]["datasets"]
        paths = [d["path"] for d in datasets]
        scale, shift = [info.mpp, info.mpp], [0.0, 0.0]
        for t in datasets[0].get("coordinateTransformations", []):
            if t.get("type") == "scale":
                scale = t["scale"][-2:]
            elif t.get("type") == "translation":
                shift = t["translation"][-2:]
        return paths, (float(scale[0]), float(scale[1])), (float(shift[0]), float(shift[1]))
    # an unfinished run has level 0 only and no OME metadata yet
    paths: list[str] = []
    while str(len(paths)) in group:
        paths.append(str(len(paths)))
    return paths, (info.mpp, info.mpp), (0.0, 0.0)


def _placement(scale: tuple[float, float], shift: tuple[float, float]) -> dict[str, Any]:
    # NGFF translations place pixel centres; napari layers here put the top-left pixel
    # corner at the origin, as the slide layer does (see _slide_reader)
    return {"scale": scale, "translate": (shift[0] + scale[0] / 2, shift[1] + scale[1] / 2), "units": UNITS_UM}


def _multiscale(levels: list[Any]) -> Any:
    return levels if len(levels) > 1 else levels[0]


def label_colormap(info: ResultInfo) -> dict[int | None, list[float]]:
    """napari Labels colormap (a dict → DirectLabelColormap): class i + 1 → its colour."""
    cmap: dict[int | None, list[float]] = {0: [0.0, 0.0, 0.0, 0.0], None: [0.0, 0.0, 0.0, 0.0]}
    for i, (r, g, b) in enumerate(info.class_colors):
        cmap[i + 1] = [r / 255, g / 255, b / 255, 1.0]
    return cmap


def activation_colormap(name: str, color: tuple[int, int, int]) -> dict[str, Any]:
    """napari image colormap (a dict → Colormap): black → the class colour."""
    r, g, b = (c / 255 for c in color)
    hex_color = "".join(f"{v:02x}" for v in color)
    return {"name": f"wsi-seg {name} #{hex_color}", "display_name": f"{name} #{hex_color}",
            "colors": [[0.0, 0.0, 0.0, 1.0], [r, g, b, 1.0]]}


def _slide_layer(info: ResultInfo) -> LayerData | None:
    """The source slide's layer, or None (with a warning) when it cannot be shown."""
    from wsi_seg.slide import Slide

    if info.slide_path is None or not info.slide_path.is_file():
        _notify.warn(f"{info.path.name}: source slide {info.slide_path} not found; showing the result alone")
        return None
    try:
        layer = slide_layer_data(info.slide_path, mpp=info.slide_mpp)
        if info.slide_fingerprint:
            with Slide(info.slide_path, mpp=info.slide_mpp) as slide:
                if slide.info().fingerprint != info.slide_fingerprint:
                    _notify.warn(
                        f"{info.slide_path}: the slide changed since {info.path.name} was computed; "
                        "the result may not match it"
                    )
    except WsiSegError as exc:
        _notify.warn(f"{info.path.name}: cannot show the source slide ({exc})")
        return None
    return layer


def result_layer_data(path: PathLike, include_slide: bool = True) -> list[LayerData]:
    """napari layer data tuples of a result (lazy; only metadata is read here).

    Raises ``ResultFormatError`` when ``path`` is not a readable wsi-seg result.
    """
    import dask.array as da
    import zarr

    info = result_info(path)
    try:
        group = zarr.open_group(str(info.path), mode="r")
        act_paths, act_scale, act_shift = _levels(group, info)
        labels = group["labels"][LABEL_NAME]
        mask_paths, mask_scale, mask_shift = _levels(labels, info)
        activations = [da.from_zarr(group[p]) for p in act_paths]
        masks = [da.from_zarr(labels[p]) for p in mask_paths]
    except (KeyError, OSError, ValueError, IndexError, TypeError) as exc:
        raise ResultFormatError(f"{info.path}: cannot read the result's arrays ({exc!r})") from exc
    if not masks or not activations:
        raise ResultFormatError(f"{info.path}: the result holds no arrays")
    n_classes = len(info.class_names)
    if activations[0].ndim != 3 or activations[0].shape[0] != n_classes or masks[0].ndim != 2:
        raise ResultFormatError(
            f"{info.path}: arrays of shape {activations[0].shape} and {masks[0].shape} do not match "
            f"{n_classes} classes"
        )
    suffix = "" if info.complete else " (incomplete)"
    if not info.complete:
        _notify.warn(
            f"{info.path.name}: incomplete result (the run was interrupted); showing what was written. "
            "Rerun the same segment command to finish it."
        )

    layers: list[LayerData] = []
    if include_slide:
        slide = _slide_layer(info)
        if slide is not None:
            layers.append(slide)
    for c, (name, color) in enumerate(zip(info.class_names, info.class_colors, strict=True)):
        kwargs = {
            "name": f"{info.name}: {name} activation{suffix}",
            "multiscale": len(activations) > 1,
            "colormap": activation_colormap(name, color),
            "blending": "additive",
            "visible": False,
            "contrast_limits": (0, 255),
            "metadata": info.as_metadata("activation", class_index=c, class_name=name),
            **_placement(act_scale, act_shift),
        }
        layers.append((_multiscale([level[c] for level in activations]), kwargs, "image"))
    labels_kwargs = {
        "name": f"{info.name}: mask{suffix}",
        "multiscale": len(masks) > 1,
        "colormap": label_colormap(info),
        "features": {"index": list(range(n_classes + 1)), "class": ["background", *info.class_names]},
        "opacity": 0.5,
        "metadata": info.as_metadata("mask"),
        **_placement(mask_scale, mask_shift),
    }
    layers.append((_multiscale(masks), labels_kwargs, "labels"))
    return layers


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
        info = result_info(p)
        layers.extend(result_layer_data(p, include_slide=not _slide_open_in_viewer(info.slide_path)))
    return layers


def get_result_reader(path: PathLike | Sequence[PathLike]) -> ReaderFunction | None:
    """npe2 reader contribution: ``read_results`` for wsi-seg results, else None.

    Never raises; any zarr without ``attrs["wsi_seg"]`` is left to other readers.
    """
    paths = _as_list(path)
    if not paths or not all(read_result_provenance(p) is not None for p in paths):
        return None
    return read_results
