"""Settings of ``wsi-seg review`` (kept free of numpy: the CLI builds its flags from them)."""

from __future__ import annotations

from dataclasses import dataclass

from wsi_seg.settings import setting


@dataclass(frozen=True)
class ReviewOptions:
    """Which regions ``wsi-seg review`` lists and how it judges them.

    A region is a square of ``region_patches`` × the model's patch size (level-0 px of the
    result, the napari edit region's scale); a pixel is uncertain when the gap between its
    two most probable classes is under ``margin`` (:mod:`wsi_seg.result.uncertainty`).
    """

    top: int = setting(20, flag="--top", metavar="N", help="regions listed")
    region_patches: int = setting(2, flag="--region-patches", metavar="K",
                                  help="side of a region, in the model's patches")
    margin: float = setting(0.3, flag="--margin", metavar="M",
                            help="a pixel is uncertain when its top two class probabilities differ by less")
    thumb_px: int = setting(192, flag="--thumb-px", metavar="PX", help="side of each thumbnail in the HTML page")

    def check(self) -> None:
        from wsi_seg.errors import ConfigError

        if self.top < 1:
            raise ConfigError(f"--top must be ≥ 1, got {self.top}")
        if self.region_patches < 1:
            raise ConfigError(f"--region-patches must be ≥ 1, got {self.region_patches}")
        if not 0.0 < self.margin <= 1.0:
            raise ConfigError(f"--margin must be in (0, 1], got {self.margin}")
        if self.thumb_px < 16:
            raise ConfigError(f"--thumb-px must be ≥ 16, got {self.thumb_px}")
