"""`wsi-seg finetune`: corrections learned with replay; refusals of bad input, one line each."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from wsi_seg.cli.main import main
from wsi_seg.model.predict_rules import IGNORE_LABEL
from wsi_seg.result.corrections import save_corrections
from wsi_seg.result.reader import Result
from wsi_seg.synthetic.files import edited_checkpoint


@pytest.fixture(scope="module")
def segmented(tmp_path_factory, checkpoints):
    """A 672² demo slide at the tiny model's 0.5 µm/px (3 × 3 patches of 224), segmented by
    the tiny stage-2 checkpoint."""
    from wsi_seg.inference.segment import SegmentOptions, segment_slide
    from wsi_seg.model import load_checkpoint
    from wsi_seg.synthetic import write_demo_slide

    root = tmp_path_factory.mktemp("finetune")
    demo = write_demo_slide(root / "slide.tif", size_px=(672, 672), mpp=0.5, seed=2, tissue_fraction=0.9)
    out = segment_slide(demo.path, root / "r.zarr", load_checkpoint(checkpoints[2]),
                        SegmentOptions(device="cpu", workers=0, progress=False, overlap_px=0)).out
    return out


@pytest.fixture
def result(segmented, tmp_path):
    return shutil.copytree(segmented, tmp_path / "r.zarr")


def _correct(res, y=250, x=420, size=40) -> int:
    """Paint a square of the result with another class; level-0 pixels changed."""
    crop = Result.open(res).mask(0)[y : y + size, x : x + size]
    return save_corrections(res, (y, x), crop, np.where(crop == 1, 2, 1).astype(np.uint8), author="test").pixels_changed


def _args(res, ckpt, out, *more):
    return ["finetune", str(res), "--model", str(ckpt), "--out", str(out), "--device", "cpu", "--no-progress",
            "--epochs", "1", "--batch-size", "2", "--precision", "fp32", *more]


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("wsi-seg: error:"), err
    for w in words:
        assert w in err, err
    return err


def test_weighted_loss_ignores_pixels_without_target_and_weighs_images():
    logits = torch.zeros(2, 3, 2, 2)
    logits[:, 1] = 2.0  # every pixel says class 1
    right = torch.ones(2, 4, 4, dtype=torch.uint8)
    from wsi_seg_training.finetune import weighted_segmentation_loss

    base = float(weighted_segmentation_loss(logits, right, torch.ones(2)))
    wrong = right.clone()
    wrong[0] = 2
    mixed = float(weighted_segmentation_loss(logits, wrong, torch.tensor([3.0, 1.0])))
    wrong_only = float(weighted_segmentation_loss(logits[:1], wrong[:1], torch.ones(1)))
    assert mixed == pytest.approx((3 * wrong_only + base) / 4, rel=1e-5)
    ignored = wrong.clone()
    ignored[0] = IGNORE_LABEL  # the wrong image has no target: only the right one counts
    assert float(weighted_segmentation_loss(logits, ignored, torch.tensor([3.0, 1.0]))) == pytest.approx(base, rel=1e-5)
    assert float(weighted_segmentation_loss(logits, torch.full_like(right, IGNORE_LABEL), torch.ones(2))) == 0.0


def test_distillation_keeps_the_starting_models_probabilities():
    from wsi_seg_training.finetune import distillation_loss

    torch.manual_seed(0)
    teacher = torch.randn(2, 5, 4, 4)
    everywhere, nowhere = torch.ones(2, 16, 16), torch.zeros(2, 16, 16)
    assert float(distillation_loss(teacher, teacher, everywhere)) == pytest.approx(0.0, abs=1e-6)
    moved = teacher.clone()
    moved[1] += torch.randn(5, 4, 4)
    first_only = nowhere.clone()
    first_only[0] = 1
    assert float(distillation_loss(moved, teacher, first_only)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(moved, teacher, 1 - first_only)) > 0.01
    assert float(distillation_loss(moved, teacher, nowhere)) == 0.0


def test_corrected_patch_targets_only_the_changed_pixels(result, checkpoints, tmp_path):
    from wsi_seg.exports.patches import export_patches
    from wsi_seg.model import load_checkpoint
    from wsi_seg_training.finetune import FinetuneDataset, Item, corrected_origins

    changed = _correct(result)
    origins, taken = corrected_origins(Result.open(result), 224)
    assert taken.sum() == changed and origins == [(224, 224), (224, 448)]  # the square straddles two patches
    out = export_patches(result, tmp_path / "p", origins=origins, min_tissue=0.0, model_masks=True).out
    name = "r_y224_x224.png"
    ds = FinetuneDataset([Item(out / "img" / name, "corrected", out / "mask" / name, out / "model_mask" / name)], 4, 4.0)
    ds.transform = None
    sample = ds[0]
    labels = Result.open(result).mask(0, "corrected")[224:448, 224:448]
    own = Result.open(result).mask(0)[224:448, 224:448]
    target = sample["mask"].numpy()
    assert np.array_equal(target != IGNORE_LABEL, labels != own)  # the rest of the patch is ignored
    assert np.array_equal(target[labels != own], labels[labels != own]) and float(sample["weight"]) == 4.0
    assert not sample["distill"].any()
    rest = FinetuneDataset([Item(out / "img" / name, "corrected", out / "mask" / name, out / "model_mask" / name)], 4, 4.0,
                           keep_rest=True)
    rest.transform = None  # --keep-rest: the unchanged pixels keep the starting model's probabilities
    assert np.array_equal(rest[0]["distill"].numpy() == 1, labels == own)
    # the edited region the user left as it was is reviewed: targets too (each save records its region)
    from wsi_seg.result.corrections import corrections_history
    from wsi_seg_training.finetune import _local_boxes

    region = corrections_history(Result.open(result))[0]["region"]
    assert region == [250, 420, 290, 460]
    boxes = _local_boxes([region], (224, 224), 224)
    assert boxes == ((26, 196, 66, 224),)
    seen = FinetuneDataset([Item(out / "img" / name, "corrected", out / "mask" / name, out / "model_mask" / name,
                                 boxes)], 4, 4.0)
    seen.transform = None
    assert int((seen[0]["mask"] != IGNORE_LABEL).sum()) == 40 * 28
    replayed = FinetuneDataset([Item(out / "img" / name, "result", out / "mask" / name, out / "model_mask" / name)], 4, 4.0)
    soft = replayed[0]  # a replayed patch keeps the starting model's probabilities: no hard target
    assert bool(soft["distill"].all()) and bool((soft["mask"] == IGNORE_LABEL).all())
    assert load_checkpoint(checkpoints[2]).config.patch_size_px == 224


def test_nothing_corrected_is_refused_in_one_line(result, checkpoints, tmp_path, capsys):
    assert main(_args(result, checkpoints[2], tmp_path / "run")) == 2
    _one_line_error(capsys, "r.zarr", "no corrected pixel")
    assert not (tmp_path / "run").exists()


def test_another_model_or_other_classes_are_refused(result, checkpoints, tmp_path, capsys):
    from wsi_seg.model import PsclNet, preset_config, save_checkpoint

    _correct(result)
    torch.manual_seed(7)
    other = save_checkpoint(PsclNet(preset_config("tiny", stage=2)), tmp_path / "other")
    assert main(_args(result, other, tmp_path / "run")) == 2
    _one_line_error(capsys, "r.zarr", "segmented by another model")
    renamed = edited_checkpoint(checkpoints[2], tmp_path / "renamed", class_names=["A", "B", "C", "D"])
    assert main(_args(result, renamed, tmp_path / "run")) == 2
    _one_line_error(capsys, "r.zarr", "classes TE, NEC, LYM, TAS differ")


def test_corrections_older_than_the_checkpoint_are_flagged(result, checkpoints, tmp_path, capsys):
    _correct(result)
    later = edited_checkpoint(checkpoints[2], tmp_path / "later",
                              provenance={"training": {"finished_utc": "2999-01-01T00:00:00+00:00"}})
    assert main(_args(result, later, tmp_path / "run")) == 2
    _one_line_error(capsys, "r.zarr", "predate --model", "--allow-older-corrections")


@pytest.mark.slow
def test_finetune_learns_the_corrections_and_records_them(result, checkpoints, tmp_path, capsys):
    from wsi_seg.lock import folder_lock
    from wsi_seg.model import load_checkpoint

    changed = _correct(result)
    run = tmp_path / "run"
    with folder_lock(run):  # another writer holds the run folder: refused at once
        assert main(_args(result, checkpoints[2], run)) == 2
    _one_line_error(capsys, str(run))
    given = ("--replay", "1", "--corrected-weight", "3")
    assert main(_args(result, checkpoints[2], run, *given)) == 0
    assert "finetune: 1 epochs on 1 result(s)" in capsys.readouterr().out
    ckpt = load_checkpoint(run / "checkpoint")
    training = ckpt.config.provenance["training"]
    learned = training["finetune"]
    assert training["init"]["sha256"] == load_checkpoint(checkpoints[2]).sha256
    assert learned["results"][0]["path"] == str(result.resolve())
    assert learned["results"][0]["pixels_changed"] == changed
    assert learned["results"][0]["saves"][0]["author"] == "test"
    assert learned["patches"] == {"corrected": 2, "result": 2, "data": 0}
    saved = yaml.safe_load((run / "config.yaml").read_text())  # the settings took effect as given
    assert saved["replay"]["corrected_weight"] == 3.0 and saved["replay"]["result_ratio"] == 1.0
    assert saved["encoder"] == {"freeze": False, "lr_scale": 0.1} and saved["replay"]["targets"] == "soft"
    metrics = (run / "metrics.csv").read_text().splitlines()
    assert metrics[0].startswith("epoch,loss,ce,distill") and metrics[1].split(",")[3] != ""
    assert json.loads((run / "run.json").read_text())["finetune"]["patches"]["corrected"] == 2
    assert main(_args(result, checkpoints[2], run, *given)) == 2  # finished: a rerun says so
    assert "already holds a finished run" in capsys.readouterr().err


@pytest.mark.slow
def test_finetune_replays_the_original_training_set(result, checkpoints, tmp_path):
    from wsi_seg.model import load_checkpoint
    from wsi_seg_training.synthetic_dataset import write_dataset

    _correct(result)
    write_dataset(tmp_path / "data", n_train=6, n_val=2, n_test=1, format="luad", seed=0, mpp=0.5)
    run = tmp_path / "run"
    assert main(_args(result, checkpoints[2], run, "--data", str(tmp_path / "data"), "--data-replay", "1")) == 0
    learned = load_checkpoint(run / "checkpoint").config.provenance["training"]["finetune"]
    assert learned["patches"]["data"] == 2 and learned["data"] == str((tmp_path / "data").resolve())
    row = (run / "metrics.csv").read_text().splitlines()[1].split(",")
    assert row[6] != ""  # the original set's val masks scored the epoch
