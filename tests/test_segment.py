"""The segment pipeline: stitching exactness, resume, output layout."""

import json

import numpy as np
import pytest
import torch
import zarr
from conftest import write_slide

import wsi_seg.inference.segment as segment_mod
from wsi_seg.inference.segment import SegmentOptions, segment_slide
from wsi_seg.model import PatchPrediction, PsclNet, load_checkpoint
from wsi_seg.result.format import is_complete, partial_path

OPTS = dict(device="cpu", workers=0, progress=False)


def ramp_image(h, w):
    """R = x mod 256, G = y mod 256, B = a class index from the position (0..4)."""
    yy, xx = np.mgrid[:h, :w]
    return np.stack([xx % 256, yy % 256, (xx // 37 + yy // 53) % 5], -1).astype(np.uint8)


def echo_predictor(net, images, background=None, image_labels=None, rules=None):
    """A 'model' that outputs its input: activations = R, G; mask = B."""
    acts = images[:, :2].float() / 255.0
    acts = torch.cat([acts, acts], 1)[:, : net.cfg.num_classes]
    return PatchPrediction(activations=acts, mask=images[:, 2].to(torch.uint8))


@pytest.fixture
def ramp_slide(tmp_path):
    rgb = ramp_image(700, 1000)
    return write_slide(tmp_path / "ramp.tif", rgb, mpp=0.5, compression="zlib"), rgb


@pytest.mark.parametrize("overlap", [0, 32, 45])
def test_stitching_reassembles_the_exact_ramp(tmp_path, ramp_slide, checkpoints, monkeypatch, overlap):
    monkeypatch.setattr(PsclNet, "predict", echo_predictor)
    path, rgb = ramp_slide
    model = load_checkpoint(checkpoints[2])
    res = segment_slide(path, tmp_path / "out.zarr", model, SegmentOptions(overlap_px=overlap, batch_size=3, **OPTS))
    g = zarr.open_group(str(res.out), mode="r")
    assert g["0"].shape == (4, 700, 1000)
    assert np.array_equal(g["0"][0], rgb[..., 0])
    assert np.array_equal(g["0"][1], rgb[..., 1])
    assert np.array_equal(g["labels/mask/0"][:], rgb[..., 2])
    assert res.patches_run > 0 and res.patches_resumed == 0


@pytest.mark.parametrize("overlap", [32, 33])  # blocks (= chunks) of 576 and 573 px: pyramid streamed / halved at the end
def test_interrupted_run_resumes_to_identical_output(tmp_path, blob_slide, checkpoints, monkeypatch, overlap):
    model = load_checkpoint(checkpoints[1])
    opts = SegmentOptions(overlap_px=overlap, chunk_px=512, **OPTS)  # several blocks on this slide
    full = segment_slide(blob_slide, tmp_path / "full.zarr", model, opts)

    out = tmp_path / "resumed.zarr"
    writes = {"n": 0}
    original = segment_mod.ResultStore.write_block

    def flaky(self, *args, **kwargs):
        if writes["n"] == 2:
            raise KeyboardInterrupt
        writes["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(segment_mod.ResultStore, "write_block", flaky)
    with pytest.raises(KeyboardInterrupt):
        segment_slide(blob_slide, out, model, opts)
    assert not out.exists() and partial_path(out).exists() and not is_complete(partial_path(out))
    monkeypatch.setattr(segment_mod.ResultStore, "write_block", original)
    resumed = segment_slide(blob_slide, out, model, opts)
    assert resumed.patches_resumed > 0
    assert resumed.patches_run + resumed.patches_resumed == full.patches_run
    a, b = zarr.open_group(str(full.out), mode="r"), zarr.open_group(str(out), mode="r")
    assert a["0"].chunks[-1] == 576 + 3 * (32 - overlap)
    levels = a.attrs["wsi_seg"]["stats"]["levels"]
    assert levels == b.attrs["wsi_seg"]["stats"]["levels"] == 2
    assert a.attrs["ome"] == b.attrs["ome"] and a["labels/mask"].attrs.asdict() == b["labels/mask"].attrs.asdict()
    for level in range(levels):
        for name in (str(level), f"labels/mask/{level}"):
            assert np.array_equal(a[name][:], b[name][:]), name


def test_cancelled_run_raises_cancelled_and_resumes_to_identical_output(tmp_path, blob_slide, checkpoints):
    import threading

    from wsi_seg.errors import Cancelled

    model = load_checkpoint(checkpoints[2])
    opts = SegmentOptions(overlap_px=32, batch_size=2, chunk_px=512, **OPTS)  # several blocks on this slide
    full = segment_slide(blob_slide, tmp_path / "full.zarr", model, opts)

    out, cancel, seen = tmp_path / "resumed.zarr", threading.Event(), []

    def cancel_half_way(done, total):
        seen.append(done)
        if done >= total // 2:
            cancel.set()

    with pytest.raises(Cancelled, match=r"cancelled after \d+ of \d+ patches; rerun to resume"):
        segment_slide(blob_slide, out, model, opts, on_progress=cancel_half_way, cancel=cancel)
    assert seen[-1] < full.patches_run  # stopped before its next batch, short of the end
    assert not out.exists() and partial_path(out).exists() and not is_complete(partial_path(out))
    resumed = segment_slide(blob_slide, out, model, opts)
    assert resumed.patches_resumed > 0
    assert resumed.patches_run + resumed.patches_resumed == full.patches_run
    a, b = zarr.open_group(str(full.out), mode="r"), zarr.open_group(str(out), mode="r")
    for name in ("0", "1", "labels/mask/0", "labels/mask/1"):
        assert np.array_equal(a[name][:], b[name][:]), name


def test_output_is_ome_zarr_with_labels(tmp_path, blob_slide, checkpoints):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    model = load_checkpoint(checkpoints[2])
    res = segment_slide(blob_slide, tmp_path / "o.zarr", model, SegmentOptions(**OPTS))
    nodes = list(Reader(parse_url(str(res.out)))())
    image = nodes[0]
    assert image.data[0].shape == (4, 1024, 1024)  # slide 0.5 µm/px = model 0.5 µm/px
    assert [d.shape[-1] for d in image.data] == [1024, 512]
    label = next(n for n in nodes if "color" in n.metadata)
    assert label.metadata["properties"][1]["class"] == "TE"
    assert label.metadata["color"][1] == pytest.approx([205 / 255, 51 / 255, 51 / 255, 1.0])
    ms = label.metadata["coordinateTransformations"]
    assert ms[0][0]["scale"] == [0.5, 0.5] and ms[1][0]["scale"] == [1.0, 1.0]
    root = zarr.open_group(str(res.out), mode="r")
    prov = root.attrs["wsi_seg"]
    assert prov["complete"] is True and prov["model"]["sha256"] == model.sha256
    assert prov["slide"]["mpp"] == 0.5 and prov["mpp"] == 0.5
    assert prov["inference"]["device"] == "cpu" and prov["inference"]["precision"] in ("fp32", "bf16")
    assert json.dumps(prov)  # plain JSON
    assert not (res.out / ".wsi_seg_progress").exists()


@pytest.mark.parametrize("stage", [1, 2])
def test_glass_is_background_and_resolution_follows_the_model(tmp_path, checkpoints, stage):
    from conftest import blob_image

    path = write_slide(tmp_path / "s.tif", blob_image(2048), mpp=0.25, downsamples=(4,))
    model = load_checkpoint(checkpoints[stage])
    res = segment_slide(path, tmp_path / "o.zarr", model, SegmentOptions(**OPTS))
    mask = zarr.open_group(str(res.out), mode="r")["labels/mask/0"][:]
    assert mask.shape == (1024, 1024)  # 2048 px at 0.25 µm/px seen at 0.5 µm/px
    assert (mask[:100, :100] == 0).all() and (mask[:, :150] == 0).all()
    yy, xx = np.mgrid[:1024, :1024]
    glass = (yy - 512) ** 2 / 380**2 + (xx - 512) ** 2 / 270**2 > 1  # outside the blob, with a margin
    assert (mask[glass] == 0).all()
    assert (mask[400:600, 400:600] > 0).mean() > 0.9  # the blob is tissue: classes, not background
    assert res.patches_skipped > 0


@pytest.mark.parametrize("native_bf16, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_cpu_follows_native_bf16(monkeypatch, native_bf16, expected):
    import wsi_seg.inference.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native_bf16)
    assert runtime.resolve_precision(torch.device("cpu"), "auto") == expected
    assert runtime.resolve_precision(torch.device("cpu"), "fp32") == "fp32"


@pytest.mark.parametrize("precision, message", [("fp16", "fp16 autocast is for CUDA"), ("fp8", "unknown precision")])
def test_bad_precision_is_refused_before_any_work(tmp_path, blob_slide, checkpoints, precision, message):
    from wsi_seg.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        segment_slide(blob_slide, tmp_path / "o.zarr", load_checkpoint(checkpoints[2]),
                      SegmentOptions(**OPTS, precision=precision))
    assert not (tmp_path / "o.zarr").exists() and not partial_path(tmp_path / "o.zarr").exists()


def test_auto_batch_size_and_readers_follow_the_device():
    from wsi_seg.inference.runtime import resolve_batch_size, resolve_workers

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_batch_size(cpu, None) == 2 and resolve_batch_size(cuda, None) == 32
    assert resolve_batch_size(cpu, 5) == 5
    assert resolve_workers(cpu, None, 16) == 0 and resolve_workers(cuda, None, 16) == 8
    assert resolve_workers(cpu, 3, 16) == 3 and resolve_workers(cuda, None, 1) == 1


def test_resolved_settings_are_recorded(tmp_path, blob_slide, checkpoints):
    res = segment_slide(blob_slide, tmp_path / "o.zarr", load_checkpoint(checkpoints[2]),
                        SegmentOptions(device="cpu", progress=False))
    inference = zarr.open_group(str(res.out), mode="r").attrs["wsi_seg"]["inference"]
    assert inference["batch_size"] == 2 and inference["reader_workers"] == 0


@pytest.mark.parametrize("seeded", [True, False])
@pytest.mark.parametrize("batch_size", [1, 2, 4, 32])
def test_block_items_are_rebatched_in_order_and_copied_only_across_items(seeded, batch_size):
    sizes = [9, 9, 3, 1]
    items, rows = [], []
    for block, n in enumerate(sizes):
        patches = torch.arange(block * 50, block * 50 + n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 4, 4)
        items.append({"block": block, "patches": patches.contiguous(),
                      "background": torch.ones(n, 4, 4, dtype=torch.bool) if seeded else torch.zeros(0, 4, 4, dtype=torch.bool)})
        rows += [(block, k) for k in range(n)]
    batches = list(segment_mod._batches(items, batch_size))
    assert [len(o) for _, _, o in batches] == [min(batch_size, sum(sizes) - i) for i in range(0, sum(sizes), batch_size)]
    assert [o for _, _, o in batches for o in o] == rows  # every patch once, in order
    for p, b, owners in batches:
        assert [int(v) for v in p[:, 0, 0, 0]] == [block * 50 + k for block, k in owners]
        assert b.shape[0] == (len(owners) if seeded else 0)
        within_one = len({block for block, _ in owners}) == 1
        source = items[owners[0][0]]["patches"]
        assert (p.untyped_storage().data_ptr() == source.untyped_storage().data_ptr()) == within_one


def test_writers_and_reading_threads_give_the_result_of_one_each(tmp_path, blob_slide, checkpoints, monkeypatch):
    """Blocks written by four threads at once (and read by four) give the store one
    writer and one reader give: every level, classes in one shard per block, recorded."""
    import wsi_seg.inference.runtime as runtime

    model = load_checkpoint(checkpoints[2])
    stores = {}
    for n in (1, 4):
        monkeypatch.setattr(runtime, "resolve_writers", lambda cpus, n=n: n)
        monkeypatch.setattr(runtime, "resolve_read_threads", lambda workers, cpus, n=n: n)
        res = segment_slide(blob_slide, tmp_path / f"w{n}.zarr", model, SegmentOptions(**OPTS, batch_size=1))
        stores[n] = zarr.open_group(str(res.out), mode="r")
        inference = stores[n].attrs["wsi_seg"]["inference"]
        assert (inference["writers"], inference["read_threads"]) == (n, n)
    a, b = stores[1], stores[4]
    assert a["0"].shards == (4, *a["0"].chunks[1:]) and a["0"].chunks[0] == 1  # one file per block, a chunk per class
    for name in ("0", "1", "labels/mask/0", "labels/mask/1"):
        assert np.array_equal(a[name][:], b[name][:]), name
