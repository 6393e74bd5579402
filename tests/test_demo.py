"""The README's demo: bundled model, generated slide, result, preview and score."""

import pytest

from wsi_seg.cli.main import main
from wsi_seg.model import load_checkpoint
from wsi_seg.model.default import default_model_path
from wsi_seg.result.format import is_complete


def test_bundled_demo_model_loads():
    model = load_checkpoint(default_model_path())
    assert model.config.stage in (1, 2) and model.config.class_names == ("TE", "NEC", "LYM", "TAS")
    assert model.config.provenance["training"]["dataset_format"] == "luad"


@pytest.mark.slow
def test_demo_command_end_to_end(tmp_path, capsys):
    out, slide, png = tmp_path / "demo.zarr", tmp_path / "demo slide.tif", tmp_path / "overlay.png"
    code = main(["demo", "--size", "3072", "--out", str(out), "--slide", str(slide), "--preview", str(png),
                 "--device", "cpu", "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0
    assert is_complete(out) and png.stat().st_size > 1000
    miou = float(text.split("mIoU vs ground truth (tissue pixels): ")[1].split("%")[0])
    assert miou > 40.0  # the trained demo model, far above chance (25 %) on its synthetic tissue
