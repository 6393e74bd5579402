"""Unsupervised pre-training: the intra/inter NT-Xent terms, the views, the weights file, and
pretrain → stage 1 ``--pretrained`` end to end."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from wsi_seg.errors import CheckpointError, ConfigError, DatasetError
from wsi_seg.model import PsclNet, load_checkpoint, preset_config

from wsi_seg_training import cli
from wsi_seg_training.config import PretrainConfig, load_config
from wsi_seg_training.losses import IntraInterNTXentLoss


def _ntxent(emb: torch.Tensor, pos: list[int], tau: float) -> torch.Tensor:
    """Eq. 3.1 by hand: mean over anchors i of −log(exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ))."""
    z = F.normalize(emb, dim=1)
    sim = z @ z.T / tau
    losses = [-(sim[i, j] - torch.logsumexp(torch.cat([sim[i, :i], sim[i, i + 1:]]), 0)) for i, j in enumerate(pos)]
    return torch.stack(losses).mean()


def test_intra_term_is_dense_and_within_each_image():
    torch.manual_seed(0)
    b, d, h, w, tau = 3, 8, 2, 3, 0.1
    dx, dv = torch.randn(b, d, h, w), torch.randn(b, d, h, w)
    loss = IntraInterNTXentLoss(temperature=tau)
    p = h * w
    pos = [i + p for i in range(p)] + list(range(p))  # cell (i, j) of x ↔ cell (i, j) of v
    expected = torch.stack([
        _ntxent(torch.cat([dx[k].reshape(d, -1).T, dv[k].reshape(d, -1).T]), pos, tau) for k in range(b)
    ]).mean()
    assert loss.intra(dx, dv).item() == pytest.approx(expected.item(), rel=1e-5)
    # other images are no negatives: changing image 1 leaves image 0's term alone
    only0 = loss.intra(dx[:1], dv[:1])
    dx2 = dx.clone()
    dx2[1] = dx[0]
    assert loss.intra(dx2[:1], dv[:1]).item() == pytest.approx(only0.item())


def test_inter_term_is_simclr_across_the_batch():
    torch.manual_seed(1)
    b, d, tau = 4, 16, 0.1
    gx, gs = torch.randn(b, d), torch.randn(b, d)
    loss = IntraInterNTXentLoss(inter_weight=0.5, temperature=tau)
    pos = [i + b for i in range(b)] + list(range(b))
    expected = _ntxent(torch.cat([gx, gs]), pos, tau)
    assert loss.inter(gx, gs).item() == pytest.approx(expected.item(), rel=1e-5)
    dx = torch.randn(b, d, 2, 2)
    total = loss(dx, dx + 0.01, gx, gs)
    assert total.item() == pytest.approx(loss.last_stats["intra"] + 0.5 * loss.last_stats["inter"], rel=1e-5)
    # matching views give a lower loss than unrelated ones
    assert loss.inter(gx, gx + 0.01 * torch.randn(b, d)) < loss.inter(gx, gs)


def test_pretrain_defaults_are_the_thesis():
    cfg = PretrainConfig()
    assert (cfg.optim.lr, cfg.epochs, cfg.batch_size, cfg.contrast.inter_weight) == (1e-4, 20, 6, 0.5)
    with pytest.raises(ConfigError, match="batch_size must be ≥ 2"):
        load_config(PretrainConfig, None, {"data.path": "d", "out": "o", "batch_size": 1}).validate()
    path = Path(__file__).resolve().parents[1] / "examples" / "configs" / "pretrain_luad.yaml"
    assert load_config(PretrainConfig, path, {"data.path": "d", "out": "o"}).validate().model.preset == "swin-t"


def _write_images(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(sizes):
        path = folder / f"sub{i % 2}" / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_image_folders_and_views(tmp_path):
    from wsi_seg_training.datasets.unlabelled import ContrastiveViews, check_image_sizes, pretrain_images
    from wsi_seg_training.synthetic_dataset import write_dataset

    paths = _write_images(tmp_path / "plain", [(256, 240), (224, 224), (300, 230)])
    assert pretrain_images(tmp_path / "plain") == sorted(paths)
    data = write_dataset(tmp_path / "luad", n_train=3, n_val=1, n_test=0, seed=0)
    found = pretrain_images(data)
    assert len(found) == 3 and all(p.parent.name == "train" for p in found)
    assert len(pretrain_images(data, "folder")) == 5  # every image below, masks too
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        pretrain_images(tmp_path / "empty")
    with pytest.raises(DatasetError, match="no train/ folder"):
        pretrain_images(tmp_path / "plain", "luad")
    small = _write_images(tmp_path / "small", [(100, 300)])[0]
    with pytest.raises(DatasetError, match=str(small)):
        check_image_sizes([small], 224)
    torch.manual_seed(0)
    sample = ContrastiveViews(paths, 224)[0]
    assert {k: tuple(v.shape) for k, v in sample.items() if k != "index"} == {
        "image": (3, 224, 224), "visual": (3, 224, 224), "spatial": (3, 224, 224)}
    assert all(sample[k].dtype == torch.uint8 for k in ("image", "visual", "spatial"))


def test_encoder_weights_use_timm_names_and_load_through_pretrained(tmp_path):
    from safetensors import safe_open

    from wsi_seg_training.pretrain import ContrastiveNet, check_pretrained_file, encoder_state_dict, save_encoder_weights

    cfg = preset_config("tiny", stage=1)
    torch.manual_seed(3)
    net = ContrastiveNet(cfg, projection_dim=16)
    path = save_encoder_weights(net.encoder, tmp_path / "enc.safetensors", cfg, {"note": "test"})
    names = set(encoder_state_dict(net.encoder))
    assert "patch_embed.proj.weight" in names and not any(n.startswith("model.") for n in names)
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == names
        meta = json.loads(f.metadata()["wsi_seg_pretrain"])
    assert meta["backbone"] == cfg.backbone and meta["preset"] == "tiny"
    loaded = PsclNet(cfg, pretrained=path)  # what stage 1's --pretrained does
    mine, theirs = net.encoder.state_dict(), loaded.encoder.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    fresh = PsclNet(cfg)
    assert not torch.equal(fresh.encoder.state_dict()["body.model.patch_embed.proj.weight"],
                           mine["body.model.patch_embed.proj.weight"])
    # a file made for another preset is refused in one line; files without our metadata pass
    check_pretrained_file(path, cfg)
    with pytest.raises(CheckpointError, match=r"pre-trained for preset tiny, but this run builds preset small"):
        check_pretrained_file(path, preset_config("small", stage=1))
    from safetensors.torch import save_file

    save_file(encoder_state_dict(net.encoder), str(tmp_path / "plain.safetensors"))
    check_pretrained_file(tmp_path / "plain.safetensors", preset_config("small", stage=1))


@pytest.mark.slow
def test_pretrain_then_stage1_starts_from_its_weights(tmp_path, capsys):
    from safetensors.torch import load_file

    from wsi_seg_training.synthetic_dataset import write_dataset

    data = write_dataset(tmp_path / "luad", n_train=4, n_val=0, n_test=0, seed=2)
    run = tmp_path / "pre"
    argv = ["pretrain", "--data", str(data), "--out", str(run), "--preset", "tiny", "--epochs", "2",
            "--batch-size", "2", "--lr", "1e-3", "--workers", "0", "--device", "cpu", "--no-progress"]
    assert cli.main(argv) == 0
    assert "--preset tiny --pretrained" in capsys.readouterr().out
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(math.isfinite(float(r["loss"])) and float(r["intra"]) > 0 and float(r["inter"]) > 0 for r in rows)
    assert cli.main(argv) == 2  # finished: not redone
    assert "already holds a finished run" in capsys.readouterr().err
    weights = run / "encoder.safetensors"

    s1 = tmp_path / "s1"
    assert cli.main(["train", "--stage", "1", "--data", str(data), "--out", str(s1), "--preset", "tiny",
                     "--pretrained", str(weights), "--epochs", "1", "--batch-size", "2", "--lr", "1e-12",
                     "--workers", "0", "--device", "cpu", "--val-every", "0", "--no-progress"]) == 0
    trained = load_checkpoint(s1 / "checkpoint")
    recorded = trained.config.provenance["training"]["pretrained"]
    assert recorded["spec"] == str(weights) and recorded["hub_repo"] is None
    assert recorded["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    saved = load_file(str(weights))
    enc = trained.net.encoder.body.model.state_dict()
    assert all(torch.allclose(enc[k], saved[k], atol=1e-6) for k in saved)  # lr ≈ 0: still the pre-trained weights


@pytest.mark.slow
def test_pretrain_resumes_to_the_same_weights(tmp_path):
    from safetensors.torch import load_file

    from wsi_seg_training.pretrain import train_pretrain
    from wsi_seg_training.synthetic_dataset import write_dataset

    data = write_dataset(tmp_path / "luad", n_train=4, n_val=0, n_test=0, seed=5)

    def cfg(out: str) -> PretrainConfig:
        return load_config(PretrainConfig, None, {
            "data.path": str(data), "out": str(tmp_path / out), "model.preset": "tiny", "epochs": 2,
            "batch_size": 2, "optim.lr": 1e-3, "data.workers": 0, "device": "cpu", "progress": False})

    full = train_pretrain(cfg("full"))

    def stop(epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_pretrain(cfg("cut"), on_epoch_end=stop)
    assert not (tmp_path / "cut" / "encoder.safetensors").exists()
    resumed = train_pretrain(cfg("cut"))
    assert resumed.resumed_from_epoch == 1
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    a, b = load_file(str(full.weights)), load_file(str(resumed.weights))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
