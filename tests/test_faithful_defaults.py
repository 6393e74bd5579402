"""Defaults that follow the thesis where the code used to deviate from it."""

from __future__ import annotations

import pytest
import torch

from wsi_seg.model import PsclNet, preset_config

from wsi_seg_training.config import Stage1Config
from wsi_seg_training.datasets import BCSS, LUAD


def test_bcss_is_seeded_like_luad_with_its_own_min_size():
    # thesis §4.3.2: remove_small_objects min_size 200 (LUAD-HistoSeg), 600 (BCSS-WSSS); table 5.8
    assert (LUAD.background_seed, LUAD.bkg_min_size_px) == (True, 200)
    assert (BCSS.background_seed, BCSS.bkg_min_size_px) == (True, 600)


def test_stage1_gates_like_the_headline_rows_and_starts_from_imagenet():
    cfg = Stage1Config()
    assert cfg.pscl.gating and (cfg.pscl.gating_threshold, cfg.pscl.gating_epsilon) == (0.8, 0.0)
    assert cfg.model.pretrained == "auto"  # ImageNet-22k Swin-T for swin-t (table 5.13)


@pytest.mark.parametrize("preset, patch_px", [("swinv2-t", 224), ("swin-t", 256)])
def test_swin_models_run_at_the_patch_size(preset, patch_px):
    cfg = preset_config(preset, stage=1, patch_size_px=patch_px)
    assert preset_config(preset).patch_size_px == 224  # the datasets' and the slides' patch size
    net = PsclNet(cfg).eval()
    with torch.inference_mode():
        out = net.forward_stage1(torch.zeros(1, 3, patch_px, patch_px))
    assert out.class_maps.shape[-2:] == (patch_px // 32, patch_px // 32)
