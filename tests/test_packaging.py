"""The distribution installs collision-free import names: wsi_seg, wsi_seg_training and
wsi_seg_napari (from the training/ and napari_plugin/ folders), never a top-level
`training` or `napari_plugin` that other projects also use."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).parents[1]
FOLDERS = {"wsi_seg": "wsi_seg", "wsi_seg_training": "training", "wsi_seg_napari": "napari_plugin"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _packages_on_disk() -> set[str]:
    found = set()
    for name, folder in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *rel)))
    return found


def test_package_list_matches_the_folders():
    tool = _pyproject()["tool"]["setuptools"]
    assert tool["package-dir"] == {"wsi_seg_training": "training", "wsi_seg_napari": "napari_plugin"}
    assert set(tool["packages"]) == _packages_on_disk(), "add the new subpackage to pyproject's packages"


def test_entry_points_and_manifest_use_the_installed_names():
    project = _pyproject()["project"]
    commands = project["entry-points"]["wsi_seg.commands"]
    assert commands == {"train": "wsi_seg_training.cli:register", "view": "wsi_seg_napari.cli:register"}
    assert project["entry-points"]["napari.manifest"] == {"wsi-seg": "wsi_seg_napari:napari.yaml"}
    manifest = yaml.safe_load((ROOT / "napari_plugin" / "napari.yaml").read_text())
    python_names = [c["python_name"] for c in manifest["contributions"]["commands"]]
    assert python_names and all(n.startswith("wsi_seg_napari.") for n in python_names)
    for name in python_names:  # each names a module file that exists
        module = name.split(":")[0].split(".", 1)[1]
        assert (ROOT / "napari_plugin" / f"{module}.py").is_file(), name


def test_installed_training_package_is_the_folder():
    import wsi_seg_training

    assert Path(wsi_seg_training.__file__).parent.name == "training"


@pytest.mark.slow
def test_wheel_holds_only_collision_free_top_level_names(tmp_path):
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in FOLDERS.values():
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    out = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "-w", str(out), str(src)], check=True, capture_output=True)
    (wheel,) = out.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == set(FOLDERS)
    assert "wsi_seg_napari/napari.yaml" in names
    assert "wsi_seg/assets/demo_model/model.safetensors" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "train = wsi_seg_training.cli:register" in text
    assert "view = wsi_seg_napari.cli:register" in text


def test_the_engine_imports_neither_training_nor_the_napari_plugin():
    import ast

    banned = {"wsi_seg_training", "wsi_seg_napari", "training", "napari_plugin"}
    for path in (ROOT / "wsi_seg").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            assert not {n.split(".")[0] for n in names} & banned, f"{path.relative_to(ROOT)}:{node.lineno}"


def test_napari_finds_the_plugin_through_its_entry_point():
    npe2 = pytest.importorskip("npe2")

    manager = npe2.PluginManager()
    manager.discover()
    commands = [c.python_name for c in manager.get_manifest("wsi-seg").contributions.commands]
    assert commands and all(name.startswith("wsi_seg_napari.") for name in commands)
