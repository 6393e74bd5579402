"""``wsi-seg benchmark-method --data``: the method's comparisons on any dataset, beside
trivial baselines, with each run's settings read back and its training health.

A tiny generated make-dataset folder (offline, seeded); the real GlaS set from
``../shared/realdata`` when it is there (skipped otherwise; nothing of it is kept).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from wsi_seg_training import experiment
from wsi_seg_training.datasets.make import MakeDatasetConfig, make_dataset

from wsi_seg.cli.main import main
from wsi_seg.errors import OutputError

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "masks" / "glas_testA"
TINY = ["--preset", "tiny", "--epochs", "1", "--stage2-epochs", "1", "--stage1-batch-size", "4",
        "--stage2-batch-size", "4"]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """4 images of 128×192 px, 64-px patches: class A on the left third, B in the middle
    (every other image: unlabelled tissue → other), glass on the right."""
    root = tmp_path_factory.mktemp("made")
    images, masks = root / "images", root / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        rgb = np.empty((128, 192, 3), np.uint8)
        rgb[:, :64] = (190, 90, 150)
        rgb[:, 64:128] = (120, 60, 160)
        rgb[:, 128:] = 245
        rgb = np.clip(rgb + rng.integers(-12, 12, rgb.shape), 0, 255).astype(np.uint8)
        mask = np.zeros((128, 192), np.uint8)
        mask[:, :64] = 1
        if i % 2 == 0:
            mask[:, 64:128] = 2
        Image.fromarray(rgb).save(images / f"im{i}.png")
        Image.fromarray(mask, mode="L").save(masks / f"im{i}.png")
    cfg = MakeDatasetConfig(images=str(images), masks=str(masks), classes="A,B", other_class="other",
                            out=str(root / "ds"), patch=64, mpp=1.0, fractions="0.5,0,0.5")
    return make_dataset(cfg).out


def test_trivial_baselines_score_one_class_everywhere(made):
    rows = experiment.trivial_baselines(made)
    assert rows[0].name.startswith("Trivial: every tissue pixel A")  # the most frequent train label (ties: first)
    mlps = rows[0].scores["mlps"]
    # every tissue pixel A: IoU(A) = A's share of the tissue pixels, the others 0
    a, b, other = (np.asarray(mlps.iou) > 0).tolist()
    assert a and not b and not other
    assert math.isclose(mlps.miou, mlps.iou[0] / 3)
    assert all(r.train_seconds == 0 for r in rows)


def test_read_back_refuses_a_setting_that_did_not_take_effect(tmp_path):
    (tmp_path / "config.yaml").write_text("epochs: 3\nmodel: {preset: small}\noptim: {momentum: 0.9}\n")
    found = experiment.read_back(tmp_path, {"epochs": 3, "model.preset": "small"}, ("optim.momentum",))
    assert found == {"epochs": 3, "model.preset": "small", "optim.momentum": 0.9}
    with pytest.raises(OutputError, match=r"model.preset is 'small', not the 'tiny'"):
        experiment.read_back(tmp_path, {"model.preset": "tiny"})


def test_run_health_sees_a_non_finite_loss(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,loss,seconds\n1,0.9,1.0\n2,nan,1.0\n")
    health = experiment.run_health(tmp_path)
    assert health["epochs"] == 2 and health["finite"] is False and math.isnan(health["last_loss"])


def test_data_replaces_the_generated_sizes(made, tmp_path, capsys):
    code = main(["benchmark-method", "--work", str(tmp_path / "w"), "--data", str(made), "--n-train", "10"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--n-train" in err and "--data" in err


@pytest.mark.slow
def test_benchmark_runs_on_a_made_dataset(made, tmp_path, capsys):
    work = tmp_path / "w"
    assert main(["benchmark-method", "--work", str(work), "--data", str(made), *TINY]) == 0
    assert not (work / "data").exists()  # no synthetic set written
    results = json.loads((work / "results.json").read_text())
    assert results["data"] == str(made)
    names = [r["name"] for r in results["rows"]]
    assert len(names) == 8 and names[-1] == "Stage 2, NR"
    assert results["trivial_baselines"][0]["name"].split(" (")[0] == "Trivial: every tissue pixel A"
    first = results["rows"][0]
    # read back from the run's config.yaml / provenance: the dataset, its µm/px, random init
    assert first["settings"]["data.path"] == str(made) and first["settings"]["data.mpp"] == 1.0
    assert first["settings"]["provenance.pretrained"] is None and first["health"]["finite"] is True
    header = next(line for line in (work / "results.txt").read_text().splitlines() if line.startswith("Model"))
    assert header.split()[1:4] == ["A", "B", "other"]
    assert "Training health:" in capsys.readouterr().out


@pytest.mark.skipif(not REALDATA.is_dir(), reason="../shared/realdata (GlaS) is not on this machine")
def test_make_dataset_on_real_glands(tmp_path, capsys):
    args = ["make-dataset", "--images", str(REALDATA / "images"), "--masks", str(REALDATA / "masks_index"),
            "--classes", "gland", "--other-class", "stroma", "--out", str(tmp_path / "glas"), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "from 22 images" in printed and "no problems found" in printed
    made = json.loads((tmp_path / "glas" / "make.json").read_text())
    assert sum(s["images"] for s in made["splits"].values()) == 22
    assert all(made["splits"][s]["patches"] > 0 for s in ("train", "val", "test"))
