"""Synthetic H&E-like tissue for the demo slide, tests and synthetic patch datasets.

Slides and patches come from one renderer (:mod:`wsi_seg.synthetic.tissue`) so that
they share colour and texture statistics.
"""

from wsi_seg.synthetic.patches import synthesize_patch
from wsi_seg.synthetic.slide import DemoSlide, mask_paths, read_ground_truth, write_demo_slide
from wsi_seg.synthetic.tissue import (
    CLASS_COLORS,
    CLASS_NAMES,
    Stain,
    TissueStyle,
    random_label_map,
    random_stain,
    synthesize_region,
)

__all__ = [
    "CLASS_COLORS",
    "CLASS_NAMES",
    "DemoSlide",
    "Stain",
    "TissueStyle",
    "mask_paths",
    "random_label_map",
    "random_stain",
    "read_ground_truth",
    "synthesize_patch",
    "synthesize_region",
    "write_demo_slide",
]
