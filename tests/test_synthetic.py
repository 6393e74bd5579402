"""Synthetic tissue, demo slide and patches (wsi_seg.synthetic)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from wsi_seg.synthetic import (
    CLASS_COLORS,
    CLASS_NAMES,
    DemoSlide,
    TissueStyle,
    random_label_map,
    read_ground_truth,
    synthesize_patch,
    synthesize_region,
    write_demo_slide,
)
from wsi_seg.synthetic.tissue import smooth_label_at

openslide = pytest.importorskip("openslide")


def _gray(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float32).mean(axis=2)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoSlide:
    return write_demo_slide(tmp_path_factory.mktemp("demo") / "demo slide.tif", size_px=(2048, 2048), seed=0)


def test_openslide_reads_demo_slide(demo: DemoSlide) -> None:
    osr = openslide.OpenSlide(str(demo.path))
    props = osr.properties
    assert props["openslide.vendor"] == "aperio"
    assert float(props["openslide.mpp-x"]) == pytest.approx(0.25)
    assert float(props["openslide.mpp-y"]) == pytest.approx(0.25)
    assert osr.dimensions == (2048, 2048) == demo.size_px
    assert osr.level_count >= 2
    assert osr.level_dimensions == demo.level_dimensions
    for k, ds in enumerate(osr.level_downsamples):
        assert ds == pytest.approx(4.0**k, rel=0.01)
    assert demo.class_names == CLASS_NAMES and demo.class_colors == CLASS_COLORS
    osr.close()


def test_slide_matches_ground_truth(demo: DemoSlide) -> None:
    mask, mask_mpp, names = read_ground_truth(demo.mask_path)
    assert names == CLASS_NAMES
    assert mask_mpp == pytest.approx(demo.mask_mpp)
    assert mask.dtype == np.uint8 and mask.shape == (round(2048 * 0.25 / mask_mpp),) * 2
    meta = json.loads(demo.mask_json_path.read_text())
    assert meta["slide_size_px"] == [2048, 2048]
    assert meta["class_colors"] == [list(c) for c in CLASS_COLORS]
    assert set(np.unique(mask)) <= set(range(len(CLASS_NAMES) + 1))
    tissue = mask > 0
    assert 0.4 < tissue.mean() < 0.8  # requested 0.6

    osr = openslide.OpenSlide(str(demo.path))
    for level in range(osr.level_count):
        w, h = osr.level_dimensions[level]
        rgb = np.asarray(osr.read_region((0, 0), level, (w, h)).convert("RGB"))
        gt = np.asarray(Image.fromarray(mask).resize((w, h), Image.Resampling.NEAREST))
        # ignore pixels at class boundaries (outlines are smoothed between mask pixels)
        inner = ndi.binary_erosion(gt > 0, iterations=3)
        outer = ndi.binary_erosion(gt == 0, iterations=3)
        g = _gray(rgb)
        assert g[outer].mean() > 230
        assert g[inner].mean() < g[outer].mean() - 40
        assert np.percentile(g[outer], 1) > 220  # glass is clean
    osr.close()


def test_levels_show_the_same_tissue(demo: DemoSlide) -> None:
    osr = openslide.OpenSlide(str(demo.path))
    l0 = np.asarray(osr.read_region((0, 0), 0, (2048, 2048)).convert("RGB")).astype(np.float32)
    l1 = np.asarray(osr.read_region((0, 0), 1, (512, 512)).convert("RGB")).astype(np.float32)
    osr.close()
    b0 = l0.reshape(64, 32, 64, 32, 3).mean(axis=(1, 3))  # 8 µm blocks
    b1 = l1.reshape(64, 8, 64, 8, 3).mean(axis=(1, 3))
    assert np.abs(b0 - b1).mean() < 4.0


def test_no_mpp_means_no_mpp(tmp_path: Path) -> None:
    demo = write_demo_slide(tmp_path / "nompp.tif", size_px=(1000, 700), mpp=None, compression="zlib")
    osr = openslide.OpenSlide(str(demo.path))
    assert "openslide.mpp-x" not in osr.properties
    assert "openslide.mpp-y" not in osr.properties
    assert osr.dimensions == (1000, 700)
    osr.close()
    assert demo.mpp is None
    meta = json.loads(demo.mask_json_path.read_text())
    assert meta["slide_mpp"] is None and meta["mpp"] > 0


def test_deterministic(tmp_path: Path) -> None:
    def region(name: str, seed: int) -> bytes:
        d = write_demo_slide(tmp_path / name, size_px=(768, 640), seed=seed, tile_px=256)
        osr = openslide.OpenSlide(str(d.path))
        data = osr.read_region((0, 0), 0, (768, 640)).tobytes()
        osr.close()
        return data

    a, b, c = region("a.tif", 3), region("b.tif", 3), region("c.tif", 4)
    assert a == b
    assert a != c
    assert (tmp_path / "a_mask.png").read_bytes() == (tmp_path / "b_mask.png").read_bytes()


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.85])
def test_label_map_tissue_fraction(fraction: float) -> None:
    label = random_label_map((400, 400), np.random.default_rng(1), mpp=8.0, tissue_fraction=fraction)
    assert label.dtype == np.uint8 and label.shape == (400, 400)
    assert abs((label > 0).mean() - fraction) < 0.1


def test_label_map_has_all_classes_in_regions() -> None:
    label = random_label_map((512, 512), np.random.default_rng(2), mpp=8.0, tissue_fraction=0.7)
    counts = np.bincount(label.ravel(), minlength=5)
    assert (counts[1:] > 0.02 * label.size).all()
    # regions, not salt and pepper: most pixels share their class with all 4 neighbours
    same = (label[1:-1, 1:-1] == label[:-2, 1:-1]) & (label[1:-1, 1:-1] == label[1:-1, 2:])
    assert same.mean() > 0.95


def test_smooth_label_keeps_mask_pixel_centres() -> None:
    label = random_label_map((64, 64), np.random.default_rng(3), mpp=4.0)
    at = smooth_label_at(label, 4.0)
    centres = (np.arange(64) + 0.5) * 4.0
    assert np.array_equal(at(centres, centres), label)


@pytest.mark.parametrize(
    ("classes", "background"), [((1,), False), ((2, 4), True), ((1, 3, 4), False), ((1, 2, 3, 4), True)]
)
def test_patch_contains_exactly_the_requested_classes(classes: tuple[int, ...], background: bool) -> None:
    rng = np.random.default_rng(sum(classes) + 10 * background)
    rgb, mask = synthesize_patch(rng, size_px=224, mpp=0.5, classes_present=classes, background=background)
    assert rgb.shape == (224, 224, 3) and rgb.dtype == np.uint8
    assert mask.shape == (224, 224) and mask.dtype == np.uint8
    present = set(np.unique(mask).tolist())
    assert present - {0} == set(classes)
    assert (0 in present) == background
    tissue = mask > 0
    for c in classes:
        assert (mask == c).sum() >= 0.03 * tissue.sum()
    if background:
        assert _gray(rgb)[ndi.binary_erosion(~tissue, iterations=2)].mean() > 230


def test_patch_rejects_bad_classes() -> None:
    with pytest.raises(ValueError):
        synthesize_patch(np.random.default_rng(0), classes_present=())
    with pytest.raises(ValueError):
        synthesize_patch(np.random.default_rng(0), classes_present=(5,))
    with pytest.raises(ValueError):
        synthesize_region(np.full((8, 8), 4, np.uint8), np.random.default_rng(0), 0.5, n_classes=3)


def _class_stats(mpp: float, seed: int) -> dict[int, tuple[np.ndarray, float, float]]:
    """Per class: mean RGB, fraction of dark (nuclear) pixels, gradient orientation coherence."""
    rng = np.random.default_rng(seed)
    style = TissueStyle.random(rng)
    out = {}
    for c in range(5):
        rgb = synthesize_region(np.full((256, 256), c, np.uint8), rng, mpp, style=style)
        g = _gray(rgb)
        gy, gx = np.gradient(ndi.gaussian_filter(g, 1.0))
        win = max(3, int(8.0 / mpp))
        jxx, jyy, jxy = (ndi.uniform_filter(a, win) for a in (gx * gx, gy * gy, gx * gy))
        coherence = float(np.mean(np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / (jxx + jyy + 1e-6)))
        out[c] = (rgb.reshape(-1, 3).mean(axis=0), float((g < 100).mean()), coherence)
    return out


@pytest.mark.parametrize("mpp", [0.25, 1.0])
def test_classes_differ_in_colour_and_texture(mpp: float) -> None:
    stats = _class_stats(mpp, seed=5)
    glass_mean, glass_dark, _ = stats[0]
    assert glass_mean.min() > 230 and glass_dark == 0
    means = np.stack([stats[c][0] for c in range(1, 5)])
    dists = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert dists[np.triu_indices(4, 1)].min() > 8  # distinct mean colours …
    assert dists.max() < 150  # … within one H&E palette
    dark = {c: stats[c][1] for c in range(1, 5)}
    assert dark[3] > 0.25 and dark[3] > 2 * max(dark[1], dark[2], dark[4])  # LYM: dense dark nuclei
    assert 0.01 < dark[1] and 0.005 < dark[2]  # TE nuclei, NEC specks
    coherence = {c: stats[c][2] for c in range(1, 5)}
    assert coherence[4] > max(coherence[1], coherence[2], coherence[3])  # TAS: oriented fibres


def test_nuclei_sizes_are_in_micrometres() -> None:
    """LYM's dark (nuclear) area fraction does not depend on the resolution."""
    fractions = [_class_stats(mpp, seed=6)[3][1] for mpp in (0.25, 0.5, 1.0, 2.0)]
    assert max(fractions) - min(fractions) < 0.1


def test_stain_variation_overlaps_class_colours() -> None:
    """Mean colour alone does not separate NEC from TAS across stains."""
    nec, tas = [], []
    for seed in range(6):
        rng = np.random.default_rng(100 + seed)
        for c, acc in ((2, nec), (4, tas)):
            acc.append(_gray(synthesize_region(np.full((96, 96), c, np.uint8), rng, 0.5)).mean())
    assert min(nec) < max(tas) and min(tas) < max(nec)


def test_render_large_region() -> None:
    label = random_label_map((1024, 1024), np.random.default_rng(0), mpp=0.5, tissue_fraction=0.8)
    rgb = synthesize_region(label, np.random.default_rng(0), 0.5)
    assert rgb.shape == (1024, 1024, 3) and rgb.dtype == np.uint8
    assert rgb[label == 0].mean() > 230 and rgb[label > 0].mean() < 215  # glass is bright, tissue stained


def test_overlapping_windows_render_the_same_tissue() -> None:
    """Fields and nuclei are global: two overlapping windows differ only by pixel noise (no seams)."""
    from wsi_seg.synthetic.tissue import render

    label = random_label_map((128, 128), np.random.default_rng(0), mpp=4.0, tissue_fraction=0.9)
    label_at = smooth_label_at(label, 4.0)
    style = TissueStyle.random(np.random.default_rng(1))
    a = render(style, label_at, 0.0, 0.0, (384, 384), 0.5, np.random.default_rng(0)).astype(np.float32)
    b = render(style, label_at, 100.0, 60.0, (384, 384), 0.5, np.random.default_rng(1)).astype(np.float32)
    diff = np.abs(a[200:, 120:] - b[:184, :264])
    assert diff.mean() < 3.5  # pixel noise is N(0, 2.2) per image


def test_explicit_level_count(tmp_path: Path) -> None:
    demo = write_demo_slide(tmp_path / "lv.tif", size_px=(1024, 768), levels=3, tile_px=128, seed=1)
    osr = openslide.OpenSlide(str(demo.path))
    assert osr.level_dimensions == ((1024, 768), (256, 192), (64, 48))
    assert osr.level_downsamples == pytest.approx((1.0, 4.0, 16.0))
    osr.close()
