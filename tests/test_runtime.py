"""wsi_seg.inference.runtime: one meaning of device, precision, CPUs and readers for every user."""

import os

import pytest
import torch

import wsi_seg.inference.runtime as runtime
from wsi_seg.errors import ConfigError


@pytest.fixture
def eight_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7}, raising=False)


def fake_cgroup(tmp_path, cpu_max=None, v1=None):
    """A cgroup tree whose process cgroup is /job; v2 ``cpu.max`` or v1 quota/period."""
    root, proc = tmp_path / "cgroup", tmp_path / "proc_cgroup"
    job = root / "job"
    job.mkdir(parents=True)
    proc.write_text("0::/job\n")
    if cpu_max is not None:
        (job / "cpu.max").write_text(cpu_max + "\n")
    if v1 is not None:
        (root / "cpu").mkdir()
        (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{v1[0]}\n")
        (root / "cpu" / "cpu.cfs_period_us").write_text(f"{v1[1]}\n")
    return dict(cgroup_root=root, proc_cgroup=proc)


def test_cpus_follow_affinity_without_other_limits(tmp_path, eight_cpus):
    budget = runtime.available_cpus({}, **fake_cgroup(tmp_path))
    assert (budget.cpus, budget.source) == (8, "affinity")


@pytest.mark.parametrize("cpu_max, expected", [("250000 100000", 3), ("50000 100000", 1), ("max 100000", 8)])
def test_cgroup_v2_quota_limits_the_cpus(tmp_path, eight_cpus, cpu_max, expected):
    budget = runtime.available_cpus({}, **fake_cgroup(tmp_path, cpu_max=cpu_max))
    assert budget.cpus == expected and budget.source == ("cgroup" if expected < 8 else "affinity")


def test_cgroup_v1_quota_is_read_too(tmp_path, eight_cpus):
    assert runtime.available_cpus({}, **fake_cgroup(tmp_path, v1=(200000, 100000))).cpus == 2
    assert runtime.available_cpus({}, **fake_cgroup(tmp_path / "b", v1=(-1, 100000))).cpus == 8


def test_slurm_and_omp_limit_the_cpus_and_the_smallest_wins(tmp_path, eight_cpus):
    cg = fake_cgroup(tmp_path, cpu_max="600000 100000")
    budget = runtime.available_cpus({"SLURM_CPUS_PER_TASK": "4"}, **cg)
    assert (budget.cpus, budget.source) == (4, "slurm")
    assert budget.limits == {"affinity": 8, "cgroup": 6, "slurm": 4}
    budget = runtime.available_cpus({"SLURM_CPUS_PER_TASK": "4", "OMP_NUM_THREADS": "2"}, **cg)
    assert (budget.cpus, budget.source) == (2, "omp")
    # unparsable or zero values are ignored
    assert runtime.available_cpus({"SLURM_CPUS_PER_TASK": "x", "OMP_NUM_THREADS": "0"}, **cg).source == "cgroup"


def test_resolved_runtime_uses_the_budget_and_records_it(monkeypatch, eight_cpus):
    monkeypatch.setattr(runtime, "CGROUP_ROOT", runtime.Path("/nonexistent"))
    rt = runtime.resolve_runtime("cpu", "fp32", env={"SLURM_CPUS_PER_TASK": "3"})
    # three CPUs: three inference streams of one torch thread each
    assert (rt.streams, rt.torch_threads, rt.reader_workers, rt.batch_size) == (3, 1, 0, 2)
    prov = rt.provenance()
    assert prov["cpus"] == 3 and prov["cpus_source"] == "slurm" and prov["precision"] == "fp32"
    assert prov["streams"] == 3 and prov["torch_threads"] == 1
    assert runtime.resolve_workers(torch.device("cuda"), None, 3) == 2
    rt = runtime.resolve_runtime("cpu", "fp32", threads=1, env={})
    assert (rt.streams, rt.torch_threads) == (1, 1)
    rt = runtime.resolve_runtime("cpu", "fp32", threads=4, streams=2, env={})
    assert (rt.streams, rt.torch_threads) == (2, 2)


def test_streams_are_one_per_cpu_thread_up_to_eight_and_one_on_cuda():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert runtime.resolve_streams(cpu, None, 2) == 2
    assert runtime.resolve_streams(cpu, None, 1) == 1
    assert runtime.resolve_streams(cpu, None, 32) == 8
    assert runtime.resolve_streams(cuda, None, 16) == 1
    assert runtime.resolve_streams(cpu, 3, 2) == 3  # asked for: given, threads are then 1 each


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_is_bf16_where_native_for_training_and_inference(monkeypatch, native, expected):
    from wsi_seg_training.loop import autocast_for

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert runtime.resolve_precision(cpu, "auto") == expected
    ctx, scaler = autocast_for(cpu, "auto")  # training resolves the same way
    assert (isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16) == (expected == "bf16")
    assert not scaler


@pytest.mark.parametrize("bf16, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_precision_on_cuda(monkeypatch, bf16, expected):
    monkeypatch.setattr(runtime, "_cuda_has_bf16", lambda device: bf16)
    cuda = torch.device("cuda")
    assert runtime.resolve_precision(cuda, "auto") == expected
    assert runtime.needs_grad_scaler(cuda, "auto") == (expected == "fp16")


@pytest.mark.parametrize("name, message", [("mps", "unsupported device"), ("gpu:x", "unknown device")])
def test_bad_devices_are_refused(name, message):
    with pytest.raises(ConfigError, match=message):
        runtime.parse_device(name)


def test_cuda_is_refused_where_there_is_none(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        runtime.resolve_device("cuda:0")
    assert runtime.resolve_device("auto").type == "cpu"
    assert runtime.parse_device("cuda:1").index == 1  # syntax only: a cluster's workers may have it


def test_torch_threads_are_restored():
    before = torch.get_num_threads()
    with runtime.torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
