"""Cohorts on dask.distributed: the same outputs, summary and exit codes as the sequential run.

The clusters run worker *processes*, so the task, its options and its outcome must pickle.
"""

import csv
import socket
import time

import numpy as np
import pytest
import zarr

from wsi_seg.cli.main import main
from wsi_seg.errors import ConfigError
from wsi_seg.result.format import is_complete, partial_path
from wsi_seg.result.reader import Result
from wsi_seg.synthetic import write_demo_slide

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two small good slides around a corrupt one; the order is not alphabetical on purpose."""
    root = tmp_path_factory.mktemp("cohort")
    good_b = write_demo_slide(root / "b slide.tif", size_px=(1024, 1024), mpp=0.25, seed=1, tile_px=256).path
    bad = root / "broken.svs"
    bad.write_text("not a slide")
    good_a = write_demo_slide(root / "a.tif", size_px=(1024, 1024), mpp=0.25, seed=2, tile_px=256).path
    return [good_b, bad, good_a]


@pytest.fixture(scope="module")
def cluster():
    """Daemonic worker processes, as `dask worker` starts them by default."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c:
        yield c


def segment(capsys, slides, out_dir, model, *extra):
    argv = ["segment", *map(str, slides), "--out-dir", str(out_dir), "--model", str(model),
            "--device", "cpu", "--no-progress", *map(str, extra)]
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def sequential(cohort, checkpoints, tmp_path_factory):
    """The reference: the same cohort run without a cluster."""
    out_dir = tmp_path_factory.mktemp("sequential")
    code = main(["segment", *map(str, cohort), "--out-dir", str(out_dir), "--model", str(checkpoints[2]),
                 "--device", "cpu", "--workers", "0", "--no-progress"])
    assert code == 2
    return out_dir


def rows(out_dir):
    with open(out_dir / "wsi_seg_summary.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def assert_same_masks(out_dir, reference, names):
    for name in names:
        assert is_complete(out_dir / name) and not partial_path(out_dir / name).exists()
        got = zarr.open_group(str(out_dir / name), mode="r")["labels/mask/0"][:]
        want = zarr.open_group(str(reference / name), mode="r")["labels/mask/0"][:]
        assert got.shape == want.shape and np.array_equal(got, want), name


def tasks_run(cluster) -> int:
    prefix = cluster.scheduler.task_prefixes.get("wsi-seg-slide")
    return 0 if prefix is None else prefix.state_counts["processing"]


def test_scheduler_run_matches_sequential_then_skips(tmp_path, capsys, cohort, cluster, sequential, checkpoints):
    out_dir = tmp_path / "results"
    before = tasks_run(cluster)
    # --workers 1 on daemonic workers: slides are read in-process instead of failing
    code, out, err = segment(capsys, cohort, out_dir, checkpoints[2], "--workers", "1",
                             "--scheduler", cluster.scheduler_address)
    assert code == 2, err
    assert "Traceback" not in err
    assert f"wsi-seg: error: {cohort[1]}: " in err and "1 of 3 slides failed" in err
    assert "3 slides: 2 done, 0 skipped, 1 failed" in out
    summary = rows(out_dir)
    assert [r["slide"] for r in summary] == [str(s) for s in cohort]  # input order, not arrival order
    assert [r["status"] for r in summary] == ["done", "failed", "done"]
    assert [r["out"] for r in summary] == [str(out_dir / f"{s.stem}.zarr") for s in cohort]
    assert summary[1]["error"].startswith(str(cohort[1]))  # the path as given, not the workers' absolute one
    reference = rows(sequential)
    for got, want in zip(summary, reference):
        assert (got["status"], got["patches"], got["error"]) == (want["status"], want["patches"], want["error"])
    assert_same_masks(out_dir, sequential, ["b slide.zarr", "a.zarr"])
    assert tasks_run(cluster) == before + 3

    # rerun: the finished slides are skipped by the client and never reach the cluster
    code, out, err = segment(capsys, cohort, out_dir, checkpoints[2], "--scheduler", cluster.scheduler_address)
    assert code == 2
    assert out.count("already segmented by this model, skipped") == 2
    assert [r["status"] for r in rows(out_dir)] == ["skipped", "failed", "skipped"]
    assert tasks_run(cluster) == before + 4  # only the broken slide ran again


def test_local_cluster_end_to_end(tmp_path, capsys, cohort, sequential, checkpoints):
    good = [cohort[0], cohort[2]]
    # --workers 1: the local cluster's workers are not daemonic, so they start reader processes
    code, out, err = segment(capsys, good, tmp_path, checkpoints[2], "--workers", "1", "--local-cluster", "2")
    assert code == 0, err
    assert err == ""  # distributed's own logging stays quiet
    assert "2 slides: 2 done, 0 skipped, 0 failed" in out
    assert [r["status"] for r in rows(tmp_path)] == ["done", "done"]
    assert_same_masks(tmp_path, sequential, ["b slide.zarr", "a.zarr"])
    # the workers are processes of ours: their malloc thresholds were set as the CLI's are
    assert Result.open(tmp_path / "a.zarr").provenance.inference["malloc"] != "glibc default"


def test_unreachable_scheduler_is_one_line(tmp_path, capsys, cohort, checkpoints, monkeypatch):
    import wsi_seg.cohort.distributed

    monkeypatch.setattr(wsi_seg.cohort.distributed, "CONNECT_TIMEOUT_S", 0.5)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    code, out, err = segment(capsys, cohort[:1], tmp_path, checkpoints[2], "--scheduler", address)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsi-seg: error: ") and address in lines[0], err
    code, _, err = segment(capsys, cohort[:1], tmp_path, checkpoints[2], "--scheduler", "no-port-here")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no-port-here" in err
    assert not (tmp_path / "a.zarr").exists()


def test_cuda_needs_gpu_workers(tmp_path, capsys, cohort, cluster, checkpoints):
    code, _, err = segment(capsys, cohort[:1], tmp_path, checkpoints[2], "--device", "cuda",
                           "--scheduler", cluster.scheduler_address)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "GPU" in err and "--resources GPU=1" in err


@pytest.mark.parametrize("extra, needle", [
    (["--out-dir", "o", "--scheduler", "tcp://127.0.0.1:8786", "--local-cluster", "2"], "exclude each other"),
    (["--out", "o.zarr", "--local-cluster", "2"], "--out-dir"),
    (["--out", "o.zarr", "--scheduler", "tcp://127.0.0.1:8786"], "--out-dir"),
    (["--out-dir", "o", "--local-cluster", "0"], "at least 1"),
])
def test_cluster_flag_conflicts(tmp_path, capsys, cohort, checkpoints, extra, needle):
    code = main(["segment", str(cohort[0]), "--model", str(checkpoints[2]), "--no-progress",
                 *[str(tmp_path / e) if e in ("o", "o.zarr") else e for e in extra]])
    _, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    assert list(tmp_path.iterdir()) == []


def test_missing_distributed_says_how_to_install(monkeypatch):
    import sys

    from wsi_seg.cohort.distributed import import_distributed

    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed → ImportError
    with pytest.raises(ConfigError, match=r'pip install "wsi-seg\[distributed\]"'):
        import_distributed()


def test_interrupt_cancels_and_leaves_resumable(tmp_path, capsys, cohort, cluster, checkpoints, monkeypatch):
    """Ctrl-C in the client (here: right after the first outcome) cancels the running slides,
    which stop after their current batch and stay resumable; exit 130 as without a cluster."""
    import wsi_seg.cohort.run

    def interrupt(out_dir, outcomes):
        raise KeyboardInterrupt

    big = write_demo_slide(tmp_path / "big.tif", size_px=(2048, 2048), mpp=0.25, seed=3, tile_px=256).path
    monkeypatch.setattr(wsi_seg.cohort.run, "write_summary", interrupt)
    code, out, err = segment(capsys, [cohort[1], big], tmp_path / "out", checkpoints[2], "--workers", "0",
                             "--scheduler", cluster.scheduler_address)
    assert code == 130 and "interrupted; rerun the same command to resume" in err, err
    result = tmp_path / "out" / "big.zarr"
    with distributed.Client(cluster.scheduler_address, set_as_default=False) as client:
        deadline = time.monotonic() + 30
        while sum(client.run(lambda dask_worker: dask_worker.state.executing_count).values()):
            assert time.monotonic() < deadline, "the cancelled slide kept running"
            time.sleep(0.2)
        assert not [k for k in client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.tasks))
                    if str(k).startswith("wsi-seg-slide")]
    assert partial_path(result).exists() and not result.exists()
