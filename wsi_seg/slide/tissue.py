"""Background seeding (thesis §4.3.2) and tissue detection on a slide thumbnail.

The same colour threshold + ``skimage.morphology.remove_small_objects`` serves two
uses: the background seed of a training patch or inference block (sizes in pixels of
that image, as in the thesis: 200 px LUAD, 600 px BCSS) and tissue detection on a slide
thumbnail (sizes in µm², so they hold at any resolution).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from wsi_seg.settings import setting

if TYPE_CHECKING:
    import numpy as np

    from wsi_seg.model.config import ModelConfig


def _gray_uint8(rgb: np.ndarray) -> np.ndarray:
    import numpy as np  # numpy and scikit-image on first use: the CLI starts without them
    from skimage.color import rgb2gray

    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {rgb.shape}")
    return (rgb2gray(rgb[..., :3]) * 255.0).astype(np.float32)


# skimage.color.rgb2gray's weights (ITU-R BT.709 luma) times 10⁴: integers, summing to 10⁴
_LUMA_E4 = (2125, 7154, 721)


def _brighter_than(rgb: np.ndarray, threshold: float) -> np.ndarray:
    """``_gray_uint8(rgb) > threshold``, in integer arithmetic where that gives the same map.

    For a threshold t in [0, 256) that float32 holds exactly and t·10⁴ is an integer, the
    gray value 10⁻⁴·Σ wᵢ·cᵢ is either exactly t or at least 10⁻⁴ away from it, far more
    than float64's error and float32's rounding (< 8·10⁻⁶ below 256); a pixel exactly at
    t rounds to t in float32 and is not above it. So the integer comparison is exact,
    and 2–3× cheaper (``tests/test_tissue.py`` checks every one of the 2²⁴ colours).
    """
    import numpy as np

    t = threshold * 10_000
    exact = 0 <= threshold < 256 and float(t).is_integer() and float(np.float32(threshold)) == threshold
    if not exact or rgb.ndim != 3 or rgb.shape[2] < 3 or rgb.dtype != np.uint8:
        return _gray_uint8(rgb) > threshold
    total = rgb[..., 0].astype(np.int32) * _LUMA_E4[0]
    total += rgb[..., 1].astype(np.int32) * _LUMA_E4[1]
    total += rgb[..., 2].astype(np.int32) * _LUMA_E4[2]
    return total > int(t)


def background_seed(rgb: np.ndarray, gray_threshold: float = 200, min_size_px: int = 200) -> np.ndarray:
    """Boolean (H, W) map of background (glass, lumen) in an RGB uint8 image.

    Pixels brighter than ``gray_threshold`` are background candidates; connected white
    regions smaller than ``min_size_px`` pixels are dropped (they are inside tissue).
    """
    from skimage.morphology import remove_small_objects

    candidates = _brighter_than(rgb, gray_threshold)
    if min_size_px > 0:
        candidates = remove_small_objects(candidates, max_size=min_size_px - 1)
    return candidates


@dataclass(frozen=True)
class BackgroundSeedParams:
    """Background seeding of patches and blocks; ``enabled=False`` seeds no background."""

    enabled: bool = True
    gray_threshold: float = 200
    min_size_px: int = 200

    @classmethod
    def of_model(cls, cfg: ModelConfig) -> BackgroundSeedParams:
        """The seeding a checkpoint was trained with (and runs with)."""
        return cls(cfg.background_seeding, cfg.bkg_gray_threshold, cfg.bkg_min_size_px)

    def seed(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W) bool background seed of an (H, W, 3) uint8 image."""
        if not self.enabled:
            import numpy as np

            return np.zeros(rgb.shape[:2], bool)
        return background_seed(rgb, gray_threshold=self.gray_threshold, min_size_px=self.min_size_px)


@dataclass(frozen=True)
class TissueParams:
    """Tissue detection on a thumbnail; areas in µm² so they hold at any resolution."""

    thumbnail_mpp: float = 8.0
    gray_threshold: float = 220
    min_saturation: float = 0.05
    min_tissue_um2: float = 20_000.0
    max_hole_um2: float = 20_000.0
    min_tissue_fraction: float = setting(0.05, flag="--tissue-threshold", metavar="F",
                                         help="minimum tissue fraction of a patch to run it")


def tissue_mask(rgb: np.ndarray, mpp: float, params: TissueParams = TissueParams()) -> np.ndarray:
    """Boolean (H, W) tissue map of an RGB image at ``mpp`` µm/px.

    Tissue is darker than ``gray_threshold`` or saturated (stained); specks smaller than
    ``min_tissue_um2`` are removed and holes up to ``max_hole_um2`` are filled.
    """
    import numpy as np
    from skimage.morphology import remove_small_holes, remove_small_objects

    rgb = rgb[..., :3]
    gray = _gray_uint8(rgb)
    rgbf = rgb.astype(np.float32)
    mx, mn = rgbf.max(axis=2), rgbf.min(axis=2)
    saturation = (mx - mn) / np.maximum(mx, 1.0)
    tissue = (gray < params.gray_threshold) | (saturation > params.min_saturation)
    px_area_um2 = mpp * mpp
    min_obj = int(params.min_tissue_um2 / px_area_um2)
    max_hole = int(params.max_hole_um2 / px_area_um2)
    if min_obj > 0:
        tissue = remove_small_objects(tissue, max_size=min_obj)
    if max_hole > 0:
        tissue = remove_small_holes(tissue, max_size=max_hole)
    return tissue
