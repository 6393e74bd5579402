"""napari plugin of wsi-seg: open slides and results, segment slides, summarise results.

Importing this package is cheap: napari, Qt, torch and zarr are imported only by the
modules that need them, when napari calls them (see ``napari.yaml``).

Modules:
    _slide_reader   a slide as a lazy multiscale RGB image (one dask array per level)
    _result_reader  a wsi-seg OME-Zarr as a class mask, per-class activations and the slide
    _jobs           the segment job run by the widget (a generator; no Qt)
    _widget         "Segment slide" dock widget
    _summary_widget "Result summary" dock widget (legend + areas)
    _viewer         adding reader output to a viewer; event wiring of the widgets
    cli             ``wsi-seg view SLIDE [MASK.zarr]``
"""

from __future__ import annotations
