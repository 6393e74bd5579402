"""Shared fixtures: tiny checkpoints and small slides written by the tests themselves."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_seg.synthetic.files import (  # noqa: F401 (the tests import them from here)
    blob_image,
    edited_checkpoint,
    sparse_tiff,
    write_slide,
)

os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.manual_seed(0)


def write_hub_cache(cache_dir: Path, repo_id: str, tensors: dict[str, torch.Tensor], config: dict) -> Path:
    """Lay out one Hugging Face hub repository in a cache folder as ``huggingface_hub``
    leaves it after a download (refs/main → snapshots/<commit>/model.safetensors +
    config.json); returns the weights file."""
    import json

    from safetensors.torch import save_file

    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    weights = snapshot / "model.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(weights))
    (snapshot / "config.json").write_text(json.dumps(config))
    return weights


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache folder, used offline (HF_HUB_OFFLINE=1): nothing downloads."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Randomly initialised tiny stage-1 and stage-2 checkpoints."""
    from wsi_seg.model import PsclNet, preset_config, save_checkpoint

    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for stage in (1, 2):
        torch.manual_seed(stage)
        net = PsclNet(preset_config("tiny", stage=stage))
        out[stage] = save_checkpoint(net, root / f"stage{stage}")
    return out


@pytest.fixture(scope="session")
def blob_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_slide(tmp_path_factory.mktemp("slides") / "blob slide é.tif", blob_image(1024), mpp=0.5)


def write_result(
    root: Path,
    mask: np.ndarray,
    slide_path: Path | str = "/slides/s.svs",
    slide_mpp: float = 0.5,
    mpp: float = 1.0,
    class_names: tuple[str, ...] = ("TE", "NEC", "LYM"),
    class_colors: tuple[tuple[int, int, int], ...] = ((205, 51, 51), (0, 128, 0), (0, 0, 255)),
    chunk_px: int = 16,
    complete: bool = True,
    extra_provenance: dict | None = None,
) -> Path:
    """A real result store (ResultStore, pyramid, OME metadata) holding the class ``mask``
    at ``mpp`` µm/px; its slide is ``slide_path`` at ``slide_mpp``. Returns the store's path
    (``<root>.partial`` when not ``complete``)."""
    from wsi_seg.result.format import partial_path
    from wsi_seg.result.store import ResultStore
    from wsi_seg.slide.slide import slide_fingerprint

    h, w = mask.shape
    s = mpp / slide_mpp
    slide_path = Path(slide_path)
    prov = {
        "slide": {"path": str(slide_path), "mpp": slide_mpp, "dimensions_px": [round(w * s), round(h * s)],
                  "fingerprint": slide_fingerprint(slide_path) if slide_path.is_file() else None},
        "model": {"path": "/models/m", "sha256": "ab" * 32, "config": {"stage": 2, "patch_size_px": 32}},
        "mpp": mpp, "class_names": list(class_names), "class_colors": [list(c) for c in class_colors],
        **(extra_provenance or {}),
    }
    tmp = partial_path(root)
    store = ResultStore.create(tmp, (h, w), len(class_names), chunk_px, prov)
    store.open_for_writing()
    store.write_block((0, 0), 0, 0, np.zeros((len(class_names), h, w), np.uint8), mask)
    store.close()
    if not complete:
        return tmp
    store.finish(root, progress=False)
    return root


def interrupted_then_resumed(train, cfg, after_epoch: int = 1):
    """Run ``train(cfg)``, interrupt it (Ctrl-C) after ``after_epoch`` epochs, check that no
    checkpoint looks finished, then rerun it; the resumed run's result."""
    def stop(epoch, row):
        if epoch == after_epoch:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, on_epoch_end=stop)
    assert not (Path(cfg.out) / "checkpoint").exists()
    resumed = train(cfg)
    assert resumed.resumed_from_epoch == after_epoch
    return resumed


def boxes_mask(shape: tuple[int, int], boxes: dict[int, tuple[int, int, int, int]]) -> np.ndarray:
    """A uint8 class mask of ``shape``: 0 (glass) but each class's (y0, y1, x0, x1) box."""
    mask = np.zeros(shape, np.uint8)
    for value, (y0, y1, x0, x1) in boxes.items():
        mask[y0:y1, x0:x1] = value
    return mask
