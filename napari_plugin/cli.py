"""``wsi-seg view SLIDE [MASK.zarr]``: open a slide and its result in napari.

Joins the ``wsi-seg`` CLI through the ``wsi_seg.commands`` entry-point group. This
module imports nothing heavy at import time (every ``wsi-seg`` call loads it); napari
is imported when the command runs and, if missing, the command fails with one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from wsi_seg.errors import ConfigError, SlideError, WsiSegError

if TYPE_CHECKING:
    import napari

INSTALL_HINT = 'install the viewer with: pip install "wsi-seg[napari]"'


class ViewerNotInstalledError(WsiSegError, ImportError):
    """napari (or its Qt binding) is not installed."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("view", help="open a slide and its segmentation result in napari")
    p.add_argument("slide", type=Path, metavar="SLIDE",
                   help="slide file, or a result .zarr (its slide is found from it)")
    p.add_argument("mask", type=Path, nargs="?", default=None, metavar="MASK.zarr", help="result of wsi-seg segment")
    p.add_argument("--mpp", type=float, default=None, metavar="UM",
                   help="level-0 µm/px for slides whose metadata lacks it (default: from the slide's metadata)")
    p.set_defaults(func=run)


def require_napari() -> None:
    """Raise ``ViewerNotInstalledError`` unless napari and a Qt binding import."""
    try:
        import napari  # noqa: F401
        import qtpy  # noqa: F401  (raises QtBindingsNotFoundError, an ImportError, without a binding)
    except ImportError as exc:
        raise ViewerNotInstalledError(f"napari viewer not available ({exc}); {INSTALL_HINT}") from exc


def open_viewer(
    slide: Path, mask: Path | None = None, mpp: float | None = None, show: bool = True, docks: bool = True
) -> napari.Viewer:
    """A napari viewer showing ``slide`` and, above it, the result ``mask`` (if given).

    ``slide`` may itself be a result; its source slide is then shown under it. With
    ``docks``, the "Result summary" (legend, areas) and "Corrections" widgets are docked
    on the right, and hovering shows the class under the cursor in a tooltip.
    """
    require_napari()
    import napari
    from wsi_seg_napari._result_reader import result_layer_data
    from wsi_seg_napari._slide_reader import slide_layer_data
    from wsi_seg_napari._viewer import add_layer_data

    from wsi_seg.result.format import read_provenance

    if mask is None and read_provenance(slide) is not None:
        slide_data, mask_data = [], result_layer_data(slide, include_slide=True)
    else:
        if not slide.exists():
            raise SlideError(f"{slide}: slide file not found")
        slide_data = [slide_layer_data(slide, mpp=mpp)]
        mask_data = []
        if mask is not None:
            if read_provenance(mask) is None:
                raise ConfigError(
                    f"{mask}: not a wsi-seg result (no wsi_seg attributes in zarr.json); "
                    "expected the output of wsi-seg segment"
                )
            mask_data = result_layer_data(mask, include_slide=False)
    viewer = napari.Viewer(title=f"wsi-seg: {slide.name}", show=show)
    add_layer_data(viewer, slide_data + mask_data)
    _scale_bar(viewer).visible = True  # in µm: the layers carry their units
    if docks:
        dock_widgets(viewer)
    viewer.reset_view()
    return viewer


def dock_widgets(viewer: napari.Viewer) -> tuple[object, object]:
    """Dock the legend/summary and corrections widgets; class names show on hover."""
    from wsi_seg_napari._corrections_widget import CorrectionsWidget
    from wsi_seg_napari._summary_widget import SummaryWidget

    summary, corrections = SummaryWidget(viewer), CorrectionsWidget(viewer)
    viewer.window.add_dock_widget(summary, name="Result summary", area="right")
    viewer.window.add_dock_widget(corrections, name="Corrections", area="right")
    viewer.tooltip.visible = True  # the Labels layers' features: "class: <name>" under the cursor
    return summary, corrections


def _scale_bar(viewer: napari.Viewer):  # type: ignore[no-untyped-def]
    """The scale-bar overlay: ``viewer.canvas.overlays`` from napari 0.9, else ``viewer.scale_bar``."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    return overlays["scale_bar"] if overlays is not None and "scale_bar" in overlays else viewer.scale_bar


def run(args: argparse.Namespace) -> int:
    require_napari()  # before any work: one clear line when the extra is missing
    import napari

    open_viewer(args.slide, args.mask, mpp=args.mpp, show=True)
    napari.run()
    return 0
