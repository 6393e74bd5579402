"""GeoJSON export: exact areas, holes, one polygon across chunk borders, level-0 coordinates."""

import argparse
import json

import numpy as np
import pytest
import zarr
from conftest import write_result

import wsi_seg.exports.geojson as export_mod
from wsi_seg.cli import export_cmd
from wsi_seg.errors import ConfigError, DatasetError, OutputError, WsiSegError
from wsi_seg.exports.geojson import export_geojson
from wsi_seg.result.format import partial_path

NAMES = ["TE", "NEC", "LYM"]
COLORS = [[205, 51, 51], [0, 128, 0], [0, 0, 255]]
CHUNK = 16
MPP, SLIDE_MPP = 1.0, 0.5  # mask µm/px, slide µm/px: s = 2 level-0 px per mask px
S = MPP / SLIDE_MPP


def make_result(root, mask, complete=True):
    """A real result store (ResultStore, pyramid, OME metadata) holding ``mask`` (conftest)."""
    return write_result(root, mask, slide_mpp=SLIDE_MPP, mpp=MPP, class_names=tuple(NAMES),
                        class_colors=tuple(tuple(c) for c in COLORS), chunk_px=CHUNK, complete=complete)


def shapes_mask():
    """96 × 80 px, chunks of 16: TE rectangle, TE L crossing 6 chunk borders, TE speck,
    NEC square ring with a hole, and two LYM pixels touching only at a corner."""
    m = np.zeros((96, 80), np.uint8)
    m[2:10, 2:12] = 1  # rectangle, 80 px, inside one chunk
    m[50:70, 5:75] = 1  # L: 1400 px …
    m[70:90, 60:75] = 1  # … + 300 px
    m[2:4, 40] = 1  # speck, 2 px = 2 µm²
    m[20:44, 20:44] = 2  # ring 576 px …
    m[26:38, 26:38] = 0  # … minus a 144 px hole
    m[12, 60] = m[13, 61] = 3  # diagonal neighbours: two regions
    return m


@pytest.fixture
def shapes_result(tmp_path):
    return make_result(tmp_path / "mask.zarr", shapes_mask())


def read(path):
    return json.loads(path.read_text(encoding="utf-8"))


def area(ring):
    x, y = np.asarray(ring, float).T
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def poly_area(coords):
    return area(coords[0]) + sum(area(r) for r in coords[1:])  # holes are negative


def by_class(gj):
    out = {}
    for f in gj["features"]:
        out.setdefault(f["properties"]["classification"]["name"], []).append(f)
    return out


def canonical(gj):
    """Features as comparable tuples: class, rings rotated to their smallest vertex."""
    def ring_key(r):
        pts = [tuple(p) for p in r[:-1]]
        i = pts.index(min(pts))
        return tuple(pts[i:] + pts[:i])
    return sorted((f["properties"]["classification"]["name"], tuple(sorted(map(ring_key, f["geometry"]["coordinates"]))))
                  for f in gj["features"])


@pytest.mark.parametrize("block_px", [None, CHUNK, 7])
def test_exact_export_areas_holes_and_coordinates(tmp_path, shapes_result, block_px):
    out = tmp_path / "o.geojson"
    summary = export_geojson(shapes_result, out, simplify_px=0, min_area_um2=5, block_px=block_px)
    gj = read(out)
    assert gj["type"] == "FeatureCollection"
    for f in gj["features"]:
        assert f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
        assert f["properties"]["objectType"] == "annotation"
        cls = f["properties"]["classification"]
        assert cls["color"] == COLORS[NAMES.index(cls["name"])]
        for ring in f["geometry"]["coordinates"]:
            assert ring[0] == ring[-1] and len(ring) >= 5
    feats = by_class(gj)
    assert set(feats) == {"TE", "NEC"}  # LYM pixels are 1 µm² each: dropped

    te = sorted(feats["TE"], key=lambda f: poly_area(f["geometry"]["coordinates"]))
    assert [poly_area(f["geometry"]["coordinates"]) for f in te] == [80 * S**2, 1700 * S**2]
    rect = np.array(te[0]["geometry"]["coordinates"][0])
    assert rect.min(0).tolist() == [2 * S, 2 * S] and rect.max(0).tolist() == [12 * S, 10 * S]  # level-0 px
    ell = te[1]["geometry"]["coordinates"]
    assert len(ell) == 1 and len(ell[0]) == 7  # one polygon, six corners, no seams at chunk borders
    assert np.array(ell[0]).min(0).tolist() == [5 * S, 50 * S] and np.array(ell[0]).max(0).tolist() == [75 * S, 90 * S]

    (ring,) = feats["NEC"]
    outer, hole = ring["geometry"]["coordinates"]
    assert area(outer) == 576 * S**2 and area(hole) == -144 * S**2  # counter-clockwise shell, clockwise hole
    assert np.array(hole).min(0).tolist() == [26 * S, 26 * S] and np.array(hole).max(0).tolist() == [38 * S, 38 * S]

    assert summary.counts == {"TE": 2, "NEC": 1, "LYM": 0}
    assert summary.area_um2 == {"TE": 1780 * MPP**2, "NEC": 432 * MPP**2, "LYM": 0}
    assert [c.dropped for c in summary.classes] == [1, 0, 2]
    assert summary.level0_px_per_mask_px == S
    assert not partial_path(out).exists()


def test_corner_touching_pixels_are_separate_regions(tmp_path, shapes_result):
    out = tmp_path / "o.geojson"
    summary = export_geojson(shapes_result, out, simplify_px=0, classes=["LYM"])
    feats = read(out)["features"]
    assert summary.counts == {"LYM": 2} and len(feats) == 2
    assert sorted(poly_area(f["geometry"]["coordinates"]) for f in feats) == [S**2, S**2]


def test_level_one_traces_the_pyramid_in_level0_coordinates(tmp_path, shapes_result):
    out = tmp_path / "o.geojson"
    summary = export_geojson(shapes_result, out, level=1, simplify_px=0, classes=["TE"], min_area_um2=5)
    assert summary.level0_px_per_mask_px == 2 * S
    rect = min(read(out)["features"], key=lambda f: poly_area(f["geometry"]["coordinates"]))
    assert np.array(rect["geometry"]["coordinates"][0]).min(0).tolist() == [2 * S, 2 * S]  # same place at level 0
    assert poly_area(rect["geometry"]["coordinates"]) == 80 * S**2


def random_mask(seed, h=45, w=38):
    """Smooth class blobs plus random specks, pinches and corner contacts."""
    from skimage.filters import gaussian

    rng = np.random.default_rng(seed)
    noise = gaussian(rng.random((h, w, 3)), sigma=1.2, channel_axis=-1)
    mask = np.where(noise.max(-1) > 0.5, noise.argmax(-1) + 1, 0).astype(np.uint8)
    specks = rng.random((h, w)) < 0.08
    mask[specks] = rng.integers(0, 4, specks.sum())
    return mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_masks_rasterise_back_exactly_for_any_block_size(tmp_path, seed):
    """Pixel centres inside a class's rings (even-odd) are exactly that class's pixels;
    one polygon per 4-connected region; the same polygons whatever the block size."""
    from skimage.measure import label

    mask = random_mask(seed)
    h, w = mask.shape
    res = make_result(tmp_path / "r.zarr", mask)
    outputs = []
    for block_px in (None, 8, 5):
        out = tmp_path / f"o{block_px}.geojson"
        export_geojson(res, out, simplify_px=0, block_px=block_px)
        outputs.append(read(out))
    assert canonical(outputs[0]) == canonical(outputs[1]) == canonical(outputs[2])
    feats = by_class(outputs[0])
    yy, xx = np.mgrid[:h, :w]
    px, py = (xx.ravel() + 0.5) * S, (yy.ravel() + 0.5) * S
    for value, name in enumerate(NAMES, 1):
        inside = np.zeros(h * w, bool)
        for f in feats.get(name, []):
            for ring in f["geometry"]["coordinates"]:
                r = np.asarray(ring)
                (x1, y1), (x2, y2) = r[:-1].T, r[1:].T  # exact outlines: edges are axis-aligned
                vertical = x1 == x2
                x1, y1, y2 = x1[vertical], y1[vertical], y2[vertical]
                cross = ((y1 > py[:, None]) != (y2 > py[:, None])) & (px[:, None] < x1)
                inside ^= cross.sum(1) % 2 == 1
        assert np.array_equal(inside.reshape(h, w), mask == value), name
        assert len(feats.get(name, [])) == label(mask == value, connectivity=1).max()


def test_exact_and_simplified_polygons_are_valid(tmp_path):
    shapely = pytest.importorskip("shapely")
    res = make_result(tmp_path / "r.zarr", random_mask(3, 64, 64))
    for simplify in (0, None, 10):
        out = tmp_path / f"{simplify}.geojson"
        export_geojson(res, out, simplify_px=simplify, block_px=CHUNK)
        polys = [shapely.geometry.shape(f["geometry"]) for f in read(out)["features"]]
        assert polys and all(p.is_valid for p in polys), shapely.is_valid_reason([p for p in polys if not p.is_valid][0])


def test_default_simplification_stays_close_and_valid(tmp_path):
    shapely = pytest.importorskip("shapely")
    from skimage.draw import disk

    mask = shapes_mask()
    rr, cc = disk((70, 30), 14, shape=mask.shape)
    mask[rr, cc] = 3  # a staircase outline to simplify, across chunk borders
    res = make_result(tmp_path / "r.zarr", mask)
    exact, simple = tmp_path / "exact.geojson", tmp_path / "simple.geojson"
    export_geojson(res, exact, simplify_px=0)
    export_geojson(res, simple)  # default: 2 mask px = 4 level-0 px
    tol = 2 * S
    e, s = by_class(read(exact)), by_class(read(simple))
    assert {k: len(v) for k, v in e.items()} == {k: len(v) for k, v in s.items()}
    for name in e:
        simplified = [shapely.geometry.shape(f["geometry"]) for f in s[name]]
        for fe in e[name]:
            pe = shapely.geometry.shape(fe["geometry"])
            ps = min(simplified, key=lambda p: p.centroid.distance(pe.centroid))
            assert ps.is_valid and len(ps.interiors) == len(pe.interiors)
            assert pe.hausdorff_distance(ps) <= tol + 1e-9
            assert abs(pe.area - ps.area) <= pe.length * tol
    disc_exact = max(e["LYM"], key=lambda f: len(f["geometry"]["coordinates"][0]))
    disc_simple = max(s["LYM"], key=lambda f: len(f["geometry"]["coordinates"][0]))
    assert len(disc_simple["geometry"]["coordinates"][0]) < len(disc_exact["geometry"]["coordinates"][0]) / 2


def test_reads_one_block_at_a_time(tmp_path, shapes_result, monkeypatch):
    sizes = []
    original = export_mod._read_padded

    def spy(arr, y0, y1, x0, x1):
        out = original(arr, y0, y1, x0, x1)
        sizes.append(out.size)
        return out

    monkeypatch.setattr(export_mod, "_read_padded", spy)
    export_geojson(shapes_result, tmp_path / "o.geojson", simplify_px=0, block_px=CHUNK)
    assert len(sizes) == 6 * 5 and max(sizes) == (CHUNK + 2) ** 2


def test_refuses_incomplete_and_foreign_stores(tmp_path):
    partial = make_result(tmp_path / "p.zarr", shapes_mask(), complete=False)
    with pytest.raises(DatasetError, match="incomplete") as err:
        export_geojson(partial, tmp_path / "o.geojson")
    assert str(partial) in str(err.value)
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(str(foreign), mode="w", zarr_format=3).create_array("0", shape=(4, 4), dtype="uint8")
    for bad in (foreign, tmp_path / "missing.zarr"):
        with pytest.raises(WsiSegError, match="not a wsi-seg result") as err:
            export_geojson(bad, tmp_path / "o.geojson")
        assert str(bad) in str(err.value) and len(str(err.value).splitlines()) == 1
    assert not (tmp_path / "o.geojson").exists()


def test_bad_options(tmp_path, shapes_result):
    with pytest.raises(ConfigError, match="unknown class 'TUMOUR'"):
        export_geojson(shapes_result, tmp_path / "o.geojson", classes=["TUMOUR"])
    with pytest.raises(DatasetError, match="no mask level 9") as err:
        export_geojson(shapes_result, tmp_path / "o.geojson", level=9)
    assert str(shapes_result) in str(err.value)


def test_existing_output_needs_overwrite_and_failures_leave_nothing(tmp_path, shapes_result, monkeypatch):
    out = tmp_path / "o.geojson"
    out.write_text("keep me")
    with pytest.raises(OutputError, match="--overwrite") as err:
        export_geojson(shapes_result, out)
    assert str(out) in str(err.value) and out.read_text() == "keep me"

    def boom(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_mod, "_trace_block", boom)
    with pytest.raises(KeyboardInterrupt):
        export_geojson(shapes_result, out, overwrite=True, simplify_px=0)
    assert out.read_text() == "keep me" and not partial_path(out).exists()
    monkeypatch.undo()
    export_geojson(shapes_result, out, overwrite=True, simplify_px=0)
    assert read(out)["type"] == "FeatureCollection"


def test_missing_shapely_is_one_clear_line(tmp_path, shapes_result, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_shapely(name, *args, **kwargs):
        if name == "shapely" or name.startswith("shapely."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_shapely)
    with pytest.raises(ConfigError, match="pip install shapely"):
        export_geojson(shapes_result, tmp_path / "o.geojson")
    export_geojson(shapes_result, tmp_path / "o.geojson", simplify_px=0)  # exact outlines need no shapely


def run_cli(*argv):
    parser = argparse.ArgumentParser(prog="wsi-seg")
    export_cmd.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([*map(str, argv)])
    return args.func(args)


def test_cli_prints_one_line_per_class(tmp_path, shapes_result, capsys):
    out = tmp_path / "o.geojson"
    code = run_cli("export", shapes_result, "--geojson", out, "--simplify", "0", "--min-area-um2", "5", "--no-progress")
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert lines[0] == "TE: 2 polygons, 0.00178 mm² (1 small region dropped)"
    assert lines[1] == "NEC: 1 polygon, 0.000432 mm²" and lines[2] == "LYM: 0 polygons, 0 mm² (2 small regions dropped)"
    assert str(out) in lines[-1]
    with pytest.raises(OutputError):
        run_cli("export", shapes_result, "--geojson", out)
    assert run_cli("export", shapes_result, "--geojson", out, "--overwrite", "--classes", "NEC", "--simplify", "0") == 0
    assert {f["properties"]["classification"]["name"] for f in read(out)["features"]} == {"NEC"}
