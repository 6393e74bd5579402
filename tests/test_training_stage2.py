"""Stage 2: the NR and CE losses, pseudo-label data, and stage 1 → pseudo-labels → stage 2 end to end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import interrupted_then_resumed
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2
from wsi_seg_training import cli
from wsi_seg_training.config import Stage2Config, load_config, load_stage1_config
from wsi_seg_training.losses import GumbelSoftmax, NRLoss

from wsi_seg.errors import CheckpointError, ConfigError, DatasetError
from wsi_seg.model import load_checkpoint

# --- losses -------------------------------------------------------------------------


def test_nr_loss_matches_a_hand_computed_example():
    """Two pixels, N = 2 classes; softmax instead of Gumbel so the numbers are exact.

    Pixel A, pseudo-label 1, CAMs (0.6, 0.2): c = (0, 0.75, 0.25); logits (0, ln 2, 0)
    → P = (1/4, 1/2, 1/4); loss = −0.75 log(1/2) − 0.25 log(1 − 1/4).
    Pixel B, pseudo-label 0 (background), CAMs (0.3, 0.1): c = (1, 0, 0); logits
    (ln 3, 0, 0) → P = (3/5, 1/5, 1/5); loss = −log(3/5).
    """
    logits = torch.tensor([[0.0, math.log(3)], [math.log(2), 0.0], [0.0, 0.0]]).view(1, 3, 1, 2)
    mask = torch.tensor([[[1, 0]]])
    cams = torch.tensor([[0.6, 0.3], [0.2, 0.1]]).view(1, 2, 1, 2)
    loss = NRLoss(probabilities=nn.Softmax(dim=1))
    expected = (0.75 * math.log(2) + 0.25 * math.log(4 / 3) + math.log(5 / 3)) / 2
    assert loss(logits, mask, cams).item() == pytest.approx(expected, rel=1e-6)
    conf = NRLoss.confidence(cams, mask)
    assert conf[0, :, 0, 0].tolist() == pytest.approx([0.0, 0.75, 0.25])
    assert conf[0, :, 0, 1].tolist() == pytest.approx([1.0, 0.0, 0.0])
    # the saved uint8 CAMs give the same confidences; all-zero CAMs give none
    assert torch.allclose(NRLoss.confidence((cams * 255).round().to(torch.uint8), mask), conf, atol=2e-3)
    assert NRLoss.confidence(torch.zeros(1, 2, 1, 2), torch.ones(1, 1, 2, dtype=torch.long)).sum() == 0


def test_nr_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="do not fit"):
        NRLoss()(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 3, 4, 4))


def test_gumbel_softmax_is_seeded_and_leaves_the_global_rng_alone():
    logits = torch.randn(2, 5, 3, 3, requires_grad=True)
    a, b = GumbelSoftmax(tau=0.5, seed=7), GumbelSoftmax(tau=0.5, seed=7)
    before = torch.get_rng_state()
    first, again = a(logits), b(logits)
    assert torch.equal(first, again) and torch.equal(torch.get_rng_state(), before)
    second = a(logits)
    assert not torch.equal(first, second)  # the next call draws new noise
    a.reseed(7)
    assert torch.equal(a(logits), first)
    assert torch.allclose(first.sum(dim=1), torch.ones(2, 3, 3))
    loss = NRLoss(GumbelSoftmax(seed=1))(logits, torch.randint(0, 5, (2, 3, 3)), torch.rand(2, 4, 3, 3))
    loss.backward()
    assert torch.isfinite(loss) and logits.grad is not None and logits.grad.abs().sum() > 0


def test_ce_loss_sees_logits_upsampled_to_the_patch():
    from wsi_seg_training.stage2 import segmentation_loss

    logits = torch.randn(2, 5, 8, 8)
    mask = torch.randint(0, 5, (2, 32, 32), dtype=torch.uint8)
    got = segmentation_loss("ce", logits, {"mask": mask}, torch.device("cpu"), None)
    up = F.interpolate(logits, size=(32, 32), mode="bilinear", align_corners=False)
    assert got.item() == pytest.approx(F.cross_entropy(up, mask.long()).item(), rel=1e-6)
    # confident, correct logits give a loss near 0
    sure = F.one_hot(mask.long(), 5).permute(0, 3, 1, 2).float() * 50
    assert segmentation_loss("ce", sure, {"mask": mask}, torch.device("cpu"), None).item() < 1e-6


def test_stage2_defaults_are_the_thesis():
    cfg = Stage2Config()
    assert (cfg.optim.lr, cfg.epochs, cfg.batch_size, cfg.loss.name) == (1e-4, 20, 32, "ce")
    data = Stage2Config().data.__class__(path="d")
    Stage2Config(out="o", init="i", data=data).validate()  # no pseudo-labels: the masks are the targets
    with pytest.raises(ConfigError, match="the nr loss weighs pseudo-labels by their CAMs"):
        load_config(Stage2Config, None, {"out": "o", "init": "i", "data.path": "d", "loss.name": "nr"}).validate()
    with pytest.raises(ConfigError, match="loss must be ce or nr"):
        load_config(Stage2Config, None, {"loss.name": "dice"}).validate()


def test_stage_flags_of_the_other_stage_are_refused(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", "--stage", "2", "--data", "d", "--out", "o", "--momentum", "0.5"])
    with pytest.raises(ConfigError, match="--momentum applies to --stage 1 only"):
        cli.train_config_from_args(args)
    args = parser.parse_args(["train", "--stage", "1", "--data", "d", "--out", "o", "--loss", "nr"])
    with pytest.raises(ConfigError, match="--loss applies to --stage 2 only"):
        cli.train_config_from_args(args)
    path = tmp_path / "c.yaml"
    path.write_text("loss: {name: nr, gumbel_tau: 0.5}\nepochs: 3\n")
    args = parser.parse_args(["train", "--stage", "2", "--config", str(path), "--data", "d", "--out", "o",
                              "--pseudo-labels", "pl", "--init", "ck", "--epochs", "4"])
    cfg = cli.train_config_from_args(args).validate()
    assert cfg.loss.name == "nr" and cfg.loss.gumbel_tau == 0.5 and cfg.epochs == 4
    assert cfg.data.pseudo_labels == "pl" and cfg.init == "ck"
    assert Stage2Config.from_dict(cfg.to_dict()) == cfg


EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "configs"


@pytest.mark.parametrize("name", ["stage2_luad.yaml", "stage2_tiny_cpu.yaml"])
def test_example_configs_load(name):
    cfg = load_config(Stage2Config, EXAMPLES / name,
                      {"data.path": "d", "data.pseudo_labels": "p", "init": "i", "out": "o"}).validate()
    assert cfg.epochs >= 1


def test_pseudo_label_dataset_flips_image_mask_and_cams_together(tmp_path):
    from PIL import Image
    from wsi_seg_training.datasets.pseudo import PseudoLabelDataset, PseudoLabelRecord
    from wsi_seg_training.pseudo_labels import write_cams, write_label_png

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    mask = rng.integers(0, 5, (32, 32), dtype=np.uint8)
    cams = rng.random((4, 32, 32)).astype(np.float32)
    Image.fromarray(rgb).save(tmp_path / "p.png")
    write_label_png(tmp_path / "m.png", mask, [0] * 768)
    write_cams(tmp_path / "c.npz", cams)
    rec = PseudoLabelRecord(image=tmp_path / "p.png", mask=tmp_path / "m.png", cams=tmp_path / "c.npz")
    plain = PseudoLabelDataset([rec], 4, with_cams=True)[0]
    flipped = PseudoLabelDataset([rec], 4, transform=v2.RandomHorizontalFlip(p=1.0), with_cams=True)[0]
    assert torch.equal(plain["mask"], torch.from_numpy(mask)) and plain["cams"].dtype == torch.float32
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    assert torch.equal(flipped["mask"], plain["mask"].flip(-1))
    assert torch.equal(flipped["cams"], plain["cams"].flip(-1))
    assert np.allclose(plain["cams"].numpy(), cams, atol=1 / 255)


# --- end to end -----------------------------------------------------------------------


def _stage2_cfg(data: Path, pl: Path, init: Path, out: Path, **overrides) -> Stage2Config:
    base = {"data.path": str(data), "data.pseudo_labels": str(pl), "init": str(init), "out": str(out),
            "epochs": 2, "batch_size": 2, "optim.lr": 1e-3, "data.workers": 0, "device": "cpu",
            "progress": False, "seed": 1}
    base.update(overrides)
    return load_config(Stage2Config, None, base)


@pytest.fixture(scope="module")
def stage1(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny LUAD-layout dataset, a 1-epoch tiny stage-1 checkpoint and its pseudo-labels."""
    from wsi_seg_training.pseudo_labels import generate_pseudo_labels
    from wsi_seg_training.stage1 import train_stage1
    from wsi_seg_training.synthetic_dataset import write_dataset

    root = tmp_path_factory.mktemp("stage2")
    data = write_dataset(root / "luad", n_train=4, n_val=2, n_test=0, seed=4)
    run = train_stage1(load_stage1_config(None, {
        "data.path": str(data), "out": str(root / "s1"), "model.preset": "tiny", "epochs": 1, "batch_size": 2,
        "data.workers": 0, "device": "cpu", "progress": False, "val_every": 0}))
    generate_pseudo_labels(run.checkpoint, data, root / "pl", device="cpu", progress=False)
    return {"root": root, "data": data, "init": run.checkpoint, "pl": root / "pl"}


@pytest.mark.slow
def test_stage2_ce_from_the_cli_gives_a_checkpoint_segment_can_use(stage1, tmp_path, capsys):
    from conftest import blob_image, write_slide

    from wsi_seg.inference.segment import SegmentOptions, segment_slide

    run = tmp_path / "ce"
    assert cli.main(["train", "--stage", "2", "--data", str(stage1["data"]), "--pseudo-labels", str(stage1["pl"]),
                     "--init", str(stage1["init"]), "--out", str(run), "--epochs", "2", "--batch-size", "2",
                     "--lr", "1e-3", "--workers", "0", "--device", "cpu", "--no-progress"]) == 0
    assert "stage 2: 2 epochs, loss (ce)" in capsys.readouterr().out
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(r["val_miou"] != "" for r in rows)
    assert float(rows[1]["loss"]) < float(rows[0]["loss"])
    loaded = load_checkpoint(run / "checkpoint")
    init = load_checkpoint(stage1["init"])
    cfg = loaded.config
    assert cfg.stage == 2 and cfg.class_names == init.config.class_names and cfg.preset == "tiny"
    prov = cfg.provenance["training"]
    assert prov["stage"] == 2 and prov["loss"]["name"] == "ce" and prov["init"]["sha256"] == init.sha256
    assert prov["pseudo_labels"]["path"] == str(stage1["pl"].resolve()) and prov["stage1"]["stage"] == 1
    assert prov["optim"] == {"name": "AdamW", "lr": 1e-3, "weight_decay": 0.01}
    # the stage-1 classifier came along untouched; the encoder was fine-tuned from the stage-1 one
    assert torch.equal(loaded.net.cam_head.classifier.weight, init.net.cam_head.classifier.weight)
    assert not torch.equal(loaded.net.encoder.body.model.patch_embed.proj.weight,
                           init.net.encoder.body.model.patch_embed.proj.weight)

    slide = write_slide(tmp_path / "slide.tif", blob_image(384), mpp=1.0, tile_px=128, downsamples=())
    res = segment_slide(slide, tmp_path / "out.zarr", loaded, SegmentOptions(device="cpu", workers=0, progress=False))
    assert res.patches_run > 0
    assert cli.main(["evaluate", "--model", str(run / "checkpoint"), "--data", str(stage1["data"]),
                     "--split", "val", "--device", "cpu", "--no-progress"]) == 0


@pytest.mark.slow
def test_stage2_nr_resumes_to_the_same_result(stage1, tmp_path):
    from wsi_seg_training.stage2 import train_stage2

    full = train_stage2(_stage2_cfg(stage1["data"], stage1["pl"], stage1["init"], tmp_path / "full",
                                    **{"loss.name": "nr", "val_every": 0}))
    assert full.history[1]["loss"] < full.history[0]["loss"]
    assert load_checkpoint(full.checkpoint).config.provenance["training"]["loss"]["name"] == "nr"

    resumed = interrupted_then_resumed(train_stage2, _stage2_cfg(stage1["data"], stage1["pl"], stage1["init"],
                                                                 tmp_path / "cut", **{"loss.name": "nr", "val_every": 0}))
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]
    a, b = load_checkpoint(full.checkpoint).net.state_dict(), load_checkpoint(resumed.checkpoint).net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConfigError, match="different settings"):
        train_stage2(_stage2_cfg(stage1["data"], stage1["pl"], stage1["init"], tmp_path / "cut"))


@pytest.mark.slow
def test_bad_pseudo_labels_and_init_are_one_line_errors_naming_the_path(stage1, tmp_path, capsys, checkpoints):
    import shutil

    from wsi_seg_training.stage2 import train_stage2

    def run(pl: Path, init: Path, data: Path | None = None, loss: str = "ce") -> str:
        argv = ["train", "--stage", "2", "--data", str(data or stage1["data"]), "--pseudo-labels", str(pl),
                "--init", str(init), "--out", str(tmp_path / "run"), "--loss", loss, "--batch-size", "4",
                "--device", "cpu", "--no-progress"]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("wsi-seg: error: ")
        return err[0]

    missing = tmp_path / "no such pl"
    assert str(missing) in run(missing, stage1["init"]) and "wsi-seg pseudo-labels" in run(missing, stage1["init"])
    assert "not a pseudo-label folder" in run(stage1["data"], stage1["init"])
    partial = tmp_path / "partial"
    shutil.copytree(stage1["pl"], partial)
    victim = sorted((partial / "train" / "mask").glob("*.png"))[2]
    victim.unlink()
    line = run(partial, stage1["init"])
    assert str(partial / "train" / "mask") in line and victim.name in line and "1 of 4" in line
    shutil.copy(sorted((partial / "train" / "mask").glob("*.png"))[0], partial / "train" / "mask" / "stranger.png")
    shutil.copy(sorted((partial / "train" / "mask").glob("*.png"))[0], victim)
    assert "stranger.png" in run(partial, stage1["init"])
    (partial / "train" / "mask" / "stranger.png").unlink()
    cams = sorted((partial / "train" / "cams").glob("*.npz"))[0]
    cams.unlink()
    assert str(cams) in run(partial, stage1["init"], loss="nr")
    # the init checkpoint must be stage 1, of the dataset's classes
    assert str(checkpoints[2]) in run(stage1["pl"], checkpoints[2]) and "stage-1" in run(stage1["pl"], checkpoints[2])
    from wsi_seg_training.synthetic_dataset import write_dataset

    bcss = write_dataset(tmp_path / "bcss", n_train=4, n_val=0, n_test=0, format="bcss", seed=1)
    line = run(stage1["pl"], stage1["init"], data=bcss)
    assert str(stage1["init"]) in line and "TUM" in line
    assert str(tmp_path / "nope") in run(stage1["pl"], tmp_path / "nope")
    with pytest.raises(DatasetError):
        train_stage2(_stage2_cfg(stage1["data"], missing, stage1["init"], tmp_path / "api"))
    with pytest.raises(CheckpointError):
        train_stage2(_stage2_cfg(stage1["data"], stage1["pl"], checkpoints[2], tmp_path / "api"))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_stage2_under_torchrun_two_gloo_processes(stage1, tmp_path):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(root), *filter(None, [os.environ.get("PYTHONPATH")])]))
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "wsi_seg_training", "train", "--stage", "2", "--data", str(stage1["data"]), "--pseudo-labels",
           str(stage1["pl"]), "--init", str(stage1["init"]), "--out", str(run), "--loss", "nr", "--epochs", "1",
           "--batch-size", "4", "--workers", "0", "--device", "cpu", "--val-every", "0", "--no-progress"]
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("stage 2: 1 epochs") == 1  # only rank 0 reports
    assert json.loads((run / "run.json").read_text())["world_size"] == 2
    assert load_checkpoint(run / "checkpoint").config.stage == 2
