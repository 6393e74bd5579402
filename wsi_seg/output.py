"""The result store: an OME-Zarr (NGFF 0.5, zarr v3) written block by block.

The layout is in ``wsi_seg.result``, which reads it. A run writes to ``<out>.partial`` and renames it on success; ``.wsi_seg_progress``
inside it lists finished blocks so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from wsi_seg.errors import OutputError
from wsi_seg.pyramid import level_shapes
from wsi_seg.result import LABEL_NAME, PROVENANCE_KEY, is_complete, partial_path, read_provenance  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PROGRESS_FILE = ".wsi_seg_progress"


def _compressor() -> Any:
    import zarr

    return zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")  # level 5: 1.5× slower, 1 % smaller


class ResultStore:
    """Writes one segmentation result; see the module docstring for the layout."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._progress = None
        self._levels: dict[int, tuple[Any, Any]] = {}

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
        """A fresh store at ``root`` (removed first if it exists)."""
        import zarr

        if root.exists():
            shutil.rmtree(root)
        try:
            group = zarr.open_group(str(root), mode="w", zarr_format=3)
            h, w = shape_hw
            group.create_array(
                "0", shape=(num_classes, h, w), dtype="uint8", chunks=(1, chunk_px, chunk_px),
                compressors=_compressor(), fill_value=0, dimension_names=("c", "y", "x"),
            )
            labels = group.create_group("labels").create_group(LABEL_NAME)
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
    def _arrays(self) -> tuple[Any, Any]:
        import zarr

        group = zarr.open_group(str(self.root), mode="r+")
        return group["0"], group["labels"][LABEL_NAME]["0"]

    def open_for_writing(self) -> None:
        self._act, self._mask = self._arrays()
        self._progress = open(self.root / PROGRESS_FILE, "a", encoding="utf-8")

    def write_block(self, index: tuple[int, int], y0: int, x0: int, activations: np.ndarray, mask: np.ndarray) -> None:
        """Write one chunk-aligned block, then record it as done."""
        h, w = mask.shape
        try:
            self._act[:, y0 : y0 + h, x0 : x0 + w] = activations
            self._mask[y0 : y0 + h, x0 : x0 + w] = mask
            self._progress.write(f"{index[0]},{index[1]}\n")
            self._progress.flush()
        except OSError as exc:
            raise OutputError(f"{self.root}: write failed ({exc.strerror or exc})") from exc

    def close(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    # -- pyramid and metadata -------------------------------------------------
    def create_levels(self, shapes: list[tuple[int, int]]) -> None:
        """Empty arrays for pyramid levels 1… of (H, W) ``shapes[1:]``, chunked like level 0."""
        import zarr

        group = zarr.open_group(str(self.root), mode="r+")
        label_group = group["labels"][LABEL_NAME]
        c, chunk = group["0"].shape[0], group["0"].chunks[-1]
        self._levels = {}
        for level, (h, w) in enumerate(shapes[1:], start=1):
            act = group.create_array(
                str(level), shape=(c, h, w), dtype="uint8", chunks=(1, chunk, chunk),
                compressors=_compressor(), fill_value=0, dimension_names=("c", "y", "x"), overwrite=True,
            )
            mask = label_group.create_array(
                str(level), shape=(h, w), dtype="uint8", chunks=(chunk, chunk),
                compressors=_compressor(), fill_value=0, dimension_names=("y", "x"), overwrite=True,
            )
            self._levels[level] = (act, mask)

    def write_level_chunk(self, level: int, y0: int, x0: int, activations: np.ndarray, mask: np.ndarray) -> None:
        """Write one whole chunk of pyramid level ``level`` (see :meth:`create_levels`)."""
        act, msk = self._levels[level]
        h, w = mask.shape
        try:
            act[:, y0 : y0 + h, x0 : x0 + w] = activations
            msk[y0 : y0 + h, x0 : x0 + w] = mask
        except OSError as exc:
            raise OutputError(f"{self.root}: write failed ({exc.strerror or exc})") from exc

    def build_pyramid(self, min_size_px: int, progress: bool = True) -> int:
        """Add 2× levels (see ``wsi_seg.pyramid``) from the finished level 0, for runs
        whose pyramid was not built while they ran (resumed runs); returns the level count."""
        import dask.array as da
        import zarr
        from tqdm.auto import tqdm

        group = zarr.open_group(str(self.root), mode="r+")
        label_group = group["labels"][LABEL_NAME]
        chunk = group["0"].chunks[-1]
        shapes = level_shapes(group["0"].shape[1:], min_size_px)
        self.create_levels(shapes)
        bar = tqdm(range(1, len(shapes)), desc="pyramid", unit="level", disable=not progress, leave=False)
        for level in bar:
            src_act = da.from_zarr(group[str(level - 1)], chunks=(1, 2 * chunk, 2 * chunk))
            src_mask = da.from_zarr(label_group[str(level - 1)], chunks=(2 * chunk, 2 * chunk))
            hh, ww = shapes[level]
            # rounded mean of 2×2 pixels in integers, as pyramid.halve
            act = da.coarsen(np.sum, src_act[:, : 2 * hh, : 2 * ww].astype(np.uint16), {1: 2, 2: 2})
            act = ((act + 2) // 4).astype(np.uint8)
            mask = src_mask[: 2 * hh : 2, : 2 * ww : 2]
            da.store([act.rechunk((1, chunk, chunk)), mask.rechunk((chunk, chunk))], list(self._levels[level]), lock=False)
        return len(shapes)

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
        labels = group["labels"]
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
        """Mark complete (last write), drop the progress file, rename into place."""
        self.close()
        (self.root / PROGRESS_FILE).unlink(missing_ok=True)
        self.update_provenance(complete=True)
        if final.exists():
            shutil.rmtree(final)
        os.replace(self.root, final)
        self.root = final

