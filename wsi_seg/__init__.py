"""wsi-seg: weakly supervised segmentation of histopathology whole-slide images.

The engine (`wsi_seg`) reads slides, finds tissue, tiles it, runs a PSCL model and
stitches masks and activation maps into OME-Zarr pyramids. Heavy modules are imported
lazily by their users, so ``import wsi_seg`` stays cheap.
"""

__version__ = "0.1.0"
