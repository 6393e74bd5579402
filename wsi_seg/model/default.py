"""The model ``wsi-seg segment`` uses when ``--model`` is not given: the bundled demo model,
and the warning a run gives when that model meets a real slide."""

from __future__ import annotations

import functools
from importlib.resources import files
from pathlib import Path

from wsi_seg.errors import CheckpointError

DEMO_MODEL_DIR = "demo_model"
README_TRAINING = "README.md#train"  # where a user learns to train a model of their own tissue
DEMO_ON_REAL_WARNING = (
    "{slide}: segmented with the bundled demo model, a demonstration model trained on synthetic "
    "tissue; its classes mean nothing on real tissue. Train your own model (see the README, "
    f"section Train: {README_TRAINING}) and pass it with --model"
)


def default_model_path() -> Path:
    """Path of the bundled demo checkpoint (trained on synthetic tissue, not for diagnosis)."""
    path = Path(str(files("wsi_seg") / "assets" / DEMO_MODEL_DIR))
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(
            f"{path}: no bundled demo model in this installation; pass --model CHECKPOINT"
        )
    return path


@functools.lru_cache(maxsize=1)
def _demo_sha256() -> str | None:
    from wsi_seg.model.pretrained import file_sha256

    try:
        return file_sha256(default_model_path() / "model.safetensors")
    except CheckpointError:
        return None


def is_demo_model(weights_sha256: str) -> bool:
    """True when the weights are the bundled demo model's (a copy of it counts too)."""
    return weights_sha256 == _demo_sha256()


def is_synthetic_slide(slide_path: str | Path) -> bool:
    """True for a slide written by ``wsi_seg.synthetic`` (its ground truth lies beside it),
    the only tissue the demo model knows."""
    from wsi_seg.synthetic.slide import mask_paths

    return Path(slide_path).is_file() and mask_paths(slide_path)[1].is_file()


def demo_on_real_warning(weights_sha256: str, slide_path: str | Path) -> str | None:
    """The one-line warning for the demo model run on a real slide, or None when it does not apply."""
    if not is_demo_model(weights_sha256) or is_synthetic_slide(slide_path):
        return None
    return DEMO_ON_REAL_WARNING.format(slide=slide_path)
