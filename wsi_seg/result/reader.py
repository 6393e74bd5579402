"""Reading a wsi-seg result: the one reader of the format that ``wsi_seg.result.store`` writes.

A result is an OME-Zarr (NGFF 0.5, zarr v3) folder::

    slide.zarr/                root: per-class activation maps, (c, y, x) uint8 0–255
      0/ 1/ …                  2× pyramid levels
      labels/mask/0/ 1/ …      uint8 class index, 0 = background, 1..N = classes
      labels/corrected/0/ 1/ … the mask with the user's corrections (wsi_seg.result.corrections), if any
    attrs["ome"]               multiscales (scale in µm), omero channels, image-label
    attrs["wsi_seg"]           provenance; "complete" is written last

A run writes to ``<out>.partial`` and renames it when complete. ``Result.open`` refuses
anything else with one line naming the folder; ``allow_incomplete=True`` opens an
interrupted run (the napari reader shows what was written).

    >>> result = Result.open("slide.zarr")
    >>> mask = result.mask(result.pick_level(2048))   # (H, W) uint8 zarr array, lazy
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsi_seg.errors import ResultError
from wsi_seg.result.format import (
    CORRECTED_NAME,
    LABEL_NAME,
    LABELS_GROUP,
    is_partial,
    pending_corrections,
    read_provenance,
    result_name,
)


def finest_level_within(shapes: Iterable[Sequence[int]], max_px: int) -> int:
    """Index of the finest level whose longer side (of the last two axes) is at most
    ``max_px`` px, else of the coarsest. ``shapes``: a pyramid's level shapes, finest
    first; read only up to the level chosen."""
    index = -1
    for index, shape in enumerate(shapes):
        if max(shape[-2:]) <= max_px:
            return index
    if index < 0:
        raise ValueError("finest_level_within needs at least one level")
    return index












@dataclass(frozen=True)
class SlideProvenance:
    """The slide a result was computed from, as it was at the time."""

    path: Path | None
    fingerprint: str | None
    vendor: str | None
    dimensions_px: tuple[int, int] | None  # level-0 (W, H)
    mpp: float | None  # level-0 µm/px used for the run
    mpp_source: str | None


@dataclass(frozen=True)
class ModelProvenance:
    """The checkpoint a result was computed with."""

    path: str | None
    sha256: str | None
    config: dict[str, Any]


@dataclass(frozen=True)
class Provenance:
    """``attrs["wsi_seg"]`` of a result, typed; ``raw`` keeps every field as written."""

    mpp: float  # µm/px of level 0 of the result (the model's)
    class_names: tuple[str, ...]  # class i + 1 of the mask
    class_colors: tuple[tuple[int, int, int], ...]
    slide: SlideProvenance
    model: ModelProvenance
    complete: bool
    software_version: str | None = None
    format_version: int | None = None
    patch_size_px: int | None = None
    overlap_px: int | None = None
    block_px: int | None = None
    output_shape_px: tuple[int, int] | None = None
    tissue: dict[str, Any] = field(default_factory=dict)
    inference: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def parse(cls, raw: dict[str, Any], path: Path) -> Provenance:
        """Check and type ``raw``; a ResultError names ``path`` and the bad field."""
        try:
            names = tuple(str(n) for n in raw["class_names"])
            colors = tuple((int(c[0]), int(c[1]), int(c[2])) for c in raw["class_colors"])
            mpp = float(raw["mpp"])
            slide = raw.get("slide") or {}
            model = raw.get("model") or {}
            dims = slide.get("dimensions_px")
            shape = raw.get("output_shape_px")
            prov = cls(
                mpp=mpp, class_names=names, class_colors=colors,
                slide=SlideProvenance(
                    path=Path(slide["path"]) if slide.get("path") else None,
                    fingerprint=slide.get("fingerprint"),
                    vendor=slide.get("vendor"),
                    dimensions_px=(int(dims[0]), int(dims[1])) if dims else None,
                    mpp=float(slide["mpp"]) if slide.get("mpp") else None,
                    mpp_source=slide.get("mpp_source"),
                ),
                model=ModelProvenance(model.get("path"), model.get("sha256"), dict(model.get("config") or {})),
                complete=bool(raw.get("complete")),
                software_version=(raw.get("software") or {}).get("version"),
                format_version=raw.get("format_version"),
                patch_size_px=raw.get("patch_size_px"),
                overlap_px=raw.get("overlap_px"),
                block_px=raw.get("block_px"),
                output_shape_px=(int(shape[0]), int(shape[1])) if shape else None,
                tissue=dict(raw.get("tissue") or {}),
                inference=dict(raw.get("inference") or {}),
                stats=dict(raw.get("stats") or {}),
                raw=raw,
            )
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise ResultError(f"{path}: wsi_seg attributes are incomplete or malformed ({exc!r})") from exc
        if len(names) != len(colors) or not names or not mpp > 0:
            raise ResultError(f"{path}: wsi_seg attributes list {len(names)} classes, {len(colors)} colours, mpp {mpp}")
        return prov


@dataclass(frozen=True)
class Placement:
    """Where a pyramid level's pixels lie, in µm: pixel (y, x) centre = translation + scale·(y, x)."""

    scale_um: tuple[float, float]  # (y, x)
    translation_um: tuple[float, float]  # (y, x)


@dataclass(frozen=True, eq=False)
class Result:
    """A wsi-seg result opened for reading; arrays are zarr arrays read on demand."""

    path: Path
    provenance: Provenance
    complete: bool  # the run finished (and the folder is not a ``.partial``)
    levels: tuple[int, ...]  # pyramid levels present, finest first: 0, 1, …
    _group: Any = field(repr=False)

    @classmethod
    def open(cls, path: str | Path, *, allow_incomplete: bool = False) -> Result:
        """Open the result at ``path``; a ResultError (one line naming it) when it is not one.

        An interrupted run (``complete`` false, or a ``*.partial`` folder) is refused
        unless ``allow_incomplete``.
        """
        import zarr

        p = Path(str(path).rstrip("/\\"))
        if not is_partial(p):
            from wsi_seg.result.ownership import restore_replaced_now

            restore_replaced_now(p)  # an --overwrite that crashed mid-swap left the old result beside it
        raw = read_provenance(p) if p.is_dir() else None
        if raw is None:
            what = "no such folder" if not p.exists() else "no 'wsi_seg' attributes in zarr.json"
            raise ResultError(f"{p}: not a wsi-seg result ({what}); expected the output of `wsi-seg segment`")
        prov = Provenance.parse(raw, p)
        complete = prov.complete and not is_partial(p)
        if not complete and not allow_incomplete:
            raise ResultError(
                f"{p}: result is incomplete (segmentation was interrupted); rerun the same "
                "`wsi-seg segment` command to finish it"
            )
        try:
            group = zarr.open_group(str(p), mode="r")
            labels = group[LABELS_GROUP][LABEL_NAME]
            levels = _level_paths(labels)
            acts, mask = group["0"], labels["0"]
        except (KeyError, OSError, ValueError, TypeError) as exc:
            raise ResultError(f"{p}: cannot read the result's arrays ({exc!r}); expected labels/{LABEL_NAME}/0 and 0") from exc
        n = len(prov.class_names)
        if acts.ndim != 3 or acts.shape[0] != n or mask.ndim != 2 or acts.shape[1:] != mask.shape:
            raise ResultError(f"{p}: arrays of shape {acts.shape} and {mask.shape} do not match {n} classes")
        result = cls(p, prov, complete, tuple(levels), group)
        if pending_corrections(p):  # a corrections save was cut short: its coarse levels lag
            from wsi_seg.result.corrections import finish_pending

            finish_pending(result)
        return result

    # -- what it is ------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The folder name without ``.partial`` and ``.zarr``: ``slide.zarr`` → ``slide``."""
        return result_name(self.path)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of mask values 1..N (0 is background)."""
        return self.provenance.class_names

    @property
    def class_colors(self) -> tuple[tuple[int, int, int], ...]:
        """RGB 0–255 of mask values 1..N."""
        return self.provenance.class_colors

    @property
    def mpp(self) -> float:
        """µm/px of level 0."""
        return self.provenance.mpp

    def level_mpp(self, level: int) -> float:
        """µm/px of pyramid ``level`` (each level halves the one before)."""
        return self.mpp * 2**level

    def level_shape(self, level: int) -> tuple[int, int]:
        """(H, W) px of ``level``."""
        return tuple(self.mask(level).shape)  # type: ignore[return-value]

    # -- arrays ----------------------------------------------------------------------
    @property
    def label_names(self) -> tuple[str, ...]:
        """The label images under ``labels/``: ``mask``, and ``corrected`` once corrections were saved."""
        group = self._group[LABELS_GROUP]
        return tuple(n for n in (LABEL_NAME, CORRECTED_NAME) if n in group)

    @property
    def current_labels(self) -> str:
        """The label image that holds the answer: ``corrected`` when there is one, else ``mask``."""
        return CORRECTED_NAME if CORRECTED_NAME in self.label_names else LABEL_NAME

    def mask(self, level: int = 0, labels: str = LABEL_NAME) -> Any:
        """(H, W) uint8 class index of ``level`` (a zarr array; slice it to read) of the
        label image ``labels`` (``mask``, or ``corrected``: see :attr:`current_labels`)."""
        self._check_level(level)
        if labels not in self.label_names:
            raise ResultError(f"{self.path}: no label image labels/{labels}; it has {', '.join(self.label_names)}")
        return self._group[LABELS_GROUP][labels][str(level)]

    def activations(self, level: int = 0) -> Any:
        """(C, H, W) uint8 activation maps of ``level``, 0–255 (a zarr array)."""
        self._check_level(level)
        return self._group[str(level)]

    def _check_level(self, level: int) -> None:
        if level not in self.levels:
            have = f"levels {self.levels[0]}–{self.levels[-1]}" if self.levels else "no levels"
            raise ResultError(f"{self.path}: no mask level {level}; the result has {have}")

    # -- choosing a level ------------------------------------------------------------
    def pick_level(self, max_px: int) -> int:
        """The finest level whose longer side is at most ``max_px`` px, else the coarsest."""
        return self.levels[finest_level_within((self.level_shape(level) for level in self.levels), max_px)]

    def level_for_mpp(self, mpp: float) -> int:
        """The coarsest level at least as fine as ``mpp`` µm/px (level 0 if none is)."""
        fine_enough = [lv for lv in self.levels if self.level_mpp(lv) <= mpp * 1.001]
        return max(fine_enough, default=self.levels[0])

    def placement(self, labels: bool = True) -> Placement:
        """Level 0's NGFF scale and translation of the mask (or the activations), in µm.

        Read from the OME multiscales; an unfinished run has none yet: µm/px, no shift.
        """
        group = self._group[LABELS_GROUP][LABEL_NAME] if labels else self._group
        scale, shift = [self.mpp, self.mpp], [0.0, 0.0]
        multiscales = group.attrs.get("ome", {}).get("multiscales") or group.attrs.get("multiscales")
        if multiscales:
            for t in multiscales[0]["datasets"][0].get("coordinateTransformations", []):
                if t.get("type") == "scale":
                    scale = t["scale"][-2:]
                elif t.get("type") == "translation":
                    shift = t["translation"][-2:]
        return Placement((float(scale[0]), float(scale[1])), (float(shift[0]), float(shift[1])))


def _level_paths(group: Any) -> list[int]:
    """Levels of a multiscale group: from its OME metadata, else 0, 1, … while present."""
    multiscales = group.attrs.get("ome", {}).get("multiscales")
    if multiscales:
        return [int(d["path"]) for d in multiscales[0]["datasets"]]
    levels: list[int] = []
    while str(len(levels)) in group:  # an unfinished run has no OME metadata yet
        levels.append(len(levels))
    return levels
