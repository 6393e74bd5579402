"""How to segment one slide: the options every front end (CLI, cohorts, napari) passes.

Each field is declared once, with its flag and help (:func:`wsi_seg.settings.setting`):
``wsi-seg segment`` makes its flags from them (:mod:`wsi_seg.cli.flags`). Kept free of
torch and scikit-image, so a command line or a widget can read the defaults without
importing the engine.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field

from wsi_seg.errors import ConfigError
from wsi_seg.settings import setting
from wsi_seg.slide.tissue import TissueParams

READERS = ("auto", "openslide", "jpeg-cpu", "jpeg-device")  # slide decoders, see wsi_seg.inference.reader
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# 4·10¹⁰ px: a 200,000 × 200,000 px output, beyond any 40x slide at the model's resolution
DEFAULT_MAX_OUTPUT_PX = 40_000_000_000
MAX_UPSAMPLING = 2.0  # model px per slide level-0 px without allow_upsampling
# The output's chunk (= block: read, run, written and resumed as one) side, px at the model's
# µm/px, before rounding to whole patch strides: 960 px of 25 patches for 224-px patches
# with 32 px overlap. Zarr's cost is per chunk written, reading's partly per block: a
# null model ran 1.3× as fast as with 576-px blocks of 9 patches, tiny end to end 1.15×,
# and real slides read no more glass (docs/benchmarks.md).
DEFAULT_CHUNK_PX = 1024
MAX_CHUNK_PX = 4096  # a block's patches are held in memory a few blocks ahead


def pixel_count(text: str) -> int:
    """A pixel count such as 4e10 (the ``--max-output-px`` type)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value >= 1 and value < 2**62):
        raise argparse.ArgumentTypeError(f"expected a number of pixels ≥ 1 such as 4e10, got {text!r}")
    return int(value)


@dataclass(frozen=True)
class SegmentOptions:
    """How to run one slide; each field is one ``wsi-seg segment`` flag (``tissue``: its own)."""

    device: str = setting("auto", flag="--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N")
    batch_size: int | None = setting(
        None, flag="--batch-size", metavar="N", help="patches per model call",
        default_text="2 on CPU, where small batches ran fastest; 32 on CUDA")
    workers: int | None = setting(
        None, flag="--workers", metavar="N", help="slide-reading worker processes",
        default_text="0 = in-process on CPU, where the model uses every core; on CUDA one per spare CPU this "
                     "process may use, up to 8")
    overlap_px: int = setting(32, flag="--overlap", metavar="PX",
                              help="patch overlap in px at the model resolution; centre-cropped")
    mpp: float | None = setting(
        None, flag="--mpp", metavar="UM",
        help="level-0 µm/px of the slide: for slides whose metadata lacks it or gives an implausible value, "
             "and for plain PNG/JPEG/TIFF images, read as one level",
        default_text="from the slide's metadata")
    precision: str = setting(
        "auto", flag="--precision", choices=PRECISIONS, help="autocast precision",
        default_text="auto = bf16 where the device computes it natively: CUDA GPUs with bf16, CPUs with "
                     "AVX512-BF16/AMX; fp16 on older CUDA GPUs; else fp32")
    threads: int | None = setting(
        None, flag="--threads", metavar="N", help="CPU threads the model uses in all, shared by its streams",
        default_text="the CPUs this process may use: affinity, cgroup quota, SLURM")
    streams: int | None = setting(
        None, flag="--streams", metavar="N", help="batches the model runs at once, each on its own thread",
        default_text="on CPU one per CPU this process may use, up to 8, with one torch thread each; 1 on CUDA")
    reader: str = setting(
        "auto", flag="--reader", choices=READERS,
        help="slide decoder: openslide (any format); jpeg-cpu (JPEG tiles of SVS/tiled TIFF decoded at 1/2, "
             "1/4, 1/8 scale when the level is that much finer than the model); jpeg-device (tiles decoded in "
             "batches on the model's device, nvJPEG on CUDA); auto: jpeg-device on CUDA, jpeg-cpu on the CPU "
             "where the slide has JPEG tiles, else openslide")
    chunk_px: int = setting(
        DEFAULT_CHUNK_PX, flag="--chunk-px", metavar="PX",
        help="side of the output's chunks in px at the model resolution, rounded to whole patch strides; a "
             "chunk is read, run, written and resumed as one, and larger ones cost less per patch",
        default_text=f"{DEFAULT_CHUNK_PX}: 960 px for 224-px patches with 32 px overlap")
    tissue: TissueParams = field(default_factory=TissueParams)
    overwrite: bool = setting(
        False, flag="--overwrite",
        help="replace existing outputs; corrections saved in napari are carried over onto the new result when "
             "it is of the same slide and pixel grid, else refused")
    discard_corrections: bool = setting(
        False, flag="--discard-corrections",
        help="with --overwrite: replace a corrected result without carrying its corrections over")
    progress: bool = setting(True, flag="--no-progress", help="no progress bars")
    allow_upsampling: bool = setting(
        False, flag="--allow-upsampling", help="allow a model µm/px more than 2× finer than the slide's level 0")
    max_output_px: int = setting(
        DEFAULT_MAX_OUTPUT_PX, flag="--max-output-px", metavar="N", parse=pixel_count,
        help="refuse a slide whose output at the model's µm/px would exceed N px",
        default_text="4e+10, a 200,000² px output")

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
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        if self.mpp is not None and not (math.isfinite(self.mpp) and self.mpp > 0):
            raise ConfigError(f"--mpp must be a positive number of µm per pixel, got {self.mpp}")
        if not 1 <= self.chunk_px <= MAX_CHUNK_PX:
            raise ConfigError(f"--chunk-px must be in [1, {MAX_CHUNK_PX}] px, got {self.chunk_px}")
        if self.max_output_px < 1:
            raise ConfigError(f"--max-output-px must be ≥ 1, got {self.max_output_px}")
