"""What each supported dataset format is: class names, colours, µm/px, seeding defaults.

Label conventions (one place, used everywhere in ``training``):

* **dataset masks** on disk (LUAD-HistoSeg, BCSS-WSSS, csv): index PNGs where
  ``0 .. N-1`` are the tissue classes in ``class_names`` order and ``N`` (4 for LUAD and
  BCSS) is background;
* **internal label maps** (metrics, pseudo-labels, predictions, ``mask.zarr``):
  ``0`` = background and ``1 .. N`` = the tissue classes. Ground truth is converted at
  the boundary by :func:`wsi_seg_training.datasets.io.read_mask`.
"""

from __future__ import annotations

from dataclasses import dataclass

from wsi_seg.model.config import LUAD_CLASS_COLORS, LUAD_CLASS_NAMES

FORMATS = ("luad", "bcss", "csv")

# a fallback palette for csv datasets (colour-blind-safe Okabe–Ito order)
DEFAULT_COLORS = (
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66),
    (0, 114, 178), (213, 94, 0), (204, 121, 167), (120, 120, 120),
)


@dataclass(frozen=True)
class FormatInfo:
    """Facts about one dataset format.

    ``mpp`` is the µm/px the patches were cut at (None: unknown, ask the user);
    ``background_seed`` whether thesis §4.3.2 colour seeding is on by default (it is for
    both: the thesis seeds BCSS-WSSS too, table 5.8: 66.22 mIoU with colour seeding vs
    56.52 with activation thresholding — although some of BCSS's white is fat rather than
    glass, and the MLPS code does not seed BCSS; ``--no-background-seed`` follows it);
    ``bkg_min_size_px`` the ``remove_small_objects`` size of the thesis (200 LUAD, 600 BCSS).
    """

    name: str
    class_names: tuple[str, ...]
    class_colors: tuple[tuple[int, int, int], ...]
    mpp: float | None
    background_seed: bool
    bkg_min_size_px: int


LUAD = FormatInfo(
    name="luad",
    class_names=LUAD_CLASS_NAMES,  # TE, NEC, LYM, TAS
    class_colors=LUAD_CLASS_COLORS,
    mpp=1.0,  # patches cut at 10×
    background_seed=True,
    bkg_min_size_px=200,
)

BCSS = FormatInfo(
    name="bcss",
    class_names=("TUM", "STR", "LYM", "NEC"),
    class_colors=((255, 0, 0), (0, 255, 0), (0, 0, 255), (153, 0, 255)),
    mpp=0.25,  # patches cut at 40× (file names carry "MPP-0.2500")
    background_seed=True,  # thesis §4.3.2 / table 5.8 (the MLPS code does not seed BCSS)
    bkg_min_size_px=600,
)


def csv_info(class_names: tuple[str, ...]) -> FormatInfo:
    """The FormatInfo of a csv dataset whose header names these classes."""
    known = {n: c for info in (LUAD, BCSS) for n, c in zip(info.class_names, info.class_colors)}
    colors = tuple(known.get(n, DEFAULT_COLORS[i % len(DEFAULT_COLORS)]) for i, n in enumerate(class_names))
    return FormatInfo(
        name="csv",
        class_names=class_names,
        class_colors=colors,
        mpp=None,
        background_seed=True,
        bkg_min_size_px=200,
    )
