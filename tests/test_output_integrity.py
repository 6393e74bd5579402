"""Output integrity: wsi-seg replaces only what it wrote, and one run holds an output at a time."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import blob_image, write_slide
from test_cli import assert_one_line_error, segment

from wsi_seg.lock import LOCK_NAME, OutputInUseError, RunLock
from wsi_seg.result.format import is_complete, partial_path

CLI = [sys.executable, "-c", "import sys; from wsi_seg.cli.main import main; sys.exit(main())"]


def test_overwrite_never_deletes_a_user_folder(tmp_path, capsys, blob_slide, checkpoints):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    for extra in ((), ("--overwrite",)):
        code, _, err = segment(capsys, blob_slide, folder, checkpoints[1], *extra)
        assert_one_line_error(code, err, folder, "a folder of 1 entry (notes.txt)", "not a wsi-seg result")
    assert (folder / "notes.txt").read_text() == "mine"
    assert not partial_path(folder).exists()


def test_overwrite_never_replaces_a_file(tmp_path, capsys, blob_slide, checkpoints):
    path = tmp_path / "existing_file"
    path.write_text("data")
    for extra in ((), ("--overwrite",)):
        code, _, err = segment(capsys, blob_slide, path, checkpoints[1], *extra)
        assert_one_line_error(code, err, path, "a file of 4 bytes")
    assert path.read_text() == "data"
    assert not partial_path(path).exists()


def test_a_foreign_partial_is_never_emptied(tmp_path, capsys, blob_slide, checkpoints):
    out = tmp_path / "o.zarr"
    tmp = partial_path(out)
    tmp.mkdir()
    (tmp / "draft.txt").write_text("keep")
    code, _, err = segment(capsys, blob_slide, out, checkpoints[1], "--overwrite")
    assert_one_line_error(code, err, tmp, "not an interrupted wsi-seg run")
    assert (tmp / "draft.txt").read_text() == "keep"


def test_failed_overwrite_keeps_the_old_result(tmp_path, capsys, blob_slide, checkpoints, monkeypatch):
    import wsi_seg.inference.segment as segment_mod

    out = tmp_path / "o.zarr"
    assert segment(capsys, blob_slide, out, checkpoints[1])[0] == 0
    before = json.loads((out / "zarr.json").read_text())

    def full(self, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(segment_mod.ResultStore, "write_block", full)
    code, _, err = segment(capsys, blob_slide, out, checkpoints[2], "--overwrite")
    assert_one_line_error(code, err, "No space left on device")
    assert is_complete(out) and json.loads((out / "zarr.json").read_text()) == before
    assert not is_complete(partial_path(out))
    monkeypatch.undo()
    code, _, err = segment(capsys, blob_slide, out, checkpoints[2], "--overwrite")
    assert code == 0, err
    prov = json.loads((out / "zarr.json").read_text())["attributes"]["wsi_seg"]
    assert prov["complete"] and prov["model"]["path"] == str(checkpoints[2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.zarr"]  # no .partial, no .replaced, no lock
    assert not (out / LOCK_NAME).exists()


def _wait_for_progress(out, proc, timeout_s=300.0):
    progress = partial_path(out) / ".wsi_seg_progress"
    t0 = time.monotonic()
    while not (progress.exists() and progress.stat().st_size > 0):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout_s, "the first run never wrote a block"
        time.sleep(0.05)


@pytest.mark.slow
def test_lock_between_two_real_processes(tmp_path, capsys, caplog, checkpoints):
    """A second run on an output in use exits 2 at once naming the holder; once the holder
    is killed (SIGKILL: no clean-up), the next run takes the stale lock over and resumes."""
    slide = write_slide(tmp_path / "big.tif", blob_image(2048), mpp=0.5)
    out = tmp_path / "o.zarr"
    argv = [*CLI, "segment", str(slide), "--out", str(out), "--model", str(checkpoints[1]),
            "--device", "cpu", "--workers", "0", "--no-progress"]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_progress(out, first)
        for extra in ((), ("--overwrite",)):
            code, _, err = segment(capsys, slide, out, checkpoints[1], *extra)
            assert_one_line_error(code, err, out, f"in use by pid {first.pid} on {socket.gethostname()} since")
        assert first.poll() is None  # the holder was not disturbed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert not out.exists() and (partial_path(out) / LOCK_NAME).exists()  # the dead holder's lock is left
    code, stdout, err = segment(capsys, slide, out, checkpoints[1])
    assert code == 0, err
    assert f"took over a stale lock (pid {first.pid} on {socket.gethostname()}" in caplog.text
    assert "that process no longer runs" in caplog.text and "resumed" in stdout
    assert is_complete(out) and not partial_path(out).exists()


def _record(path, host, renewed, pid=12345):
    path.write_text(json.dumps({"pid": pid, "host": host, "boot_id": "", "start_ticks": None,
                                "since": renewed - 60, "renewed": renewed}))


def test_lock_lease_on_a_filesystem_without_shared_flock(tmp_path, caplog):
    """flock is free (the holder is on another host), so only its lease tells."""
    lock_file = tmp_path / LOCK_NAME
    _record(lock_file, "node-7", time.time())
    with pytest.raises(OutputInUseError, match="in use by pid 12345 on node-7 since"):
        RunLock(lock_file, lease_s=60).acquire()
    _record(lock_file, "node-7", time.time() - 61)
    with RunLock(lock_file, lease_s=60) as lock:
        assert "pid 12345 on node-7" in lock.taken_over and "lease expired" in lock.taken_over
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
        with pytest.raises(OutputInUseError, match=f"in use by pid {os.getpid()}"):
            RunLock(lock_file).acquire()  # a second handle, even in the same process
    assert not lock_file.exists()
    assert "took over a stale lock" in caplog.text


def test_lock_of_a_dead_process_on_this_host(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(proc.stdout)
    lock_file = tmp_path / LOCK_NAME
    _record(lock_file, socket.gethostname(), time.time(), pid=dead_pid)
    with RunLock(lock_file) as lock:
        assert f"pid {dead_pid}" in lock.taken_over and "no longer runs" in lock.taken_over


def test_a_napari_job_respects_the_lock_of_a_cli_run(tmp_path, blob_slide, checkpoints):
    """The widget's job goes through the same lock: it fails with the holder named, and the
    holder's output is left alone."""
    from wsi_seg_napari._jobs import (
        JobFailed,
        SegmentRequest,
        guarded_segment_job,
        run_to_end,
    )

    from wsi_seg.result.ownership import output_lock

    out = tmp_path / "o.zarr"
    with output_lock(out):
        _, outcome = run_to_end(guarded_segment_job(SegmentRequest(blob_slide, out, checkpoints[1])))
        assert isinstance(outcome, JobFailed) and f"in use by pid {os.getpid()}" in outcome.message
        assert (partial_path(out) / LOCK_NAME).exists()
    assert not out.exists() and not partial_path(out).exists()


class _Killed(BaseException):
    """Stands for SIGKILL: nothing catches it, nothing is rolled back."""


def _crash_on_rename(monkeypatch, n):
    """Make the ``n``-th os.replace of the swap kill the run (1: after moving the old result
    aside, before the new one is in place)."""
    import wsi_seg.result.ownership as ownership

    calls = []

    class Os:  # the ownership module's os, with a replace that dies; every other module keeps the real one
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def replace(src, dst):
            calls.append((src, dst))
            if len(calls) == n + 1:
                raise _Killed
            os.replace(src, dst)

    monkeypatch.setattr(ownership, "os", Os())


def test_a_crash_in_the_overwrite_swap_loses_no_result(tmp_path, capsys, caplog, blob_slide, checkpoints, monkeypatch):
    from test_cli import run_cli

    out = tmp_path / "o.zarr"
    assert segment(capsys, blob_slide, out, checkpoints[1])[0] == 0
    old = json.loads((out / "zarr.json").read_text())["attributes"]["wsi_seg"]
    _crash_on_rename(monkeypatch, 1)  # old result moved to o.zarr.replaced, the new one not yet in place
    with pytest.raises(_Killed):
        segment(capsys, blob_slide, out, checkpoints[2], "--overwrite")
    monkeypatch.undo()
    assert not out.exists() and is_complete(tmp_path / "o.zarr.replaced")
    assert is_complete(partial_path(out))  # the new result was marked complete before the swap
    # the next command that reads OUT restores the previous result, and says so
    code, stdout, err = run_cli(capsys, "report", out, "--out", tmp_path / "r.png")
    assert code == 0 and "mm²" in stdout, err
    assert "previous result was restored" in caplog.text
    assert json.loads((out / "zarr.json").read_text())["attributes"]["wsi_seg"] == old
    # rerunning the overwrite resumes its finished partial and completes the swap
    code, stdout, err = segment(capsys, blob_slide, out, checkpoints[2], "--overwrite")
    assert code == 0, err
    prov = json.loads((out / "zarr.json").read_text())["attributes"]["wsi_seg"]
    assert prov["complete"] and prov["model"]["path"] == str(checkpoints[2])
    assert prov["stats"]["patches_run"] == 0  # nothing recomputed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.zarr", "r.png"]


def test_a_crash_after_the_swap_leaves_only_the_old_copy_to_remove(tmp_path, capsys, caplog, blob_slide,
                                                                     checkpoints, monkeypatch):
    out = tmp_path / "o.zarr"
    assert segment(capsys, blob_slide, out, checkpoints[1])[0] == 0
    import shutil

    import wsi_seg.result.ownership as ownership

    class Shutil:  # the ownership module's shutil, whose rmtree dies (after the swap: removing the old copy)
        def __getattr__(self, name):
            return getattr(shutil, name)

        @staticmethod
        def rmtree(*a, **k):
            raise _Killed

    monkeypatch.setattr(ownership, "shutil", Shutil())
    with pytest.raises(_Killed):
        segment(capsys, blob_slide, out, checkpoints[2], "--overwrite")
    monkeypatch.undo()
    assert is_complete(out) and (tmp_path / "o.zarr.replaced").is_dir()
    from wsi_seg.result.reader import Result

    assert Result.open(out).provenance.model.path == str(checkpoints[2])
    assert not (tmp_path / "o.zarr.replaced").exists() and "removed" in caplog.text
