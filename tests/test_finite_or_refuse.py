"""Non-finite weights and activations, and class counts beyond 8-bit label maps, are refused
with one line: never a result marked complete that is silently all background."""

from __future__ import annotations

import pytest
import torch
from test_cli import assert_one_line_error, run_cli, segment

from wsi_seg.errors import ConfigError
from wsi_seg.model import PsclNet, preset_config, save_checkpoint
from wsi_seg.model.config import MAX_CLASSES
from wsi_seg.model.predict_rules import IGNORE_LABEL
from wsi_seg.result.format import is_complete, partial_path


def _checkpoint(tmp_path, name, edit):
    torch.manual_seed(0)
    net = PsclNet(preset_config("tiny", stage=2))
    with torch.no_grad():
        edit(net)
    return save_checkpoint(net, tmp_path / name)


def test_a_checkpoint_with_nan_weights_is_refused_at_load(tmp_path, capsys, blob_slide):
    ckpt = _checkpoint(tmp_path, "nan", lambda net: next(net.head.parameters()).view(-1)[0].fill_(float("nan")))
    out = tmp_path / "s.zarr"
    code, _, err = segment(capsys, blob_slide, out, ckpt)
    assert_one_line_error(code, err, "model.safetensors", "NaN or infinite", "diverged")
    assert not out.exists() and not partial_path(out).exists()


def test_activations_that_overflow_stop_the_run_naming_the_checkpoint(tmp_path, capsys, blob_slide):
    def overflow(net):  # finite weights whose logits overflow to inf: the softmax gives NaN
        for p in net.head.classifier.parameters():
            p.fill_(3e38)

    ckpt = _checkpoint(tmp_path, "overflow", overflow)
    out = tmp_path / "s.zarr"
    code, _, err = segment(capsys, blob_slide, out, ckpt, "--precision", "fp32")
    assert_one_line_error(code, err, str(ckpt), "NaN or infinite activations", "left incomplete")
    assert not is_complete(out)


def test_more_classes_than_an_8_bit_label_map_holds_are_refused():
    assert MAX_CLASSES < IGNORE_LABEL
    names = tuple(f"c{i}" for i in range(MAX_CLASSES + 1))
    with pytest.raises(ConfigError, match=f"{MAX_CLASSES + 1} classes; label maps are 8-bit"):
        preset_config("tiny", stage=1, class_names=names, class_colors=((0, 0, 0),) * len(names))
    preset_config("tiny", stage=1, class_names=names[:-1], class_colors=((0, 0, 0),) * MAX_CLASSES)


def test_batch_size_and_workers_have_upper_bounds(tmp_path, capsys, blob_slide, checkpoints):
    from wsi_seg.inference.runtime import (
        MAX_BATCH_SIZE,
        MAX_WORKERS_PER_CPU,
        available_cpus,
    )

    out = tmp_path / "s.zarr"
    code, _, err = segment(capsys, blob_slide, out, checkpoints[2], "--batch-size", MAX_BATCH_SIZE + 1)
    assert_one_line_error(code, err, f"--batch-size {MAX_BATCH_SIZE + 1}: at most {MAX_BATCH_SIZE}")
    cpus = available_cpus().cpus
    code, _, err = run_cli(capsys, "segment", blob_slide, "--out", out, "--model", checkpoints[2], "--device", "cpu",
                           "--workers", 1000, "--no-progress")
    assert_one_line_error(code, err, f"--workers 1000: this process may use {cpus} CPUs",
                          f"at most {MAX_WORKERS_PER_CPU * cpus}")
    assert not out.exists()
    # the largest batch runs a small slide: the plan's noise batch is the slide's patches, not 1024
    code, _, err = segment(capsys, blob_slide, out, checkpoints[2], "--batch-size", MAX_BATCH_SIZE)
    assert code == 0, err
