"""Pretrained encoder weights through the Hugging Face hub cache, offline (thesis §4.1.1).

Each test lays out a hub cache in a temp dir (``conftest.write_hub_cache``) holding a tiny
Swin's random tensors under the repository timm loads the tag from; nothing downloads.
"""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch
import yaml

from wsi_seg.errors import CheckpointError, ConfigError
from wsi_seg.model import PsclNet, load_checkpoint, preset_config
from wsi_seg.model.pretrained import IMAGENET_TAGS, resolve_pretrained

from conftest import write_hub_cache

ARCH = "swin_tiny_patch4_window7_224"
REPO = f"timm/{ARCH}.ms_in22k"  # the thesis' ImageNet-22k Swin-T
TINY = preset_config("tiny", stage=1)


def _cache_tiny_imagenet(cache) -> tuple[dict[str, torch.Tensor], object]:
    import timm

    torch.manual_seed(3)
    model = timm.create_model(ARCH, num_classes=0, **TINY.backbone_kwargs)
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    weights = write_hub_cache(cache, REPO, tensors, {"architecture": ARCH, "num_classes": 21841,
                                                     "pretrained_cfg": {"tag": "ms_in22k"}})
    return tensors, weights


def test_imagenet_means_the_thesis_swin_t_tag():
    from timm.models import get_pretrained_cfg

    assert IMAGENET_TAGS[ARCH] == "ms_in22k"
    cfg = get_pretrained_cfg(f"{ARCH}.ms_in22k")
    assert cfg.hf_hub_id == REPO and cfg.num_classes == 21841  # ImageNet-22k


def test_imagenet_weights_load_from_the_offline_hub_cache(offline_hub):
    tensors, file = _cache_tiny_imagenet(offline_hub)
    for spec in ("imagenet", "timm:ms_in22k", f"timm:{ARCH}.ms_in22k"):
        weights = resolve_pretrained(spec, ARCH, dict(TINY.backbone_kwargs))
        assert weights.file == file and weights.hub_repo == REPO and weights.model_name == f"{ARCH}.ms_in22k"
        assert weights.sha256 == hashlib.sha256(file.read_bytes()).hexdigest()
    net = PsclNet(TINY, pretrained="imagenet")
    loaded = net.encoder.body.model.state_dict()
    shared = [k for k in tensors if k in loaded]
    assert len(shared) >= len(tensors) - 2  # all but the final norm, which features_only drops
    for k in shared:
        assert torch.equal(loaded[k], tensors[k]), k
    assert net.encoder.pretrained.sha256 == weights.sha256


def test_missing_weights_are_one_line_naming_the_tag_and_the_fetch_command(offline_hub):
    with pytest.raises(CheckpointError) as info:
        resolve_pretrained("imagenet", ARCH)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"{ARCH}.ms_in22k" in msg and f"hf download {REPO}" in msg
    assert str(offline_hub) in msg
    with pytest.raises(CheckpointError, match="--pretrained none"):  # the default names the way out
        resolve_pretrained("auto", ARCH)


def test_specs_that_cannot_work_fail_before_any_lookup(offline_hub, tmp_path):
    assert resolve_pretrained("auto", ARCH, dict(TINY.backbone_kwargs)) is None  # no ImageNet tiny Swin
    assert resolve_pretrained("none", ARCH) is None and resolve_pretrained(None, ARCH) is None
    with pytest.raises(ConfigError, match="tags of swin_tiny_patch4_window7_224: ms_in1k, ms_in22k"):
        resolve_pretrained("timm:nonsense", ARCH)
    with pytest.raises(ConfigError, match="weights for convnext_tiny, but the model's backbone is swin"):
        resolve_pretrained("timm:convnext_tiny.fb_in22k", ARCH)
    with pytest.raises(CheckpointError, match="not found"):
        resolve_pretrained(tmp_path / "missing.safetensors", ARCH)
    pickled = tmp_path / "w.pth"
    pickled.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="never loaded"):
        resolve_pretrained(pickled, ARCH)


def test_pinned_hash_must_match(offline_hub):
    _cache_tiny_imagenet(offline_hub)
    with pytest.raises(CheckpointError, match="differs from the pinned"):
        resolve_pretrained("imagenet", ARCH, dict(TINY.backbone_kwargs), sha256="0" * 64)


def test_stage1_records_the_hub_weights_and_their_hash(offline_hub, tmp_path, capsys):
    from wsi_seg_training import cli
    from wsi_seg_training.synthetic_dataset import write_dataset

    _, file = _cache_tiny_imagenet(offline_hub)
    sha = hashlib.sha256(file.read_bytes()).hexdigest()
    data = write_dataset(tmp_path / "luad", n_train=2, n_val=0, n_test=0, seed=1)
    run = tmp_path / "s1"
    argv = ["train", "--stage", "1", "--data", str(data), "--out", str(run), "--preset", "tiny",
            "--pretrained", "imagenet", "--epochs", "1", "--batch-size", "2", "--workers", "0",
            "--device", "cpu", "--val-every", "0", "--no-progress"]
    assert cli.main(argv) == 0
    recorded = load_checkpoint(run / "checkpoint").config.provenance["training"]["pretrained"]
    assert recorded["hub_repo"] == REPO and recorded["sha256"] == sha and recorded["spec"] == "imagenet"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["pretrained"] == "imagenet" and saved["model"]["pretrained_sha256"] == sha

    shutil.rmtree(offline_hub / f"models--{REPO.replace('/', '--')}")
    swin = ["train", "--stage", "1", "--data", str(data), "--out", str(tmp_path / "s1b"), "--preset", "swin-t",
            "--epochs", "1", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--no-progress"]
    capsys.readouterr()
    assert cli.main(swin) == 2  # the default (auto) wants ImageNet-22k Swin-T, not cached here
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"hf download {REPO}" in err and "--pretrained none" in err
