"""An exclusive lock on a run's output, so two runs never write the same result.

The lock is a file (``.wsi_seg_lock``) inside ``OUT.partial``, held with ``fcntl.flock``
for the whole run. It records who holds it (pid, host, boot, start time) and a lease that
the holder renews every quarter lease. A second run refuses at once, naming the holder.
A stale lock is taken over, with the reason logged:

- the holder was a process on this host that no longer runs (its pid is gone, was reused,
  or the host rebooted since): flock already says so, the record only explains it;
- the holder ran on another host whose lock this filesystem does not share (some network
  filesystems keep flock per host): only the lease can tell; it expired ``lease_s`` after
  the last renewal.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from wsi_seg.errors import OutputError

try:  # POSIX; elsewhere the record and its lease alone decide
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_NAME = ".wsi_seg_lock"
LEASE_S = 120.0  # a holder on another host counts as gone this long after its last renewal


class OutputInUseError(OutputError):
    """Another run holds the lock on this output."""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), to tell a reused pid; None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _pid_running(pid: int, start_ticks: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        pass
    now_ticks = _start_ticks(pid)
    return start_ticks is None or now_ticks is None or now_ticks == start_ticks


@dataclass(frozen=True)
class LockHolder:
    """The record in a lock file: who holds it, since when, and until when its lease runs."""

    pid: int
    host: str
    boot_id: str
    start_ticks: int | None
    since: float  # epoch seconds
    renewed: float  # epoch seconds of the last lease renewal

    @classmethod
    def me(cls, since: float) -> LockHolder:
        pid = os.getpid()
        return cls(pid, socket.gethostname(), _boot_id(), _start_ticks(pid), since, time.time())

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.since, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"pid {self.pid} on {self.host} since {since}"

    def stale_reason(self, lease_s: float, now: float) -> str | None:
        """Why this holder no longer holds the lock, or None if it may still run."""
        if self.host == socket.gethostname():
            if self.boot_id and self.boot_id != _boot_id():
                return f"{self.describe()}: the host rebooted since"
            if not _pid_running(self.pid, self.start_ticks):
                return f"{self.describe()}: that process no longer runs"
            if now - self.renewed > lease_s:
                return f"{self.describe()}: its lease expired {now - self.renewed:.0f} s ago"
            return None
        if now - self.renewed > lease_s:
            return f"{self.describe()}: its lease expired {now - self.renewed:.0f} s ago"
        return None


def read_holder(path: Path) -> LockHolder | None:
    """The record of the lock file at ``path``, or None if there is none (or it is unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return LockHolder(**data)
    except (OSError, ValueError, TypeError):
        return None


class RunLock:
    """``with RunLock(lock_file, what=out): …`` holds the lock for the block.

    Raises :class:`OutputInUseError` at once if another run holds it. ``taken_over`` says
    why a stale lock was taken over (None if the lock was free).
    """

    def __init__(self, path: Path, what: Path | str | None = None, lease_s: float = LEASE_S) -> None:
        self.path = Path(path)
        self.what = what if what is not None else self.path.parent
        self.lease_s = lease_s
        self.taken_over: str | None = None
        self._fd: int | None = None
        self._since = 0.0
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # -- acquiring ------------------------------------------------------------------
    def _in_use(self, holder: LockHolder | None) -> OutputInUseError:
        who = holder.describe() if holder is not None else "another run"
        return OutputInUseError(
            f"{self.what}: in use by {who} (lock {self.path}); wait for that run to finish or stop it"
        )

    def acquire(self) -> RunLock:
        for _ in range(10):  # retried only when the file was replaced while we opened it
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(f"{self.path}: cannot create the lock file ({exc.strerror or exc})") from exc
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    raise self._in_use(read_holder(self.path)) from None
            try:
                same_file = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:  # the previous holder removed it between our open and flock
                os.close(fd)
                continue
            holder = read_holder(self.path)
            if holder is not None:
                reason = holder.stale_reason(self.lease_s, time.time())
                if reason is None:  # flock was free, yet the holder lives: a filesystem without shared flock
                    os.close(fd)
                    raise self._in_use(holder)
                self.taken_over = reason
                log.warning("%s: took over a stale lock (%s)", self.what, reason)
            self._fd = fd
            self._since = time.time()
            self._write_record()
            self._renewer = threading.Thread(target=self._renew, name="wsi-seg-lock-lease", daemon=True)
            self._renewer.start()
            return self
        raise OutputError(f"{self.path}: the lock file keeps being replaced; is another run starting?")

    def _write_record(self) -> None:
        data = json.dumps(asdict(LockHolder.me(self._since))).encode()
        try:
            os.pwrite(self._fd, data, 0)  # then cut: a reader never finds the file empty
            os.ftruncate(self._fd, len(data))
            os.fsync(self._fd)
        except OSError as exc:  # a full disk must not stop the run; the flock still holds
            log.debug("could not renew the lock lease in %s: %s", self.path, exc)

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            self._write_record()

    # -- moving and releasing -------------------------------------------------------
    def moved(self, new_dir: Path) -> None:
        """The folder holding the lock file was renamed to ``new_dir`` (the lock stays held)."""
        self.path = Path(new_dir) / self.path.name

    def release(self) -> None:
        if self._fd is None:
            return
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        try:
            self.path.unlink(missing_ok=True)  # removed while still held: see acquire's inode check
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextmanager
def folder_lock(folder: str | Path, what: Path | str | None = None, remove_empty: bool = False) -> Iterator[RunLock]:
    """Hold the run lock of a folder one command writes (a training run, pseudo-labels, a
    ``fit``, a result's ``.partial``) for the block: a second writer stops at once, naming
    the first (``what``, default the folder). The folder is created, and removed again when
    the block leaves it empty (a run refused at once) if it created it, or always with
    ``remove_empty``."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: exists and is not a directory")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot create the folder ({exc.strerror or exc})") from exc
    try:
        with RunLock(folder / LOCK_NAME, what=what if what is not None else folder) as lock:
            yield lock
    finally:
        if created or remove_empty:
            try:
                if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
                    folder.rmdir()
            except OSError:
                pass


@contextmanager
def sibling_lock(output: str | Path) -> Iterator[RunLock]:
    """Hold the lock of an output written whole and renamed into place (an export's file or
    folder): a hidden ``.<name>.wsi_seg_lock`` beside it, removed on release. A second
    writer of the same output stops at once, naming the first."""
    output = Path(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{output.parent}: cannot create the folder ({exc.strerror or exc})") from exc
    with RunLock(output.parent / f".{output.name}{LOCK_NAME}", what=output) as lock:
        yield lock
