"""The result: an OME-Zarr folder. Its names and layout (``format``), the writer
(``store``), the reader (``reader``), the pyramid, the user's corrections and the guards
that decide what may be replaced (``ownership``).

``wsi_seg.result.Result`` is the public way to open one.
"""

from wsi_seg.result.reader import Placement, Provenance, Result

__all__ = ["Placement", "Provenance", "Result"]
