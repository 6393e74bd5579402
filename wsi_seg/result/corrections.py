"""User corrections of a result, saved as a second label image ``labels/corrected``.

``labels/mask`` (what the model said) is never modified. The first save copies its
pyramid to ``labels/corrected`` (chunk files copied as they are, into a temporary
folder renamed into place); every save then writes only the level-0 chunks whose
pixels changed, and rebuilds only their parents in the coarser levels, with the same
halving as the segment pyramid (``wsi_seg.result.pyramid.halve_mask``: top-left pixel of each 2×2).

Crash safety: zarr's local store writes each chunk to a temporary file and renames it
(zarr ≥ 3.1.3), so every chunk is either its old or its new content. Before writing, a
save records the chunks it will touch (``pending``); it clears that record last. A save
interrupted half-way therefore leaves a readable label image whose chunks are each
either the previous or the new corrected state; the next ``Result.open`` (any read, and
every save) rebuilds the pyramid over the chunks the interrupted one recorded.

Provenance, in ``labels/corrected``'s attributes under ``wsi_seg_corrections``: one
entry per save with who (login name), when (UTC), which level-0 chunks and how many
level-0 pixels changed, and the edited crop (``region``, level-0 px: what the user
reviewed; absent in older saves).
"""

from __future__ import annotations

import getpass
import logging
import os
import shutil
import stat
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from wsi_seg.errors import ConfigError, OutputError
from wsi_seg.result.format import (
    CORRECTED_NAME,
    CORRECTIONS_KEY,
    LABEL_NAME,
    LABELS_GROUP,
    is_partial,
    labels_path,
    pending_corrections,
    read_provenance,
)
from wsi_seg.result.pyramid import halve_mask
from wsi_seg.result.reader import Result

log = logging.getLogger(__name__)

_TMP_PREFIX = ".corrected-"  # a half-made copy of labels/mask: ours, removed on the next save


@dataclass(frozen=True)
class CorrectionSave:
    """The provenance of one save."""

    author: str
    utc: str
    chunks: list[tuple[int, int]]  # level-0 chunk indices (row, col) written
    pixels_changed: int  # level-0 pixels whose class changed
    edit_level: int  # pyramid level the edit was painted at
    # the edited crop, level-0 px (y0, x0, y1, x1): what the user saw and left as it was is
    # reviewed (``wsi-seg finetune`` learns it); None in saves written before it was recorded
    region: tuple[int, int, int, int] | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["chunks"] = [list(c) for c in self.chunks]
        d["region"] = list(self.region) if self.region is not None else None
        return d


def _is_read_only(path: Path) -> bool:
    """No write permission for us, or no write bit for anyone (read-only on purpose:
    ``chmod -R a-w`` is honoured even for root, who ``os.access`` lets through)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return True
    return not os.access(path, os.W_OK) or not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def open_for_corrections(path: str | Path) -> Result:
    """The result at ``path``, checked to take corrections: complete, not a ``.partial``,
    writable. Each refusal is one line naming the folder."""
    p = Path(str(path).rstrip("/\\"))
    if is_partial(p) or (read_provenance(p) or {}).get("complete") is False:
        raise OutputError(
            f"{p}: the segmentation run is unfinished; rerun the same `wsi-seg segment` command "
            "to finish it before saving corrections"
        )
    result = Result.open(p)
    for folder in (p, labels_path(p), labels_path(p, CORRECTED_NAME)):
        if folder.exists() and _is_read_only(folder):
            raise OutputError(
                f"{folder}: the result is read-only; corrections are saved inside it as labels/{CORRECTED_NAME} "
                "(make it writable, e.g. chmod -R u+w, or save into a copy)"
            )
    return result


def check_label_values(values: np.ndarray, result: Result) -> None:
    """ConfigError unless every value is background (0) or a class of the result (1..N)."""
    n = len(result.class_names)
    found = np.unique(values)
    bad = found[(found < 0) | (found > n)]
    if bad.size:
        classes = ", ".join(f"{i + 1} = {name}" for i, name in enumerate(result.class_names))
        raise ConfigError(
            f"{result.path}: label value {int(bad[0])} is not a class of this result "
            f"(0 = background, {classes}); paint with one of these values"
        )


def corrections_state(result: Result) -> dict[str, Any]:
    """``labels/corrected``'s ``wsi_seg_corrections`` attributes, {} when there is none."""
    import zarr

    if CORRECTED_NAME not in result.label_names:
        return {}
    group = zarr.open_group(str(labels_path(result.path, CORRECTED_NAME)), mode="r")
    return dict(group.attrs.get(CORRECTIONS_KEY) or {})


def corrections_history(result: Result) -> list[dict[str, Any]]:
    """The saves recorded in ``labels/corrected`` (oldest first), [] when there is none."""
    return list(corrections_state(result).get("saves") or [])


def pending_chunks(result: Result) -> list[tuple[int, int]]:
    """Level-0 chunks of an interrupted save (their pyramid may lag), [] when none."""
    return pending_corrections(result.path)


@dataclass(frozen=True)
class CorrectedChunk:
    """A level-0 chunk where the corrections changed a pixel."""

    index: tuple[int, int]  # (chunk row, chunk col)
    y0: int
    x0: int
    before: np.ndarray  # the model's labels (labels/mask)
    after: np.ndarray  # the corrected labels (labels/corrected)
    changed: np.ndarray  # before != after


def corrected_chunks(result: Result) -> Iterator[CorrectedChunk]:
    """The level-0 chunks of ``result`` where ``labels/corrected`` differs from the model's
    mask, in order. Only the chunks the saves (and an interrupted save) recorded are read;
    every chunk when none is recorded (written another way) or the corrections were
    carried over from the result this one replaced."""
    if CORRECTED_NAME not in result.label_names:
        return
    mask, corrected = result.mask(0, LABEL_NAME), result.mask(0, CORRECTED_NAME)
    h, w = mask.shape
    c = mask.chunks[-1]
    chunks = {tuple(x) for save in corrections_history(result) for x in save.get("chunks") or []}
    chunks |= set(pending_chunks(result))
    if not chunks or corrections_state(result).get("carried_from"):
        chunks = {(i, j) for i in range(-(-h // c)) for j in range(-(-w // c))}
    for i, j in sorted(chunks):
        y0, x0 = i * c, j * c
        before = np.asarray(mask[y0 : y0 + c, x0 : x0 + c])
        after = np.asarray(corrected[y0 : y0 + c, x0 : x0 + c])
        changed = before != after
        if changed.any():
            yield CorrectedChunk((i, j), y0, x0, before, after, changed)


def _ensure_corrected(result: Result) -> None:
    """Create ``labels/corrected`` as a copy of ``labels/mask`` (atomic: copy, then rename)."""
    import zarr

    labels_dir = labels_path(result.path)
    for stale in labels_dir.glob(_TMP_PREFIX + "*"):  # an earlier first save that died mid-copy
        shutil.rmtree(stale, ignore_errors=True)
    if (labels_dir / CORRECTED_NAME).exists():
        return
    tmp = labels_dir / f"{_TMP_PREFIX}{os.getpid()}"
    try:
        shutil.copytree(labels_dir / LABEL_NAME, tmp)
        group = zarr.open_group(str(tmp), mode="r+")
        ome = dict(group.attrs.get("ome") or {})
        for ms in ome.get("multiscales") or []:
            ms["name"] = CORRECTED_NAME
        group.attrs["ome"] = ome
        group.attrs[CORRECTIONS_KEY] = {"source": LABEL_NAME, "saves": []}
        os.replace(tmp, labels_dir / CORRECTED_NAME)
        labels = zarr.open_group(str(labels_dir), mode="r+")
        ome = dict(labels.attrs.get("ome") or {})
        names = list(ome.get(LABELS_GROUP) or [LABEL_NAME])
        if CORRECTED_NAME not in names:
            ome[LABELS_GROUP] = [*names, CORRECTED_NAME]
            labels.attrs["ome"] = ome
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"{labels_dir}: cannot create labels/{CORRECTED_NAME} ({exc.strerror or exc})") from exc


def _write_chunks(array: Any, edits: dict[tuple[int, int], np.ndarray], values: dict[tuple[int, int], np.ndarray]) -> int:
    """Apply per-chunk edits (bool mask, new values) to level-0 chunks; returns pixels changed."""
    c = array.chunks[-1]
    changed = 0
    for (i, j), where in edits.items():
        y0, x0 = i * c, j * c
        block = array[y0 : y0 + where.shape[0], x0 : x0 + where.shape[1]]
        new = np.where(where, values[(i, j)], block)
        diff = int((new != block).sum())
        if diff:
            array[y0 : y0 + where.shape[0], x0 : x0 + where.shape[1]] = new
            changed += diff
    return changed


def _rechunked(pieces: Iterable[CorrectedChunk], chunk_px: int, shape_hw: tuple[int, int],
               ) -> tuple[dict[tuple[int, int], np.ndarray], dict[tuple[int, int], np.ndarray]]:
    """The corrected pixels of ``pieces`` (level-0 chunks of a result chunked any way) as
    per-chunk edits (bool mask, new values) of a level-0 array of ``shape_hw`` in
    ``chunk_px`` chunks: identical pieces when the chunking is the same."""
    c, (h, w) = chunk_px, shape_hw
    edits: dict[tuple[int, int], np.ndarray] = {}
    values: dict[tuple[int, int], np.ndarray] = {}
    for piece in pieces:
        ph, pw = piece.changed.shape
        for i in range(piece.y0 // c, (piece.y0 + ph - 1) // c + 1):
            for j in range(piece.x0 // c, (piece.x0 + pw - 1) // c + 1):
                cy0, cx0 = i * c, j * c
                if (i, j) not in edits:
                    size = (min(c, h - cy0), min(c, w - cx0))
                    edits[(i, j)], values[(i, j)] = np.zeros(size, bool), np.zeros(size, np.uint8)
                y0, y1 = max(cy0, piece.y0), min(cy0 + c, piece.y0 + ph, h)
                x0, x1 = max(cx0, piece.x0), min(cx0 + c, piece.x0 + pw, w)
                src = (slice(y0 - piece.y0, y1 - piece.y0), slice(x0 - piece.x0, x1 - piece.x0))
                dst = (slice(y0 - cy0, y1 - cy0), slice(x0 - cx0, x1 - cx0))
                where = piece.changed[src]
                edits[(i, j)][dst] |= where
                values[(i, j)][dst][where] = piece.after[src][where]
    return edits, values


def _rebuild_parents(group: Any, levels: Iterable[int], chunks: Iterable[tuple[int, int]]) -> None:
    """Recompute the coarser-level chunks above level-0 ``chunks`` (top-left of each 2×2)."""
    touched = set(chunks)
    levels = list(levels)
    for level in levels[1:]:
        src, dst = group[str(level - 1)], group[str(level)]
        c = dst.chunks[-1]
        h, w = dst.shape
        parents = {(i // 2, j // 2) for i, j in touched}
        for pi, pj in sorted(parents):
            y0, x0 = pi * c, pj * c
            y1, x1 = min(h, y0 + c), min(w, x0 + c)
            if y0 >= h or x0 >= w:
                continue
            dst[y0:y1, x0:x1] = halve_mask(src[2 * y0 : 2 * y1, 2 * x0 : 2 * x1])
        touched = parents


def save_corrections(
    path: str | Path,
    level0_yx: tuple[int, int],
    before: np.ndarray,
    after: np.ndarray,
    level: int = 0,
    author: str | None = None,
) -> CorrectionSave:
    """Save an edited crop of a result's labels into ``labels/corrected``.

    ``before``/``after``: the (h, w) crop as it was loaded and as the user left it, at
    pyramid ``level`` (each pixel is 2**level level-0 pixels); ``level0_yx``: its top-left
    corner in level-0 pixels of the result. Only pixels that differ are written (an edit
    at a coarse level does not flatten finer detail it did not touch).
    """
    before, after = np.asarray(before), np.asarray(after)
    if before.shape != after.shape or before.ndim != 2:
        raise ConfigError(f"edited crop has shape {after.shape}, its original {before.shape}; expected one 2-D shape")
    result = open_for_corrections(path)
    changed = after != before
    check_label_values(after[changed], result)
    if level not in result.levels:
        raise ConfigError(f"{result.path}: no pyramid level {level} (the result has levels {list(result.levels)})")
    user = author or _login()
    utc = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if not changed.any():
        return CorrectionSave(user, utc, [], 0, level)  # an interrupted save was finished on open

    import zarr

    _ensure_corrected(result)
    group = zarr.open_group(str(labels_path(result.path, CORRECTED_NAME)), mode="r+")
    base = group["0"]
    chunk = base.chunks[-1]
    h0, w0 = base.shape
    f = 2**level
    ys, xs = np.nonzero(changed)
    edits: dict[tuple[int, int], np.ndarray] = {}
    values: dict[tuple[int, int], np.ndarray] = {}
    y_first, x_first = level0_yx[0] + ys.min() * f, level0_yx[1] + xs.min() * f
    y_last, x_last = level0_yx[0] + (ys.max() + 1) * f, level0_yx[1] + (xs.max() + 1) * f
    for i in range(max(0, y_first) // chunk, (min(h0, y_last) - 1) // chunk + 1):
        for j in range(max(0, x_first) // chunk, (min(w0, x_last) - 1) // chunk + 1):
            cy0, cx0 = i * chunk, j * chunk
            ch, cw = min(chunk, h0 - cy0), min(chunk, w0 - cx0)
            # level-0 pixel (cy0 + y, cx0 + x) ← crop pixel ((cy0 + y - oy) // f, (cx0 + x - ox) // f)
            ry = (np.arange(cy0, cy0 + ch) - level0_yx[0]) // f
            rx = (np.arange(cx0, cx0 + cw) - level0_yx[1]) // f
            oky = (ry >= 0) & (ry < after.shape[0])
            okx = (rx >= 0) & (rx < after.shape[1])
            if not oky.any() or not okx.any():
                continue
            ryc, rxc = np.clip(ry, 0, after.shape[0] - 1), np.clip(rx, 0, after.shape[1] - 1)
            where = changed[np.ix_(ryc, rxc)] & oky[:, None] & okx[None, :]
            if where.any():
                edits[(i, j)] = where
                values[(i, j)] = after[np.ix_(ryc, rxc)]
    state = dict(group.attrs.get(CORRECTIONS_KEY) or {"source": LABEL_NAME, "saves": []})
    chunks = sorted(edits)
    try:
        group.attrs[CORRECTIONS_KEY] = {**state, "pending": {"utc": utc, "author": user, "chunks": [list(c) for c in chunks]}}
        pixels = _write_chunks(base, edits, values)
        _rebuild_parents(group, result.levels, chunks)
        h0e, w0e = after.shape[0] * f, after.shape[1] * f
        region = (max(0, level0_yx[0]), max(0, level0_yx[1]), min(h0, level0_yx[0] + h0e), min(w0, level0_yx[1] + w0e))
        record = CorrectionSave(user, utc, chunks, pixels, level, region)
        state.pop("pending", None)
        state["saves"] = [*(state.get("saves") or []), record.to_json()]
        group.attrs[CORRECTIONS_KEY] = state
    except OSError as exc:
        raise OutputError(
            f"{result.path}: saving corrections failed ({exc.strerror or exc}); labels/{CORRECTED_NAME} keeps each "
            "chunk's previous or new state, save again to finish"
        ) from exc
    log.info("%s: %d level-0 pixels corrected in %d chunks", result.path, pixels, len(chunks))
    return record


def finish_pending(result: Result) -> int:
    """Finish an interrupted save: rebuild the coarser levels above its level-0 chunks and
    clear its ``pending`` record. Returns the chunks finished (0 when none was pending)."""
    import zarr

    chunks = pending_chunks(result)
    if not chunks:
        return 0
    group = zarr.open_group(str(labels_path(result.path, CORRECTED_NAME)), mode="r+")
    try:
        _rebuild_parents(group, result.levels, chunks)
        state = dict(group.attrs.get(CORRECTIONS_KEY) or {})
        state.pop("pending", None)
        group.attrs[CORRECTIONS_KEY] = state
    except OSError as exc:
        raise OutputError(f"{result.path}: cannot finish an interrupted corrections save "
                          f"({exc.strerror or exc}); its coarse levels are stale") from exc
    log.warning("%s: finished an interrupted corrections save (%d chunks' coarser levels rebuilt)",
                result.path, len(chunks))
    return len(chunks)


# what must match for corrections to be carried from one result onto a new one of the slide:
# the pixel grid (the chunking may differ: results made before chunks grew to ~1024 px)
CARRY_KEYS = ("output_shape_px", "mpp")


def carry_refusal(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """Why corrections of a result with provenance ``old`` cannot go onto a new result
    with provenance ``new``; None when they can (same slide, same pixel grid)."""
    if old.get("slide", {}).get("fingerprint") != new.get("slide", {}).get("fingerprint"):
        return "they belong to another slide"
    differing = [k for k in CARRY_KEYS if old.get(k) != new.get(k)]
    if differing:
        return f"the new result's pixel grid differs ({', '.join(differing)})"
    return None


def carry_over(old: str | Path, new: str | Path) -> int:
    """Put the user's corrections of the result ``old`` onto the result ``new`` of the same
    slide and grid (``wsi-seg segment --overwrite``); returns the level-0 pixels carried.

    Only what the user changed moves: each level-0 pixel where ``old``'s corrected labels
    differ from its model mask takes its corrected value in ``new``'s ``labels/corrected``,
    which is ``new``'s mask everywhere else. ``new`` may be the run's ``.partial`` (this is
    done before it is marked complete, so a crash loses nothing: the old result is still in
    place). The old saves stay in the history, with ``carried_from`` naming the result.
    """
    import zarr

    old_result, new_result = Result.open(old), Result.open(new, allow_incomplete=True)
    history = corrections_history(old_result)
    _ensure_corrected(new_result)
    group = zarr.open_group(str(labels_path(new_result.path, CORRECTED_NAME)), mode="r+")
    base = group["0"]
    edits, values = _rechunked(corrected_chunks(old_result), base.chunks[-1], base.shape)
    pixels = _write_chunks(base, edits, values)
    _rebuild_parents(group, new_result.levels, set(edits))
    completed = old_result.provenance.raw.get("completed_utc")
    group.attrs[CORRECTIONS_KEY] = {"source": LABEL_NAME, "saves": history,
                              "carried_from": {"result_completed_utc": completed, "pixels": pixels,
                                               "model_sha256": old_result.provenance.raw.get("model", {}).get("sha256")}}
    log.info("%s: %d corrected level-0 pixels carried over from the result it replaces", new_result.path, pixels)
    return pixels


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or passwd (containers)
        return "unknown"
