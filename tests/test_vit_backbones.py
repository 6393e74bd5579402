"""Plain-ViT backbones (pathology foundation encoders): adapter, presets, hub loading, errors.

Offline only: tiny random ViTs, and a Hugging Face cache the tests build themselves.
"""

from __future__ import annotations

import json

import pytest
import torch

from wsi_seg.errors import CheckpointError, ConfigError
from wsi_seg.model import PsclNet, load_checkpoint, preset_config, save_checkpoint
from wsi_seg.model.backbones import is_plain_vit, resolve_hub_backbone
from wsi_seg.model.timm_create import timm_kwargs
from wsi_seg.model.feature_pyramid import block_indices
from wsi_seg.model.hub import parse_timm_config

TINY_VIT = dict(embed_dim=32, depth=2, num_heads=2)
HUB_REPO = "wsi-seg-tests/tiny-path-vit"
HUB_MEAN, HUB_STD = (0.7, 0.58, 0.7), (0.21, 0.23, 0.18)


@pytest.mark.parametrize("preset", ["vit-tiny", "vit-tiny-reg"])
@pytest.mark.parametrize("adapter", ["simple", "intermediates"])
def test_vit_encoder_gives_the_four_level_pyramid_and_stride_16_cams(preset, adapter):
    kwargs = dict(preset_config(preset).backbone_kwargs, depth=4)
    torch.manual_seed(0)
    net = PsclNet(preset_config(preset, vit_adapter=adapter, backbone_kwargs=kwargs)).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        feats = net.encoder(x)
        out = net.forward_stage1(x)
        seg = net.forward_segmentation(x) if net.cfg.stage == 2 else None
    assert [tuple(f.shape[-2:]) for f in feats] == [(56, 56), (28, 28), (14, 14), (7, 7)]
    assert [f.shape[1] for f in feats] == net.encoder.channels == [4, 8, 16, 32]
    assert net.encoder.feature_info.reduction() == [4, 8, 16, 32]
    assert net.encoder.feature_info.channels() == net.encoder.channels
    # stage 1 works on the stride-16 map: 14×14 CAMs at 224 px (Swin-T: 7×7)
    assert out.class_maps.shape == (2, 4, 14, 14) and out.features.shape == (2, 16, 14, 14)
    assert seg is not None and seg.shape == (2, 5, 56, 56)


def test_register_and_class_tokens_are_dropped_and_patch14_maps_resized():
    net = PsclNet(preset_config("vit-tiny-reg", stage=1)).eval()
    body = net.encoder.body
    assert body.num_prefix_tokens == 5 and net.encoder.patch_px == 14  # class + 4 registers
    with torch.no_grad():
        tokens = net.encoder.tokens(torch.randn(1, 3, 224, 224))
    assert tokens[0].shape == (1, 32, 14, 14)  # 16×16 patch-14 tokens → the stride-16 grid


def test_patch_sizes_must_suit_the_vit_and_stride_32():
    with pytest.raises(ConfigError, match="multiple of its 14-px patches"):
        PsclNet(preset_config("vit-tiny-reg", patch_size_px=256))
    net = PsclNet(preset_config("vit-tiny", stage=1, patch_size_px=256)).eval()  # 16 | 256: fine
    with torch.no_grad():
        assert net.forward_stage1(torch.randn(1, 3, 256, 256)).class_maps.shape[-2:] == (16, 16)


def test_block_indices_and_adapter_errors():
    assert block_indices("simple", 12) == [11]
    assert block_indices("intermediates", 12) == [2, 5, 8, 11]
    assert block_indices("intermediates", 24) == [5, 11, 17, 23]
    with pytest.raises(ConfigError, match="≥ 4 blocks"):
        block_indices("intermediates", 2)
    with pytest.raises(ConfigError, match="vit_adapter"):
        preset_config("vit-tiny", vit_adapter="fpn")


def test_backbone_kinds_and_layer_names():
    assert is_plain_vit("vit_large_patch16_224") and is_plain_vit("hf-hub:MahmoodLab/uni")
    assert not is_plain_vit("swin_tiny_patch4_window7_224") and not is_plain_vit("resnet50")
    from timm.layers import SwiGLUPacked

    kw = timm_kwargs({"mlp_layer": "swiglu_packed", "act_layer": "silu", "depth": 2})
    assert kw["mlp_layer"] is SwiGLUPacked and kw["act_layer"] is torch.nn.SiLU and kw["depth"] == 2
    with pytest.raises(ConfigError, match="unknown mlp_layer"):
        timm_kwargs({"mlp_layer": "swoosh"})


def test_swiglu_vit_as_virchow2_builds_from_json_safe_kwargs():
    """Virchow2 / UNI2-h need SwiGLUPacked + SiLU: named by string in the (JSON) config."""
    cfg = preset_config("vit-tiny", stage=1, backbone_kwargs=dict(
        TINY_VIT, mlp_layer="swiglu_packed", act_layer="silu", mlp_ratio=2.66667 * 2, reg_tokens=4,
        no_embed_class=True, init_values=1e-5))
    net = PsclNet(cfg)
    from timm.layers import GluMlp

    mlp = net.encoder.body.blocks[0].mlp
    assert isinstance(mlp, GluMlp) and isinstance(mlp.act, torch.nn.SiLU)  # SwiGLUPacked = GluMlp + SiLU
    assert json.loads(cfg.to_json())["backbone_kwargs"]["mlp_layer"] == "swiglu_packed"


@pytest.mark.parametrize("name", ["uni", "uni2-h", "virchow2", "h-optimus-0", "prov-gigapath"])
def test_pathology_presets_name_hub_backbones(name):
    cfg = preset_config(name)
    assert cfg.backbone.startswith("hf-hub:") and cfg.patch_size_px == 224 and cfg.preset == name


# ---------------------------------------------------------------- the Hugging Face hub


def build_hub_cache(root, repo=HUB_REPO, mean=HUB_MEAN, std=HUB_STD, seed=3):
    """A Hugging Face cache holding one timm ViT repository, as the hub client writes it.

    Returns (cache dir, the weights saved).
    """
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=0, init_values=1e-5, **TINY_VIT)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = root / f"models--{repo.replace('/', '--')}"
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    save_file(state, str(snap / "model.safetensors"))
    config = {
        "architecture": "vit_tiny_patch16_224",
        "num_classes": 0,
        "num_features": TINY_VIT["embed_dim"],
        "model_args": dict(TINY_VIT, num_classes=0),
        "pretrained_cfg": {"input_size": [3, 224, 224], "mean": list(mean), "std": list(std),
                           "num_classes": 0, "interpolation": "bicubic", "crop_pct": 1.0},
    }
    (snap / "config.json").write_text(json.dumps(config))
    return root, state


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 with HF_HUB_CACHE at a cache built here; yields (cache, weights)."""
    from huggingface_hub import constants

    cache, state = build_hub_cache(tmp_path / "hf")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return cache, state


def test_hub_backbone_resolves_to_its_timm_architecture_and_loads_its_weights(offline_hub, tmp_path):
    _, state = offline_hub
    cfg = preset_config("vit-tiny", stage=1, backbone=f"hf-hub:{HUB_REPO}", backbone_kwargs=dict(init_values=1e-5))
    resolved, weights = resolve_hub_backbone(cfg)
    assert weights == f"hf-hub:{HUB_REPO}"
    assert resolved.backbone == "vit_tiny_patch16_224" and resolved.mean == HUB_MEAN and resolved.std == HUB_STD
    assert resolved.backbone_kwargs == dict(TINY_VIT, init_values=1e-5)  # hub model_args + preset kwargs
    net = PsclNet(resolved, pretrained=weights)
    body = net.encoder.body.state_dict()
    assert all(torch.equal(body[k], v) for k, v in state.items() if k in body)
    assert torch.equal(body["blocks.0.ls1.gamma"], state["blocks.0.ls1.gamma"])  # init_values mattered
    # the checkpoint records the plain architecture: it loads with an empty cache, offline
    ckpt = save_checkpoint(net, tmp_path / "ckpt")
    from huggingface_hub import constants

    constants.HF_HUB_CACHE = str(tmp_path / "empty")
    loaded = load_checkpoint(ckpt)
    assert loaded.config.backbone == "vit_tiny_patch16_224"
    assert loaded.config.provenance["encoder_weights"] == f"hf-hub:{HUB_REPO}"


def test_patches_of_another_size_than_the_hub_models_input_are_warned(offline_hub, caplog):
    cfg = preset_config("vit-tiny", stage=1, backbone=f"hf-hub:{HUB_REPO}", patch_size_px=448)
    with caplog.at_level("WARNING", logger="wsi_seg.model.backbones"):
        resolve_hub_backbone(cfg)
    assert "pre-trained on 224-px inputs; these patches are 448 px" in caplog.text


def test_offline_without_the_cache_is_one_line_naming_the_repo(offline_hub):
    cfg = preset_config("uni", stage=1)
    with pytest.raises(CheckpointError) as err:
        resolve_hub_backbone(cfg)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("hf-hub:MahmoodLab/uni: not in the Hugging Face cache")
    assert "hf download MahmoodLab/uni" in msg and "HF_HUB_CACHE" in msg


@pytest.mark.parametrize("token", [None, "hf_xxx"])
def test_gated_model_errors_say_what_to_do(monkeypatch, token):
    import huggingface_hub

    def gated(repo_id, *args, **kwargs):
        raise _gated_error(repo_id)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: token)
    with pytest.raises(CheckpointError) as err:
        resolve_hub_backbone(preset_config("h-optimus-0"))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("hf-hub:bioptimus/H-optimus-0 is a gated model")
    assert "https://huggingface.co/bioptimus/H-optimus-0" in msg
    assert ("hf auth login" in msg) == (token is None)


def _gated_error(repo_id: str) -> Exception:
    """What huggingface_hub raises for a gated repository without access (HTTP 403)."""
    import httpx2
    from huggingface_hub.errors import GatedRepoError

    url = f"https://huggingface.co/{repo_id}/resolve/main/config.json"
    response = httpx2.Response(403, request=httpx2.Request("GET", url))
    return GatedRepoError(f"403 Client Error. Cannot access gated repo for url {url}.", response=response)


def test_non_timm_hub_config_is_refused():
    with pytest.raises(CheckpointError, match="not a timm model config"):
        parse_timm_config("owkin/phikon-v2", {"model_type": "dinov2", "hidden_size": 1024})
    info = parse_timm_config("a/b", {"architecture": "vit_base_patch16_224", "mean": [0.5] * 3, "std": [0.5] * 3,
                                     "input_size": [3, 224, 224]})  # the older single-dict layout
    assert info.architecture == "vit_base_patch16_224" and info.mean == (0.5, 0.5, 0.5)


def test_train_cli_names_the_gated_repo_in_one_line(tmp_path, monkeypatch, capsys):
    import huggingface_hub
    from wsi_seg_training.synthetic_dataset import write_dataset

    from wsi_seg.cli.main import main

    def gated(repo_id, *args, **kwargs):
        raise _gated_error(repo_id)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    data = write_dataset(tmp_path / "d", n_train=2, n_val=0, n_test=0, seed=1)
    code = main(["train", "--stage", "1", "--data", str(data), "--out", str(tmp_path / "run"),
                 "--backbone", "hf-hub:MahmoodLab/uni", "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "hf-hub:MahmoodLab/uni is a gated model" in err[0]
    assert not (tmp_path / "run" / "checkpoint").exists()


# ---------------------------------------------------------------- the whole pipeline


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["vit-tiny", "vit-tiny-reg"])
def test_vit_through_pretrain_stage1_pseudo_labels_stage2_and_segment(preset, tmp_path):
    from conftest import blob_image, write_slide
    from wsi_seg_training import experiment

    from wsi_seg.inference.segment import SegmentOptions, segment_slide
    from wsi_seg.model.vit_encoder import ViTEncoder

    data = experiment.synthetic_data(tmp_path / "data", 4, 2, 0, seed=0)
    encoder = None
    if preset == "vit-tiny":  # NT-Xent pre-training saves the ViT's weights, not the adapter's
        encoder = experiment.pretrain(data, tmp_path / "pre", preset, 1, 0, "cpu", batch_size=2)
        from safetensors.torch import load_file

        assert "blocks.0.attn.qkv.weight" in load_file(str(encoder)) and not any(
            k.startswith("neck.") for k in load_file(str(encoder)))
    s1 = experiment.stage1(data, tmp_path / "s1", preset, 1, 0, "cpu", pretrained=encoder, batch_size=2)
    if encoder is not None:  # a frozen backbone keeps the pre-trained weights; its adapter trains
        from safetensors.torch import load_file
        from wsi_seg_training.config import Stage1Config, load_config
        from wsi_seg_training.stage1 import train_stage1

        frozen = load_config(Stage1Config, None, {
            "data.path": str(data), "out": str(tmp_path / "s1f"), "model.preset": preset, "epochs": 1,
            "batch_size": 2, "model.pretrained": str(encoder), "encoder.freeze": True, "data.workers": 0,
            "device": "cpu", "progress": False})
        net = load_checkpoint(train_stage1(frozen).checkpoint).net
        saved = load_file(str(encoder))
        body = net.encoder.body.state_dict()
        assert all(torch.equal(body[k], v) for k, v in saved.items())
        assert net.cfg.provenance["training"]["encoder"] == {"freeze": True, "lr_scale": 1.0}
    init = load_checkpoint(s1)
    assert isinstance(init.net.encoder, ViTEncoder) and init.config.backbone == preset_config(preset).backbone
    labels = experiment.pseudo_labels(s1, data, tmp_path / "pl", "cpu")
    s2 = experiment.stage2(data, labels, s1, tmp_path / "s2", "ce", 1, 0, "cpu", batch_size=2)
    loaded = load_checkpoint(s2)
    assert loaded.config.stage == 2 and loaded.config.mpp == 1.0  # the data's µm/px, recorded
    slide = write_slide(tmp_path / "slide.tif", blob_image(384), mpp=1.0, tile_px=128, downsamples=())
    res = segment_slide(slide, tmp_path / "out.zarr", loaded, SegmentOptions(device="cpu", workers=0, progress=False))
    assert res.patches_run > 0


# ---------------------------------------------------------------- training the encoder


def test_parameter_groups_freeze_or_slow_the_backbone_only():
    from wsi_seg_training.config import EncoderTraining
    from wsi_seg_training.encoder_training import parameter_groups

    net = PsclNet(preset_config("vit-tiny", stage=1))
    body = {id(p) for p in net.encoder.body.parameters()}
    groups = parameter_groups(net, 0.1, EncoderTraining(lr_scale=0.1))
    assert [g["name"] for g in groups] == ["heads", "encoder"] and groups[1]["lr"] == pytest.approx(0.01)
    assert {id(p) for p in groups[1]["params"]} == body
    assert any(id(p) for p in groups[0]["params"] if p is net.encoder.neck.project[0][0].weight)  # adapter: heads
    frozen = parameter_groups(net, 0.1, EncoderTraining(freeze=True))
    assert len(frozen) == 1 and not any(p.requires_grad for p in net.encoder.body.parameters())
    net.train()
    assert not net.encoder.body.training and net.encoder.neck.training  # frozen backbone stays in eval mode


def test_encoder_training_settings_are_checked_and_flagged(capsys):
    from wsi_seg_training.cli import build_parser
    from wsi_seg_training.config import Stage1Config, Stage2Config, load_config

    with pytest.raises(ConfigError, match="no effect on a frozen encoder"):
        load_config(Stage1Config, None, {"encoder.freeze": True, "encoder.lr_scale": 0.1,
                                         "data.path": "x", "out": "y"}).validate()
    with pytest.raises(ConfigError, match="encoder lr scale must be positive"):
        load_config(Stage2Config, None, {"encoder.lr_scale": 0.0, "data.path": "x", "out": "y",
                                         "data.pseudo_labels": "p", "init": "i"}).validate()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    help_text = capsys.readouterr().out
    assert "--freeze-encoder" in help_text and "--encoder-lr-scale" in help_text and "hf-hub:ORG/NAME" in help_text
