"""The slide report: what a result says about a slide, as one picture (PNG) or page (HTML).

Panels: the slide thumbnail | the class mask blended over it | the ground truth (when
one is known, e.g. the demo slide's ``<stem>_mask.png``). Below them the class legend
with colours, each class's area in mm² and % of tissue, counted on the label pyramid
(:mod:`wsi_seg.reports.areas`, nothing re-segmented), and the provenance in one line.
``wsi-seg report``, ``segment --preview`` and ``demo`` all write this figure.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from wsi_seg.errors import ConfigError, SlideError
from wsi_seg.reports.areas import ClassArea, class_areas, tissue_area_um2
from wsi_seg.result.format import CORRECTED_NAME
from wsi_seg.result.reader import Result
from wsi_seg.slide.slide import Slide

log = logging.getLogger(__name__)

PANEL_PX = 480  # longer side of each panel
OVERLAY_ALPHA = 0.45
REPORT_SUFFIXES = (".png", ".html")
_BG = (255, 255, 255)
_INK = (30, 30, 30)
_MUTED = (110, 110, 110)
_MASK_BG = (245, 245, 245)  # where a panel shows no slide: light grey, not glass-white


@dataclass
class SlideReport:
    """Everything a report shows; rendered by :func:`render_png` and :func:`render_html`."""

    title: str
    panels: list[tuple[str, np.ndarray]]  # (caption, (H, W, 3) uint8)
    areas: list[ClassArea]
    provenance: str  # one line
    notes: list[str] = field(default_factory=list)

    @property
    def tissue_um2(self) -> float:
        return tissue_area_um2(self.areas)


def palette(colors: list[tuple[int, int, int]]) -> np.ndarray:
    """(256, 3) float32 lookup: label i + 1 → colors[i], 0 and unknown labels → black."""
    lut = np.zeros((256, 3), np.float32)
    for i, color in enumerate(colors):
        lut[i + 1] = color
    return lut


def blend(rgb: np.ndarray, mask: np.ndarray, colors: list[tuple[int, int, int]], alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """(H, W, 3) uint8: class colours blended over ``rgb`` where ``mask`` is not background."""
    colored = palette(colors)[mask]
    out = np.where((mask > 0)[..., None], (1 - alpha) * rgb.astype(np.float32) + alpha * colored, rgb)
    return out.clip(0, 255).astype(np.uint8)


def colorize(mask: np.ndarray, colors: list[tuple[int, int, int]]) -> np.ndarray:
    """(H, W, 3) uint8: class colours on light grey."""
    rgb = np.empty((*mask.shape, 3), np.uint8)
    rgb[:] = _MASK_BG
    return blend(rgb, mask, colors, alpha=1.0)


def _resize(rgb: np.ndarray, size_wh: tuple[int, int], nearest: bool = False) -> np.ndarray:
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(rgb).resize(size_wh, method))


def _panel_size(shape_hw: tuple[int, int], panel_px: int) -> tuple[int, int]:
    """(W, H) of a panel showing an image of ``shape_hw``, longer side ``panel_px``."""
    h, w = shape_hw
    scale = panel_px / max(h, w)
    return max(1, round(w * scale)), max(1, round(h * scale))


def slide_thumbnail(slide_path: Path, mpp: float, shape_hw: tuple[int, int], slide_mpp: float | None) -> np.ndarray:
    """The slide at ``mpp`` µm/px resized to ``shape_hw`` (read in strips: bounded memory)."""
    with Slide(slide_path, mpp=slide_mpp) as slide:
        thumb, _ = slide.thumbnail(max(mpp, slide.mpp))
    return _resize(thumb, (shape_hw[1], shape_hw[0]))


def ground_truth_panel(ground_truth_png: Path, result: Result, shape_hw: tuple[int, int], mask_mpp: float) -> tuple[np.ndarray, str]:
    """(coloured ground truth over the mask's extent, caption with the mIoU when classes match)."""
    from wsi_seg.reports.evaluate_slide import mask_on_grid, slide_miou
    from wsi_seg.synthetic import read_ground_truth

    try:
        gt, gt_mpp, names = read_ground_truth(ground_truth_png)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            f"{ground_truth_png}: cannot read the ground truth ({exc}); expected a class-mask PNG "
            "with its .json (as wsi-seg demo-slide writes)"
        ) from exc
    canvas = mask_on_grid(gt, gt_mpp, mask_mpp, shape_hw)  # the ground truth over the mask's extent
    caption = "ground truth"
    if tuple(names) == tuple(result.class_names):
        scores = slide_miou(result.path, ground_truth_png)
        caption = f"ground truth (mIoU {scores['miou']:.1%})"
    return colorize(canvas, list(result.class_colors)), caption


def provenance_line(result: Result) -> str:
    """Model, µm/px, date, slide and software in one line."""
    prov = result.provenance
    name = Path(str(prov.model.path or "unknown model")).name
    sha = str(prov.model.sha256 or "")[:12]
    stage = prov.model.config.get("stage")
    when = prov.raw.get("completed_utc")
    if not when:
        stamp = (result.path / "zarr.json").stat().st_mtime
        when = datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="seconds")
    slide = prov.slide.path.name if prov.slide.path else "?"
    software = (prov.raw.get("software") or {}).get("name", "wsi-seg")
    parts = [
        f"model {name}" + (f" (sha256 {sha}…)" if sha else "") + (f", stage {stage}" if stage else ""),
        f"{result.mpp:g} µm/px",
        str(when).replace("+00:00", "Z"),
        f"slide {slide}",
        f"{software} {prov.software_version or '?'}",
    ]
    return " · ".join(parts)


def result_panels(
    result: Result, slide: str | Path | None = None, panel_px: int = PANEL_PX
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(thumbnail, overlay, mask, µm/px of the mask) of a result at about ``panel_px``.

    The mask is the finest pyramid level up to twice ``panel_px``; thumbnail and overlay
    have its size. Raises SlideError (with the ``--slide`` hint) when the slide is gone.
    """
    level = result.pick_level(2 * panel_px)
    mask = result.mask(level, result.current_labels)[:]
    mask_mpp = result.level_mpp(level)
    slide_path = Path(slide) if slide is not None else result.provenance.slide.path
    if slide_path is None or not slide_path.exists():
        raise SlideError(
            f"{slide_path}: the slide of {result.path.name} is not there (moved or deleted); "
            "pass --slide NEWPATH"
        )
    rgb = slide_thumbnail(slide_path, mask_mpp, mask.shape, result.provenance.slide.mpp)
    return rgb, blend(rgb, mask, list(result.class_colors)), mask, mask_mpp


def result_areas(result: Result, labels: str | None = None) -> list[ClassArea]:
    """Per-class areas of a result, from the pyramid of its label image ``labels``
    (default: the corrected labels when there are some, else the mask)."""
    name = labels or result.current_labels
    levels = [result.mask(level, name) for level in result.levels]
    return class_areas(levels, result.mpp, result.class_names, list(result.class_colors))


def build_report(
    result_path: str | Path,
    slide: str | Path | None = None,
    ground_truth: str | Path | None = None,
    panel_px: int = PANEL_PX,
    partial: bool = False,
) -> SlideReport:
    """The report of a result; an incomplete one (an interrupted run) only with ``partial``,
    and then marked so.

    ``slide`` replaces the slide path recorded in the result (a moved slide);
    ``ground_truth``: a class-mask PNG with its JSON (``wsi_seg.synthetic`` layout);
    by default the demo slide's ``<stem>_mask.png`` next to the slide, when there.
    """
    from wsi_seg.synthetic import mask_paths

    result = Result.open(result_path, allow_incomplete=partial)
    rgb, overlay, mask, mask_mpp = result_panels(result, slide, panel_px)
    size = _panel_size(mask.shape, panel_px)
    corrected = result.current_labels == CORRECTED_NAME
    caption = "segmentation, with corrections" if corrected else "segmentation"
    panels = [("slide", _resize(rgb, size)), (caption, _resize(overlay, size))]
    notes: list[str] = []
    if not result.complete:
        notes.append("incomplete result: the run was interrupted; areas cover what was written")
    slide_path = Path(slide) if slide is not None else result.provenance.slide.path
    gt_path = Path(ground_truth) if ground_truth is not None else mask_paths(slide_path)[0]
    if ground_truth is not None or gt_path.is_file():
        gt_rgb, caption = ground_truth_panel(gt_path, result, mask.shape, mask_mpp)
        panels.append((caption, _resize(gt_rgb, size, nearest=True)))
    return SlideReport(result.name, panels, result_areas(result), provenance_line(result), notes)


# -- rendering -------------------------------------------------------------------------

_FONT_FILES = ("DejaVuSans.ttf", "LiberationSans-Regular.ttf", "Arial.ttf")  # have µ and ²


def _font(size: int) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, bool]:
    """(a font of ``size`` px, whether it draws µ and ²): a system sans if one is found,
    else Pillow's bundled font, which lacks both."""
    for name in _FONT_FILES:
        try:
            return ImageFont.truetype(name, size), True
        except OSError:
            continue
    return ImageFont.load_default(size=size), False


def _ascii_units(text: str) -> str:
    return text.replace("µ", "u").replace("²", "2")


def format_mm2(area_mm2: float) -> str:
    """mm² with 2 decimals from 1 mm² up, else 3 significant digits."""
    return f"{area_mm2:,.2f}" if area_mm2 >= 1 else f"{area_mm2:.3g}"


def legend_rows(report: SlideReport) -> list[tuple[tuple[int, int, int] | None, str, str, str]]:
    """(colour, class, area mm², % of tissue) per class, then the tissue total (no colour)."""
    rows: list[tuple[tuple[int, int, int] | None, str, str, str]] = [
        (a.color, a.name, format_mm2(a.area_mm2), f"{a.tissue_fraction:.1%}") for a in report.areas
    ]
    rows.append((None, "tissue", format_mm2(report.tissue_um2 / 1e6), "100%" if report.tissue_um2 else "–"))
    return rows


def render_png(report: SlideReport) -> Image.Image:
    """The report as one RGB image."""
    pad, gap = 16, 12
    (title_font, unicode_ok), (font, _), (small, _) = _font(22), _font(16), _font(13)
    text = (lambda t: t) if unicode_ok else _ascii_units
    line_h, cap_h = 24, 22
    panels_w = sum(p.shape[1] for _, p in report.panels) + gap * (len(report.panels) - 1)
    panel_h = max(p.shape[0] for _, p in report.panels)
    rows = legend_rows(report)
    legend_h = line_h * (len(rows) + 1)
    notes_h = line_h * len(report.notes)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    prov_w = int(probe.textlength(text(report.provenance), font=small))
    width = max(panels_w, prov_w, 420) + 2 * pad
    height = pad + 32 + cap_h + panel_h + gap + legend_h + notes_h + gap + 20 + pad
    img = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(img)
    y = pad
    draw.text((pad, y), text(report.title), fill=_INK, font=title_font)
    y += 32
    x = pad
    for caption, panel in report.panels:
        draw.text((x, y), text(caption), fill=_MUTED, font=font)
        img.paste(Image.fromarray(panel), (x, y + cap_h))
        x += panel.shape[1] + gap
    y += cap_h + panel_h + gap
    name_w = max(int(draw.textlength(text(r[1]), font=font)) for r in rows)
    num_w = max(int(draw.textlength(r[2], font=font)) for r in rows)
    area_head_w = int(draw.textlength(text("area mm²"), font=font))
    col_area = pad + 28 + max(name_w, 60) + 24 + max(num_w, area_head_w)
    cols = (pad + 28, col_area, col_area + 24 + int(draw.textlength("% of tissue", font=font)))
    draw.text((cols[0], y), "class", fill=_MUTED, font=font)
    draw.text((cols[1], y), text("area mm²"), fill=_MUTED, font=font, anchor="ra")
    draw.text((cols[2], y), "% of tissue", fill=_MUTED, font=font, anchor="ra")
    for color, name, area, frac in rows:
        y += line_h
        if color is not None:
            draw.rectangle((pad, y + 2, pad + 18, y + 18), fill=color, outline=_INK)
        draw.text((cols[0], y), text(name), fill=_INK, font=font)
        draw.text((cols[1], y), area, fill=_INK, font=font, anchor="ra")
        draw.text((cols[2], y), frac, fill=_INK, font=font, anchor="ra")
    y += line_h
    for note in report.notes:
        draw.text((pad, y), text(note), fill=(170, 60, 0), font=font)
        y += line_h
    y += gap
    draw.text((pad, y), text(report.provenance), fill=_MUTED, font=small)
    return img


def png_data_uri(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def areas_table_html(report_areas: list[ClassArea], total_um2: float) -> str:
    """The legend as an HTML table (colour, class, area mm², % of tissue)."""
    body = "".join(
        f"<tr><td><span class='sw' style='background:{a.hex_color}'></span> {html.escape(a.name)}</td>"
        f"<td class='n'>{format_mm2(a.area_mm2)}</td><td class='n'>{a.tissue_fraction:.1%}</td></tr>"
        for a in report_areas
    )
    body += f"<tr class='total'><td>tissue</td><td class='n'>{format_mm2(total_um2 / 1e6)}</td><td class='n'></td></tr>"
    return ("<table class='areas'><tr><th>class</th><th class='n'>area mm²</th><th class='n'>% of tissue</th></tr>"
            f"{body}</table>")


HTML_STYLE = """
body { font-family: system-ui, sans-serif; color: #1e1e1e; margin: 24px; }
figure { display: inline-block; margin: 0 12px 12px 0; vertical-align: top; }
figcaption { color: #6e6e6e; }
table { border-collapse: collapse; }
td, th { padding: 3px 10px; text-align: left; }
th { color: #6e6e6e; font-weight: normal; border-bottom: 1px solid #ccc; }
.n { text-align: right; font-variant-numeric: tabular-nums; }
.sw { display: inline-block; width: 14px; height: 14px; border: 1px solid #333; vertical-align: middle; }
.total td { border-top: 1px solid #ccc; }
.prov { color: #6e6e6e; font-size: 85%; }
.note { color: #aa3c00; }
"""


def render_html(report: SlideReport) -> str:
    """The report as one self-contained HTML page (images inline)."""
    figures = "".join(
        f"<figure><figcaption>{html.escape(c)}</figcaption><img src='{png_data_uri(p)}' "
        f"width='{p.shape[1]}' height='{p.shape[0]}' alt='{html.escape(c)}'></figure>"
        for c, p in report.panels
    )
    notes = "".join(f"<p class='note'>{html.escape(n)}</p>" for n in report.notes)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(report.title)} — wsi-seg report</title><style>{HTML_STYLE}</style></head><body>"
        f"<h2>{html.escape(report.title)}</h2><div>{figures}</div>"
        f"{areas_table_html(report.areas, report.tissue_um2)}{notes}"
        f"<p class='prov'>{html.escape(report.provenance)}</p></body></html>\n"
    )


def check_report_path(out: str | Path) -> Path:
    """``out`` if it ends in .png or .html, else a ConfigError (checked before any work)."""
    out = Path(out)
    if out.suffix.lower() not in REPORT_SUFFIXES:
        raise ConfigError(f"{out}: a report is written as .png or .html, not {out.suffix or 'a file without suffix'!r}")
    return out


def write_report(
    result_path: str | Path,
    out: str | Path,
    slide: str | Path | None = None,
    ground_truth: str | Path | None = None,
    partial: bool = False,
) -> SlideReport:
    """Build the report of ``result_path`` and write it to ``out`` (.png or .html);
    ``partial``: also of an incomplete result.

    Written to a temporary name and renamed, so ``out`` is either the old file or the new.
    """
    out = check_report_path(out)
    report = build_report(result_path, slide=slide, ground_truth=ground_truth, partial=partial)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() == ".png":
            render_png(report).save(tmp, format="PNG", optimize=True)
        else:
            tmp.write_text(render_html(report), encoding="utf-8")
        tmp.replace(out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        from wsi_seg.errors import OutputError

        raise OutputError(f"{out}: cannot write the report ({exc.strerror or exc})") from exc
    return report
