"""How to segment one slide: the options every front end (CLI, cohorts, napari) passes.

Kept free of torch and scikit-image, so a command line or a widget can read the defaults
without importing the engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from wsi_seg.errors import ConfigError
from wsi_seg.slide.tissue import TissueParams

READERS = ("auto", "openslide", "jpeg-cpu", "jpeg-device")  # slide decoders, see wsi_seg.inference.reader
# 4·10¹⁰ px: a 200,000 × 200,000 px output, beyond any 40x slide at the model's resolution
DEFAULT_MAX_OUTPUT_PX = 40_000_000_000
MAX_UPSAMPLING = 2.0  # model px per slide level-0 px without allow_upsampling


@dataclass(frozen=True)
class SegmentOptions:
    """How to run one slide; the CLI flags map onto these fields."""

    device: str = "auto"
    batch_size: int | None = None  # patches per model call; None: auto (see wsi_seg.inference.runtime)
    workers: int | None = None  # reader processes; None: auto (see wsi_seg.inference.runtime)
    overlap_px: int = 32
    mpp: float | None = None  # level-0 µm/px override for slides without metadata
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (see wsi_seg.inference.runtime)
    threads: int | None = None  # CPU threads for the model in all; None: the CPUs this process may use
    streams: int | None = None  # batches the model runs at once; None: auto (see wsi_seg.inference.runtime)
    reader: str = "auto"  # slide decoder, one of READERS
    tissue: TissueParams = field(default_factory=TissueParams)
    overwrite: bool = False
    discard_corrections: bool = False  # --overwrite of a corrected result may drop its corrections
    progress: bool = True
    allow_upsampling: bool = False  # a model µm/px more than MAX_UPSAMPLING× finer than level 0
    max_output_px: int = DEFAULT_MAX_OUTPUT_PX  # level-0 output pixels a run may plan

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch size must be ≥ 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"workers must be ≥ 0, got {self.workers}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be ≥ 1, got {self.threads}")
        if self.streams is not None and self.streams < 1:
            raise ConfigError(f"streams must be ≥ 1, got {self.streams}")
        if not 0.0 <= self.tissue.min_tissue_fraction <= 1.0:
            raise ConfigError(f"tissue threshold must be in [0, 1], got {self.tissue.min_tissue_fraction}")
        if self.reader not in READERS:
            raise ConfigError(f"unknown reader {self.reader!r}; use one of {', '.join(READERS)}")
        if self.mpp is not None and not (math.isfinite(self.mpp) and self.mpp > 0):
            raise ConfigError(f"--mpp must be a positive number of µm per pixel, got {self.mpp}")
        if self.max_output_px < 1:
            raise ConfigError(f"--max-output-px must be ≥ 1, got {self.max_output_px}")
