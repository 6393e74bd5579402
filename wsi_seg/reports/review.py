"""Where to look: the regions of a result most worth a correction, ranked by uncertain tissue area.

``wsi-seg review RESULT`` splits the result into squares of ``region_patches`` model
patches (the scale of napari's "Edit visible region"), measures in each the tissue area
whose top two class probabilities differ by less than ``margin``
(:mod:`wsi_seg.result.uncertainty`), and lists the ``top`` squares with the most of it,
largest first. Squares holding a pixel the user already corrected (``labels/corrected``
differs from ``labels/mask``) drop out. It writes::

    OUT/review.csv     rank, level-0 px and µm box, uncertain and tissue areas, mean uncertainty, main class
    OUT/review.html    the same, with thumbnails: slide | labels | uncertainty

Measured on a coarse pyramid level (a region spans ≥ 32 of its pixels), so a whole slide
takes seconds; the Corrections widget in napari walks the same list ("next region").
"""

from __future__ import annotations

import csv
import html
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsi_seg.errors import OutputError, SlideError
from wsi_seg.reports.review_options import ReviewOptions
from wsi_seg.result.reader import Result
from wsi_seg.result.uncertainty import uncertainty_at

log = logging.getLogger(__name__)

CSV_NAME = "review.csv"
HTML_NAME = "review.html"
MIN_REGION_CELLS = 32  # a region spans at least this many pixels of the level it is measured on


@dataclass(frozen=True)
class Region:
    """One square of the result, in level-0 px of the result (y0, x0, side) and µm."""

    rank: int
    y0: int
    x0: int
    side: int
    y_um: float
    x_um: float
    uncertain_um2: float
    tissue_um2: float
    mean_uncertainty: float  # over its tissue, 0–1
    main_class: str

    @property
    def uncertain_fraction(self) -> float:
        return self.uncertain_um2 / self.tissue_um2 if self.tissue_um2 else 0.0


def region_side(result: Result, options: ReviewOptions) -> int:
    """Side of a review region in level-0 px: ``region_patches`` model patches."""
    patch = int(result.provenance.patch_size_px or result.provenance.model.config.get("patch_size_px") or 224)
    return options.region_patches * patch


def corrected_cells(result: Result, side: int) -> set[tuple[int, int]]:
    """(row, col) of the regions holding a pixel the corrections changed (level 0, only the
    chunks the saves recorded are read: ``corrections.corrected_chunks``)."""
    from wsi_seg.result.corrections import corrected_chunks

    cells: set[tuple[int, int]] = set()
    for chunk in corrected_chunks(result):
        ys, xs = np.nonzero(chunk.changed)
        cells |= {(int(y) // side, int(x) // side) for y, x in zip(ys + chunk.y0, xs + chunk.x0)}
    return cells


def rank_regions(result: Result, options: ReviewOptions = ReviewOptions()) -> list[Region]:
    """The ``options.top`` regions with the most uncertain tissue, not yet corrected, largest first."""
    options.check()
    side = region_side(result, options)
    level = max((lv for lv in result.levels if side / 2**lv >= MIN_REGION_CELLS), default=result.levels[0])
    f = 2**level
    unc = uncertainty_at(result, level)
    labels = np.asarray(result.mask(level, result.current_labels)[:])
    tissue = labels > 0
    uncertain = tissue & (unc > 1.0 - options.margin)
    h0, w0 = result.level_shape(0)
    rows, cols = math.ceil(h0 / side), math.ceil(w0 / side)
    done = corrected_cells(result, side)
    px_um2 = result.level_mpp(level) ** 2
    names = result.class_names
    found = []
    for r in range(rows):
        for c in range(cols):
            if (r, c) in done:
                continue
            window = (slice(r * side // f, (r + 1) * side // f), slice(c * side // f, (c + 1) * side // f))
            n_tissue = int(tissue[window].sum())
            n_unc = int(uncertain[window].sum())
            if n_unc == 0:
                continue
            counts = np.bincount(labels[window].ravel(), minlength=len(names) + 1)[1 : len(names) + 1]
            found.append((n_unc, n_tissue, float(unc[window][tissue[window]].mean()), r, c, names[int(counts.argmax())]))
    found.sort(key=lambda t: (-t[0], t[3], t[4]))
    mpp = result.mpp
    return [Region(rank=k + 1, y0=r * side, x0=c * side, side=side, y_um=r * side * mpp, x_um=c * side * mpp,
                   uncertain_um2=n_unc * px_um2, tissue_um2=n_tissue * px_um2, mean_uncertainty=mean_unc,
                   main_class=main)
            for k, (n_unc, n_tissue, mean_unc, r, c, main) in enumerate(found[: options.top])]


def write_csv(path: Path, regions: list[Region]) -> None:
    """``review.csv``: one row per region, ranked."""
    fields = ["rank", "y0_px", "x0_px", "side_px", "y_um", "x_um", "uncertain_mm2", "tissue_mm2",
              "uncertain_fraction", "mean_uncertainty", "main_class"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(fields)
        for r in regions:
            writer.writerow([r.rank, r.y0, r.x0, r.side, f"{r.y_um:.1f}", f"{r.x_um:.1f}", f"{r.uncertain_um2 / 1e6:.6f}",
                             f"{r.tissue_um2 / 1e6:.6f}", f"{r.uncertain_fraction:.4f}", f"{r.mean_uncertainty:.4f}",
                             r.main_class])


def read_csv(path: str | Path) -> list[Region]:
    """The regions of a ``review.csv`` (what the napari widget walks)."""
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out.append(Region(int(row["rank"]), int(row["y0_px"]), int(row["x0_px"]), int(row["side_px"]),
                              float(row["y_um"]), float(row["x_um"]), float(row["uncertain_mm2"]) * 1e6,
                              float(row["tissue_mm2"]) * 1e6, float(row["mean_uncertainty"]), row["main_class"]))
    return out


def _thumbnails(result: Result, region: Region, px: int, slide_path: Path | None) -> list[tuple[str, np.ndarray]]:
    """(caption, RGB) of one region: the slide (when readable), its labels, its uncertainty."""
    from wsi_seg.reports.slide_report import _resize, blend, colorize

    level = result.level_for_mpp(result.mpp * region.side / px)
    f = 2**level
    window = (slice(region.y0 // f, (region.y0 + region.side) // f), slice(region.x0 // f, (region.x0 + region.side) // f))
    labels = np.asarray(result.mask(level, result.current_labels)[window])
    unc = uncertainty_at(result, level, window)
    size = (px, px)
    heat = (np.stack([unc, np.zeros_like(unc), 1.0 - unc], axis=-1) * 255).astype(np.uint8)
    heat[labels == 0] = 245
    out = []
    if slide_path is not None:
        from wsi_seg.slide.slide import Slide

        prov = result.provenance
        scale = prov.slide.mpp / result.mpp if prov.slide.mpp else 1.0
        box = (region.x0 / scale, region.y0 / scale, (region.x0 + region.side) / scale, (region.y0 + region.side) / scale)
        with Slide(slide_path, mpp=prov.slide.mpp) as slide:
            rgb = slide.read_at_mpp(box, size)
        out += [("slide", rgb), ("labels", blend(rgb, _resize(labels, size, nearest=True), list(result.class_colors)))]
    else:
        out.append(("labels", colorize(_resize(labels, size, nearest=True), list(result.class_colors))))
    out.append(("uncertainty", _resize(heat, size, nearest=True)))
    return out


def render_html(result: Result, regions: list[Region], options: ReviewOptions, slide_path: Path | None,
                note: str = "") -> str:
    """``review.html``: the ranked table with thumbnails (inline PNGs, one self-contained file)."""
    from wsi_seg.reports.slide_report import png_data_uri

    rows = []
    for r in regions:
        thumbs = "".join(f"<figure><img src='{png_data_uri(rgb)}' width='{options.thumb_px}'>"
                         f"<figcaption>{caption}</figcaption></figure>"
                         for caption, rgb in _thumbnails(result, r, options.thumb_px, slide_path))
        rows.append(
            f"<tr><td class='n'>{r.rank}</td><td>x {r.x_um:,.0f} µm, y {r.y_um:,.0f} µm<br>"
            f"<small>level-0 px ({r.x0}, {r.y0}), {r.side} px</small></td>"
            f"<td class='n'>{r.uncertain_um2 / 1e6:.4f}</td><td class='n'>{r.uncertain_fraction:.0%}</td>"
            f"<td class='n'>{r.mean_uncertainty:.2f}</td><td>{html.escape(r.main_class)}</td><td>{thumbs}</td></tr>")
    style = ("body{font-family:sans-serif;margin:1.5em;color:#222} table{border-collapse:collapse} "
             "td,th{border-bottom:1px solid #ddd;padding:4px 8px;vertical-align:top;text-align:left} "
             ".n{text-align:right} figure{display:inline-block;margin:0 4px} figcaption{font-size:80%;color:#666}")
    title = html.escape(f"{result.name}: regions worth a look")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style></head>"
            f"<body><h1>{title}</h1><p>Squares of {regions[0].side if regions else region_side(result, options)} px "
            f"({options.region_patches} model patches) ranked by their tissue area whose top two class probabilities "
            f"differ by less than {options.margin:g}; squares already corrected are left out. "
            f"Open them in napari (wsi-seg view, Corrections: next region).{html.escape(note)}</p>"
            "<table><tr><th>#</th><th>where</th><th class='n'>uncertain mm²</th><th class='n'>of tissue</th>"
            "<th class='n'>mean uncertainty</th><th>main class</th><th>slide | labels | uncertainty (red: unsure)</th></tr>"
            + "".join(rows) + "</table></body></html>\n")


@dataclass(frozen=True)
class Review:
    """What ``wsi-seg review`` wrote."""

    regions: list[Region]
    csv: Path
    html: Path


def default_review_dir(result: Path) -> Path:
    """``<result>_review/`` beside the result."""
    from wsi_seg.result.format import result_name

    return result.with_name(f"{result_name(result)}_review")


def write_review(result_path: str | Path, out: str | Path | None = None, options: ReviewOptions = ReviewOptions(),
                 slide: str | Path | None = None) -> Review:
    """Rank the regions of a result and write ``review.csv`` and ``review.html`` into ``out``."""
    from wsi_seg.exports.patches import check_slide

    result = Result.open(result_path)
    regions = rank_regions(result, options)
    out = Path(out) if out is not None else default_review_dir(result.path)
    note = ""
    try:
        slide_path: Path | None = check_slide(result, slide)
    except SlideError as exc:
        slide_path, note = None, f" (no slide thumbnails: {exc})"
        log.warning("%s", exc)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / CSV_NAME, regions)
        (out / HTML_NAME).write_text(render_html(result, regions, options, slide_path, note), encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"{out}: cannot write the review ({exc.strerror or exc})") from exc
    return Review(regions, out / CSV_NAME, out / HTML_NAME)

