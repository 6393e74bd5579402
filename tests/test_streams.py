"""Inference streams: batches on several threads, results in order, same masks as one stream."""

import threading
import time
from dataclasses import replace

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


def test_the_plan_estimate_comes_from_the_runs_own_batches_and_is_reused(checkpoints, blob_slide, tmp_path, monkeypatch):
    """No model call of its own: the plan's model time is measured on the run's first
    batches, and a cohort's later slides have it before their first batch."""
    import wsi_seg.inference.segment as segment_mod
    import wsi_seg.inference.streams as streams_mod

    model = load_checkpoint(checkpoints[2])
    calls: list[int] = []
    real = segment_mod.run_batch

    def counted(net, rt, patches, *rest):
        calls.append(patches.shape[0])
        return real(net, rt, patches, *rest)

    monkeypatch.setattr(segment_mod, "run_batch", counted)
    monkeypatch.setattr(streams_mod, "_ESTIMATES", type(streams_mod._ESTIMATES)())
    options = SegmentOptions(device="cpu", batch_size=2, streams=2, threads=2, progress=False)
    plans, seen = [], []

    def on_plan(plan):
        plans.append(plan)
        seen.append(len(calls))

    first = segment_slide(blob_slide, tmp_path / "a.zarr", model, options, on_plan=on_plan)
    assert sum(calls) == first.patches_run  # every model call was a patch of the slide
    assert len(plans) == 1 and plans[0].seconds_per_patch > 0 and seen[0] >= 2  # after a round of two streams
    assert plans[0].todo_patches == first.patches_run
    calls.clear()
    segment_slide(blob_slide, tmp_path / "b.zarr", model, options, on_plan=on_plan)
    assert seen[1] == 0 and plans[1].seconds_per_patch == plans[0].seconds_per_patch  # known before any batch
    segment_slide(blob_slide, tmp_path / "c.zarr", model, SegmentOptions(device="cpu", batch_size=4, streams=2,
                                                                          threads=2, progress=False), on_plan=on_plan)
    assert seen[2] > 0  # other settings: measured again, on that run's batches


def test_model_time_estimate_rounds():
    """One batch per stream is one round, timed side by side; CUDA's first round only warms up."""
    import torch

    from wsi_seg.inference.runtime import resolve_runtime
    from wsi_seg.inference.streams import ModelTimeEstimate

    class Net:  # a weak-referenceable stand-in
        pass

    rt = resolve_runtime("cpu", "fp32", workers=0, batch_size=2, threads=2, streams=2)
    est = ModelTimeEstimate(Net(), rt, 224, True)
    assert est.seconds_per_patch is None and est.finish() == 0.0
    assert not est.add(0.4, 2)
    assert est.finish() == 0.2  # a run shorter than a round: what ran
    assert est.add(0.6, 2) and est.seconds_per_patch == 0.5 / 4
    cuda = replace(rt, device=torch.device("cuda"), streams=1)
    est = ModelTimeEstimate(Net(), cuda, 224, True)
    assert not est.add(5.0, 2) and est.finish() == 2.5  # warm-up only: the fallback
    assert est.add(0.2, 2) and est.seconds_per_patch == 0.1
