"""What wsi-seg may delete or replace: only what it can prove it wrote.

A result is ours when its root ``zarr.json`` carries the ``wsi_seg`` attributes; a
``OUT.partial`` is ours when it is such a store, or holds nothing but our lock and
progress files (a run stopped before its store was created). Anything else at ``--out``
is refused, with or without ``--overwrite``, naming what is there. An overwrite writes
the new result beside the old one (``OUT.partial``) and swaps them only at the end, so a
failed overwrite leaves the old result as it was.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from wsi_seg.errors import OutputError
from wsi_seg.lock import LOCK_NAME, RunLock, folder_lock
from wsi_seg.result.format import (
    PROGRESS_FILE,
    REPLACED_SUFFIX,
    is_complete,
    partial_path,
    read_provenance,
    replaced_path,
)

log = logging.getLogger(__name__)

_BOOKKEEPING = {LOCK_NAME, PROGRESS_FILE}




def is_ours(path: Path) -> bool:
    """True for a real folder (not a link) whose root ``zarr.json`` carries the wsi_seg attributes."""
    return path.is_dir() and not path.is_symlink() and read_provenance(path) is not None


def is_our_partial(path: Path) -> bool:
    """``is_ours``, or a folder holding only our lock and progress files."""
    if is_ours(path):
        return True
    if not path.is_dir() or path.is_symlink():
        return False
    try:
        return {p.name for p in path.iterdir()} <= _BOOKKEEPING
    except OSError:
        return False


def describe(path: Path) -> str:
    """What is at ``path``, in words, for an error message."""
    if path.is_symlink():
        return f"a symbolic link to {os.readlink(path)}"
    if path.is_file():
        return f"a file of {path.stat().st_size} bytes"
    if path.is_dir():
        try:
            names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
        except OSError as exc:
            return f"a folder that cannot be listed ({exc.strerror or exc})"
        if not names:
            return "an empty folder"
        shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
        return f"a folder of {len(names)} {'entry' if len(names) == 1 else 'entries'} ({shown})"
    return "something that is neither a file nor a folder"


def _name_max(folder: Path) -> int:
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return os.pathconf(probe, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def check_names(out: Path) -> None:
    """Refuse an output whose own name, or that of its ``.partial``/``.replaced``, is too long."""
    limit = _name_max(out.parent)
    longest = out.name + REPLACED_SUFFIX
    if len(os.fsencode(longest)) > limit:
        raise OutputError(
            f"{out}: output name is {len(os.fsencode(out.name))} bytes; with the {REPLACED_SUFFIX} suffix "
            f"wsi-seg needs while it works it must stay within {limit - len(REPLACED_SUFFIX)} bytes; choose a shorter --out"
        )


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, an ``out`` that wsi-seg must not write or replace.

    Without ``overwrite`` any existing ``out`` is refused; with it, only a result of ours
    may be replaced. A ``.partial`` beside it must be ours too (it is resumed or discarded).
    """
    check_names(out)
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"{out}: {parent} is {describe(parent)}, not a folder")
    if out.exists() or out.is_symlink():
        if not is_ours(out):
            raise OutputError(
                f"{out}: already exists and is {describe(out)}, not a wsi-seg result; wsi-seg replaces only "
                "results it wrote, even with --overwrite: choose another --out or move it away"
            )
        if not overwrite:
            what = "a complete wsi-seg result" if is_complete(out) else "an unfinished wsi-seg result"
            raise OutputError(f"{out}: output already exists ({what}); pass --overwrite to replace it")
    tmp = partial_path(out)
    if (tmp.exists() or tmp.is_symlink()) and not is_our_partial(tmp):
        raise OutputError(
            f"{tmp}: is {describe(tmp)}, not an interrupted wsi-seg run; wsi-seg will not remove it: "
            "move it away or choose another --out"
        )


def clear_partial(tmp: Path) -> None:
    """Empty our ``.partial`` for a fresh run, keeping the lock file the run holds in it."""
    if not is_our_partial(tmp):  # checked again: never empty what is not ours
        raise OutputError(f"{tmp}: is {describe(tmp)}, not an interrupted wsi-seg run; wsi-seg will not remove it")
    for child in tmp.iterdir():
        if child.name == LOCK_NAME:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``; an old result of ours at ``out`` is moved
    aside first and removed only after the rename, so a failure leaves it in place."""
    old = replaced_path(out)
    moved_old = False
    try:
        if out.exists() or out.is_symlink():
            if not is_ours(out):
                raise OutputError(f"{out}: is now {describe(out)}, not a wsi-seg result; the new result stays in {tmp}")
            if old.exists() or old.is_symlink():
                if not is_our_partial(old):
                    raise OutputError(f"{old}: is {describe(old)}, not a wsi-seg result; the new result stays in {tmp}")
                shutil.rmtree(old)
            os.replace(out, old)
            moved_old = True
        os.replace(tmp, out)
    except OSError as exc:
        if moved_old and not out.exists():
            os.replace(old, out)
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"{out}: cannot move the finished result into place ({exc.strerror or exc}); it stays in {tmp}") from exc
    if moved_old:
        shutil.rmtree(old, ignore_errors=True)



def restore_replaced(out: Path) -> None:
    """Undo what a crash during an ``--overwrite`` swap left, under ``out``'s lock.

    ``out.replaced`` is the previous result, moved aside for the new one. With no result
    at ``out`` it is moved back (a WARNING says so; the new result, complete or not, stays
    in ``out.partial`` for a rerun with ``--overwrite``). Beside a complete result at
    ``out`` it is the copy the swap had left to delete, and is deleted.
    """
    old = replaced_path(out)
    if not is_ours(old):
        return
    if out.exists() or out.is_symlink():
        if is_ours(out) and is_complete(out):
            shutil.rmtree(old, ignore_errors=True)
            log.warning("%s: removed %s, the previous result a finished --overwrite had replaced", out, old)
        return
    os.replace(old, out)
    log.warning("%s: an --overwrite was interrupted while swapping results; the previous result was restored from "
                "%s (the new one is kept in %s: rerun with --overwrite to finish it)", out, old.name,
                partial_path(out).name)


def restore_replaced_now(out: Path) -> None:
    """:func:`restore_replaced` for readers (report, export, view): only when no run holds
    ``out`` (a run in progress finishes its own swap)."""
    if not is_ours(replaced_path(out)):
        return
    try:
        with output_lock(out):
            restore_replaced(out)
    except OutputError:  # in use by a run, or the folder cannot be written: leave it to that run
        return


@contextmanager
def output_lock(out: Path) -> Iterator[RunLock]:
    """Hold the lock of a run on ``out`` (in ``OUT.partial``, created if needed) for the block.

    A ``.partial`` left empty when the block ends (a run refused before writing) is removed.
    """
    with folder_lock(partial_path(out), what=out, remove_empty=True) as lock:
        yield lock


COHORT_LOCK_NAME = ".wsi_seg_cohort_lock"


@contextmanager
def cohort_lock(out_dir: Path) -> Iterator[RunLock]:
    """Hold the lock of a cohort run on ``out_dir`` (its summary files) for the block;
    each slide's run also holds its own output's lock."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot create the output folder ({exc.strerror or exc})") from exc
    with RunLock(out_dir / COHORT_LOCK_NAME, what=out_dir) as lock:
        yield lock
