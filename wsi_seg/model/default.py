"""The model ``wsi-seg segment`` uses when ``--model`` is not given: the bundled demo model."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from wsi_seg.errors import CheckpointError

DEMO_MODEL_DIR = "demo_model"


def default_model_path() -> Path:
    """Path of the bundled demo checkpoint (trained on synthetic tissue, not for diagnosis)."""
    path = Path(str(files("wsi_seg") / "assets" / DEMO_MODEL_DIR))
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(
            f"{path}: no bundled demo model in this installation; pass --model CHECKPOINT"
        )
    return path
