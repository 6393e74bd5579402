"""Inference streams: batches on several threads, results in order, same masks as one stream."""

import threading
import time

import numpy as np
import pytest
import zarr

from wsi_seg.errors import ConfigError
from wsi_seg.inference.segment import SegmentOptions, segment_slide
from wsi_seg.inference.streams import InferenceStreams
from wsi_seg.model import load_checkpoint


def slow_square(x, delay):
    time.sleep(delay)
    return x * x, threading.get_ident()


@pytest.mark.parametrize("n", [1, 3])
def test_results_come_back_in_order_whatever_finishes_first(n):
    rng = np.random.default_rng(0)
    got, threads = [], set()
    with InferenceStreams(n) as streams:
        for k in range(10):
            for (value, ident), tag in streams.put(k, slow_square, k, float(rng.uniform(0, 0.02))):
                got.append((tag, value))
                threads.add(ident)
        for (value, ident), tag in streams.drain():
            got.append((tag, value))
            threads.add(ident)
    assert got == [(k, k * k) for k in range(10)]
    assert (threads == {threading.get_ident()}) if n == 1 else (len(threads) > 1 and threading.get_ident() not in threads)


def test_a_failing_batch_raises_in_the_caller_and_close_waits_for_the_rest():
    started, finished = [], []

    def job(k):
        started.append(k)
        time.sleep(0.01)
        if k == 1:
            raise ValueError("batch 1 failed")
        finished.append(k)
        return k

    streams = InferenceStreams(2)
    streams.put(0, job, 0)
    with pytest.raises(ValueError, match="batch 1 failed"):
        streams.put(1, job, 1)
        streams.put(2, job, 2)
    streams.close()
    # nothing runs on after close: a batch that started has ended (one not started is dropped)
    assert 0 in finished and set(started) - {1} == set(finished)


def test_bad_stream_count_is_refused():
    with pytest.raises(ConfigError, match="streams must be ≥ 1"):
        SegmentOptions(streams=0)


@pytest.mark.parametrize("net", ["stage1", "stage2", "vit-tiny-reg"])
def test_several_streams_give_the_result_of_one(tmp_path, blob_slide, checkpoints, net):
    """One torch thread per stream either way, so every batch computes the same numbers;
    the networks share nothing between concurrent calls (Swin and ViT encoders, both heads)."""
    if net == "vit-tiny-reg":
        import torch

        from wsi_seg.model import PsclNet, preset_config, save_checkpoint

        torch.manual_seed(0)
        path = save_checkpoint(PsclNet(preset_config(net, stage=2)), tmp_path / "vit")
    else:
        path = checkpoints[int(net[-1])]
    model = load_checkpoint(path)
    outs = {}
    for streams in (1, 3):
        opts = SegmentOptions(device="cpu", workers=0, progress=False, batch_size=1, threads=streams, streams=streams)
        res = segment_slide(blob_slide, tmp_path / f"s{streams}.zarr", model, opts)
        outs[streams] = zarr.open_group(str(res.out), mode="r")
        inference = outs[streams].attrs["wsi_seg"]["inference"]
        assert (inference["streams"], inference["torch_threads"]) == (streams, 1)
    a, b = outs[1], outs[3]
    for name in ("0", "labels/mask/0", "1", "labels/mask/1"):
        assert np.array_equal(a[name][:], b[name][:]), name


def test_the_model_time_estimate_is_measured_once_per_network_and_settings(checkpoints, monkeypatch):
    """A cohort's later slides reuse the first slide's estimate: no noise batches again."""
    import wsi_seg.inference.streams as streams_mod
    from wsi_seg.inference.runtime import resolve_runtime

    net = load_checkpoint(checkpoints[2]).net.eval()
    rt = resolve_runtime("cpu", "fp32", workers=0, batch_size=2, threads=1, streams=1)
    calls = []
    real = streams_mod.run_batch
    monkeypatch.setattr(streams_mod, "run_batch", lambda *a, **k: calls.append(1) or real(*a, **k))
    with InferenceStreams(1) as pool:
        first = streams_mod.seconds_per_patch(net, rt, 224, True, pool)
        assert calls and first > 0
        n = len(calls)
        assert streams_mod.seconds_per_patch(net, rt, 224, True, pool) == first and len(calls) == n
        streams_mod.seconds_per_patch(net, rt, 224, False, pool)  # other settings: measured
        assert len(calls) > n
