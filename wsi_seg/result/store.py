"""The result store: an OME-Zarr (NGFF 0.5, zarr v3) written block by block.

The layout is in ``wsi_seg.result.reader``, which reads it. A run writes to ``<out>.partial`` and renames it on success; ``.wsi_seg_progress``
inside it lists finished blocks so an interrupted run resumes where it stopped.
``wsi_seg.result.ownership`` decides what may be replaced; ``wsi_seg.lock`` keeps one run per output.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from wsi_seg.errors import OutputError
from wsi_seg.result.format import (
    FORMAT_VERSION,
    LABEL_NAME,
    LABELS_GROUP,
    PROGRESS_FILE,
    PROVENANCE_KEY,
)
from wsi_seg.result.ownership import clear_partial, swap_into_place
from wsi_seg.result.pyramid import StreamingPyramid, halve_levels, level_shapes

log = logging.getLogger(__name__)



def _compressor() -> Any:
    """zstd level 1 with bit shuffling: the demo model's result is as small as at level 3
    (5.61 vs 5.75 MB) for 0.6–0.7× the CPU (``benchmarks/write_cost.py``)."""
    import zarr

    return zarr.codecs.BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")


# Every chunk written, without zarr's check for an all-zero chunk (to skip it), which took
# a sixth to a quarter of a block's write time; blocks come from tissue only, so such
# chunks are rare. A runtime setting, not stored.
_WRITE_CONFIG = {"write_empty_chunks": True}


def _activation_chunks(num_classes: int, chunk_px: int) -> dict[str, tuple[int, int, int]]:
    """A block's activations of every class in one file (a zarr v3 shard) made of one
    chunk per class: a block is written as two files (activations, mask) instead of
    classes + 1, which cut the zarr CPU per block (``benchmarks/write_cost.py``) and the
    files per result ``classes``-fold; a reader of one class still reads only its chunk."""
    return {"chunks": (1, chunk_px, chunk_px), "shards": (num_classes, chunk_px, chunk_px)}


def _writable(array: Any) -> Any:
    """``array`` opened as the store writes it (``_WRITE_CONFIG``)."""
    return array.with_config(_WRITE_CONFIG)


class ResultStore:
    """Writes one segmentation result and its pyramid; see ``wsi_seg.result.reader`` for the layout.

    Callers write level 0 only, one chunk-aligned block per chunk::

        store = ResultStore.create(partial, shape_hw, num_classes, chunk_px, provenance)
        store.open_for_writing(expected=chunk_indices)   # resumed: ResultStore(partial)
        store.write_block(index, y0, x0, activations, mask)  # … for each block
        store.finish(out, stats)                          # pyramid, metadata, complete, rename

    The store builds the levels above (``wsi_seg.result.pyramid``): while blocks arrive when it
    knows which will come (streamed, even chunk sizes; a resumed run first replays the
    blocks the interrupted one finished), else at :meth:`finish` from level 0.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._progress = None
        self._pyramid: StreamingPyramid | None = None
        self._levels: dict[int, tuple[Any, Any]] = {}
        self._recording = threading.Lock()

    # -- creation / reopening -------------------------------------------------
    @classmethod
    def create(
        cls,
        root: Path,
        shape_hw: tuple[int, int],
        num_classes: int,
        chunk_px: int,
        provenance: dict[str, Any],
    ) -> ResultStore:
        """A fresh store at ``root``, which must be new or our own ``.partial``: it is
        emptied first, except for the lock file of the run that holds it."""
        import zarr

        try:
            if root.exists():
                clear_partial(root)
            group = zarr.open_group(str(root), mode="a", zarr_format=3)  # emptied above
            h, w = shape_hw
            group.create_array(
                "0", shape=(num_classes, h, w), dtype="uint8", **_activation_chunks(num_classes, chunk_px),
                compressors=_compressor(), fill_value=0, dimension_names=("c", "y", "x"),
            )
            labels = group.create_group(LABELS_GROUP).create_group(LABEL_NAME)
            labels.create_array(
                "0", shape=(h, w), dtype="uint8", chunks=(chunk_px, chunk_px),
                compressors=_compressor(), fill_value=0, dimension_names=("y", "x"),
            )
            group.attrs[PROVENANCE_KEY] = {**provenance, "format_version": FORMAT_VERSION, "complete": False}
        except OSError as exc:
            raise OutputError(f"{root}: cannot create output ({exc.strerror or exc})") from exc
        return cls(root)

    def done_blocks(self) -> set[tuple[int, int]]:
        """Blocks recorded as written by an earlier, interrupted run."""
        path = self.root / PROGRESS_FILE
        if not path.exists():
            return set()
        done = set()
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split(",")
            if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
                done.add((int(parts[0]), int(parts[1])))
        return done

    # -- writing ---------------------------------------------------------------
    def _group(self) -> Any:
        import zarr

        return zarr.open_group(str(self.root), mode="r+")

    def open_for_writing(self, expected: Iterable[tuple[int, int]] | None = None) -> None:
        """Open level 0 for :meth:`write_block`.

        ``expected``: the level-0 chunk indices (row, col) written by the time the run
        ends, those of an interrupted run included. Given (and with an even chunk size),
        the pyramid grows while blocks are written: the blocks already done are replayed
        from level 0 first. Without it, :meth:`finish` builds the pyramid from level 0.
        """
        group = self._group()
        self._act, self._mask = _writable(group["0"]), _writable(group[LABELS_GROUP][LABEL_NAME]["0"])
        chunk = self._mask.chunks[0]
        self._pyramid = None
        if expected is not None and chunk % 2 == 0:
            expected = set(expected)
            shapes = level_shapes(self._mask.shape, chunk)
            self._create_levels(shapes)
            self._pyramid = StreamingPyramid(shapes, chunk, self._act.shape[0], expected, self._write_level_chunk)
            for i, j in sorted(self.done_blocks() & expected):
                y, x = i * chunk, j * chunk
                self._pyramid.add((i, j), self._act[:, y : y + chunk, x : x + chunk], self._mask[y : y + chunk, x : x + chunk])
        self._progress = open(self.root / PROGRESS_FILE, "a", encoding="utf-8")

    def write_block(self, index: tuple[int, int], y0: int, x0: int, activations: np.ndarray, mask: np.ndarray) -> None:
        """Write level-0 chunk ``index`` (its whole extent), record it as done, feed the pyramid.
        Threads may write different blocks at once."""
        h, w = mask.shape
        try:
            self._act[:, y0 : y0 + h, x0 : x0 + w] = activations
            self._mask[y0 : y0 + h, x0 : x0 + w] = mask
            with self._recording:  # one block at a time from here: the record and the open parents
                self._progress.write(f"{index[0]},{index[1]}\n")
                self._progress.flush()
                if self._pyramid is not None:
                    self._pyramid.add(index, activations, mask)
        except OSError as exc:
            raise OutputError(f"{self.root}: write failed ({exc.strerror or exc})") from exc

    def close(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    # -- pyramid and metadata -------------------------------------------------
    def _create_levels(self, shapes: list[tuple[int, int]]) -> None:
        """Empty arrays for pyramid levels 1… of (H, W) ``shapes[1:]``, chunked like level 0."""
        group = self._group()
        label_group = group[LABELS_GROUP][LABEL_NAME]
        c, chunk = group["0"].shape[0], group["0"].chunks[-1]
        self._levels = {0: (_writable(group["0"]), _writable(label_group["0"]))}
        for level, (h, w) in enumerate(shapes[1:], start=1):
            act = group.create_array(
                str(level), shape=(c, h, w), dtype="uint8", **_activation_chunks(c, chunk),
                compressors=_compressor(), fill_value=0, dimension_names=("c", "y", "x"), overwrite=True,
            )
            mask = label_group.create_array(
                str(level), shape=(h, w), dtype="uint8", chunks=(chunk, chunk),
                compressors=_compressor(), fill_value=0, dimension_names=("y", "x"), overwrite=True,
            )
            self._levels[level] = (_writable(act), _writable(mask))

    def _write_level_chunk(self, level: int, y0: int, x0: int, activations: np.ndarray, mask: np.ndarray) -> None:
        act, msk = self._levels[level]
        h, w = mask.shape
        try:
            act[:, y0 : y0 + h, x0 : x0 + w] = activations
            msk[y0 : y0 + h, x0 : x0 + w] = mask
        except OSError as exc:
            raise OutputError(f"{self.root}: write failed ({exc.strerror or exc})") from exc

    def build_pyramid(self, progress: bool = True) -> int:
        """Levels 1… halved from the finished level 0 (``wsi_seg.result.pyramid.halve_levels``);
        returns the level count. :meth:`finish` calls it when nothing was streamed."""
        from tqdm.auto import tqdm

        group = self._group()
        chunk = group["0"].chunks[-1]
        shapes = level_shapes(group["0"].shape[1:], chunk)
        self._create_levels(shapes)
        with tqdm(total=len(shapes) - 1, desc="pyramid", unit="level", disable=not progress, leave=False) as bar:
            halve_levels([self._levels[lv] for lv in range(len(shapes))], chunk, self._write_level_chunk,
                         on_level=lambda _: bar.update())
        return len(shapes)

    def finish(self, final: Path, stats: dict[str, Any] | None = None, started: float | None = None,
               progress: bool = True, before_complete: Callable[[Path], Any] | None = None,
               **provenance: Any) -> int:
        """Complete the result and move it to ``final``; returns the pyramid's level count.

        The pyramid is finished (streamed, or built from level 0 when blocks came without
        ``expected`` or an odd chunk size), the NGFF metadata written from the
        provenance's µm/px and classes, ``stats`` (with ``levels``, and ``seconds`` since
        ``started``, a ``time.perf_counter()`` value) and the other ``provenance`` fields
        added to the provenance; ``before_complete(root)`` (corrections carried over from
        the result being replaced) runs then, before ``complete`` and the swap.
        """
        self.close()
        if self._pyramid is not None and self._pyramid.pending == 0:
            n_levels = self._pyramid.levels
        else:
            n_levels = self.build_pyramid(progress)
        prov = self._group().attrs[PROVENANCE_KEY]
        self.write_ome_metadata(n_levels, prov["mpp"], prov["class_names"], [tuple(c) for c in prov["class_colors"]])
        stats = {**(stats or {}), "levels": n_levels}
        if started is not None:
            stats["seconds"] = round(time.perf_counter() - started, 3)
        self.update_provenance(**provenance, stats=stats)
        if before_complete is not None:
            before_complete(self.root)
        self.finalize(final)
        return n_levels

    def write_ome_metadata(
        self,
        n_levels: int,
        mpp: float,
        class_names: Iterable[str],
        class_colors: Iterable[tuple[int, int, int]],
    ) -> None:
        """NGFF multiscales (µm scales), omero channels and image-label colours/names."""
        import zarr
        from ome_zarr.writer import write_label_metadata, write_multiscales_metadata

        names, colors = list(class_names), [tuple(c) for c in class_colors]
        group = zarr.open_group(str(self.root), mode="r+")

        def datasets(channel_axis: bool) -> list[dict[str, Any]]:
            out = []
            for level in range(n_levels):
                s = mpp * 2**level
                scale = [1.0, s, s] if channel_axis else [s, s]
                shift = (s - mpp) / 2  # pixel centres of coarser levels move by half a pixel
                translation = [0.0, shift, shift] if channel_axis else [shift, shift]
                out.append({
                    "path": str(level),
                    "coordinateTransformations": [
                        {"type": "scale", "scale": scale},
                        {"type": "translation", "translation": translation},
                    ],
                })
            return out

        space = [{"name": "y", "type": "space", "unit": "micrometer"}, {"name": "x", "type": "space", "unit": "micrometer"}]
        omero = {
            "channels": [
                {
                    "label": n, "color": "%02X%02X%02X" % c, "active": False,
                    "window": {"min": 0, "max": 255, "start": 0, "end": 255},
                }
                for n, c in zip(names, colors)
            ]
        }
        write_multiscales_metadata(
            group, datasets(True), axes=[{"name": "c", "type": "channel"}, *space],
            name="activations", metadata={"omero": omero},
        )
        labels = group[LABELS_GROUP]
        write_multiscales_metadata(labels[LABEL_NAME], datasets(False), axes=space, name=LABEL_NAME)
        write_label_metadata(
            labels, LABEL_NAME,
            colors=[{"label-value": 0, "rgba": [0, 0, 0, 0]}]
            + [{"label-value": i + 1, "rgba": [*c, 255]} for i, c in enumerate(colors)],
            properties=[{"label-value": 0, "class": "background"}]
            + [{"label-value": i + 1, "class": n} for i, n in enumerate(names)],
            source={"image": "../../"},
        )

    def update_provenance(self, **fields: Any) -> None:
        import zarr

        group = zarr.open_group(str(self.root), mode="r+")
        group.attrs[PROVENANCE_KEY] = {**group.attrs[PROVENANCE_KEY], **fields}

    def finalize(self, final: Path) -> None:
        """Mark complete, swap into place (an old result of ours at ``final`` is moved to
        ``final.replaced`` and removed only once the new one is there), drop the progress
        file. Marked before the swap, so a crash between the two renames leaves a complete
        new result in ``.partial`` (a rerun moves it into place) and the old one in
        ``.replaced``, which the next command restores (``ownership.restore_replaced``). A
        ``.partial`` is never read as a result, complete or not."""
        from datetime import datetime, timezone

        self.close()
        self.update_provenance(complete=True, completed_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        swap_into_place(self.root, final)
        self.root = final
        # kept until now: a complete .partial a crash left before the swap resumes with every block done
        (final / PROGRESS_FILE).unlink(missing_ok=True)

