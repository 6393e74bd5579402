import json

import pytest
import torch

from wsi_seg.errors import CheckpointError, ConfigError
from wsi_seg.model import ModelConfig, PsclNet, cams_from_class_maps, load_checkpoint, preset_config, read_config, save_checkpoint


@pytest.mark.parametrize("stage", [1, 2])
def test_shapes(stage):
    net = PsclNet(preset_config("tiny", stage=stage)).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        s1 = net.forward_stage1(x)
        assert s1.logits.shape == (2, 4) and s1.class_maps.shape == (2, 4, 7, 7)
        assert s1.features.shape[-2:] == (7, 7)
        if stage == 2:
            assert net(x).shape == (2, 5, 56, 56)
        else:
            with pytest.raises(ConfigError):
                net.forward_segmentation(x)


def test_pixel_decoder_is_fully_initialised():
    net = PsclNet(preset_config("tiny", stage=2))
    assert net.seg_head.decoder.level_embed.abs().sum() > 0
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_cams_are_max_normalised_relu():
    maps = torch.tensor([[[[-1.0, 2.0], [4.0, 0.0]]]])
    cams = cams_from_class_maps(maps)
    assert torch.allclose(cams, torch.tensor([[[[0.0, 0.5], [1.0, 0.0]]]]))


@pytest.mark.parametrize("stage", [1, 2])
def test_checkpoint_round_trip(tmp_path, stage):
    torch.manual_seed(0)
    net = PsclNet(preset_config("tiny", stage=stage, class_names=("a", "b"), class_colors=((1, 2, 3), (4, 5, 6)))).eval()
    path = save_checkpoint(net, tmp_path / "ck")
    loaded = load_checkpoint(path)
    assert loaded.config == net.cfg and len(loaded.sha256) == 64
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(net(x), loaded.net(x))
    # the single-file form carries its config in the safetensors metadata
    assert read_config(path / "model.safetensors") == net.cfg


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="colr"):
        ModelConfig.from_dict({"colr": 1})
    with pytest.raises(ConfigError):
        ModelConfig(stage=3)
    with pytest.raises(ConfigError):
        preset_config("nope")


def test_bad_checkpoints(tmp_path, checkpoints):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing")
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"\x80\x04pickle")
    with pytest.raises(CheckpointError, match="never loaded"):
        load_checkpoint(pt)
    # truncated weights
    bad = tmp_path / "trunc"
    bad.mkdir()
    data = (checkpoints[1] / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    (bad / "config.json").write_text((checkpoints[1] / "config.json").read_text())
    with pytest.raises(CheckpointError, match="trunc"):
        load_checkpoint(bad)
    # weights of one architecture under the config of another
    mismatch = tmp_path / "mismatch"
    mismatch.mkdir()
    (mismatch / "model.safetensors").write_bytes((checkpoints[1] / "model.safetensors").read_bytes())
    cfg = json.loads((checkpoints[1] / "config.json").read_text())
    cfg["class_names"], cfg["class_colors"] = ["a", "b"], [[0, 0, 0], [1, 1, 1]]
    (mismatch / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(mismatch)
    # invalid JSON config
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes((checkpoints[1] / "model.safetensors").read_bytes())
    (broken / "config.json").write_text("{nope")
    with pytest.raises(CheckpointError, match="JSON"):
        load_checkpoint(broken)


def test_pretrained_file_that_does_not_fit_is_one_clear_line(tmp_path):
    from safetensors.torch import save_file

    from wsi_seg.model.encoder import TimmEncoder

    weights = tmp_path / "enc.safetensors"
    tiny = TimmEncoder("swin_tiny_patch4_window7_224", **preset_config("tiny").backbone_kwargs)
    save_file({k: v.contiguous() for k, v in tiny.body.model.state_dict().items()}, str(weights))
    with pytest.raises(CheckpointError, match="enc.safetensors: weights do not fit") as info:
        TimmEncoder("swin_tiny_patch4_window7_224", pretrained=weights, **preset_config("small").backbone_kwargs)
    assert "\n" not in str(info.value)
    prefixed = tmp_path / "prefixed.safetensors"
    save_file({f"model.{k}": v.contiguous() for k, v in tiny.body.model.state_dict().items()}, str(prefixed))
    with pytest.raises(CheckpointError, match="prefixed.safetensors: weights do not fit"):
        TimmEncoder("swin_tiny_patch4_window7_224", pretrained=prefixed, **preset_config("tiny").backbone_kwargs)
    with pytest.raises(CheckpointError, match="not found"):
        TimmEncoder("swin_tiny_patch4_window7_224", pretrained=tmp_path / "missing.safetensors")


@pytest.mark.parametrize("stage", [1, 2])
def test_checkpoints_written_before_the_stage_heads_still_load(tmp_path, stage):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    net = PsclNet(preset_config("tiny", stage=stage)).eval()
    path = save_checkpoint(net, tmp_path / "ck")
    weights = path / "model.safetensors"
    legacy = {}
    for key, value in load_file(str(weights)).items():  # the names of the earlier layout
        for new, old in (("cam_head.classifier.", "classifier."), ("seg_head.decoder.", "decoder."),
                         ("seg_head.classifier.", "seg_head.")):
            if key.startswith(new):
                key = old + key[len(new):]
                break
        legacy[key] = value
    assert "classifier.weight" in legacy
    save_file(legacy, str(weights), metadata={"wsi_seg_config": net.cfg.to_json()})
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(net(x), load_checkpoint(path).net(x))
