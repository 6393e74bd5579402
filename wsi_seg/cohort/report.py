"""The cohort report: one HTML page, one row per slide (overlay, areas, status).

``summarize(results_dir)`` rebuilds the cohort summary (``wsi_seg_summary.csv`` /
``.json``, with per-class areas) and ``report.html`` from the results already in a
folder, without running anything: the rows of an existing summary keep their order,
status and timings; results the summary does not list (segmented one by one with
``--out``, or unfinished ``.partial`` runs) are added after them.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import fields
from pathlib import Path

from wsi_seg.cohort.run import (
    SUMMARY_NAME,
    SlideOutcome,
    with_areas,
    write_summary,
    write_text_atomic,
)
from wsi_seg.errors import ConfigError, ResultError, WsiSegError
from wsi_seg.reports.areas import hex_color
from wsi_seg.result.format import (
    CORRECTED_NAME,
    PARTIAL_SUFFIX,
    is_partial,
    read_provenance,
)
from wsi_seg.result.reader import Provenance

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
THUMB_PX = 240


def _row_thumbnail(outcome: SlideOutcome) -> tuple[str, str]:
    """(data URI of the overlay thumbnail or "", a note) of a finished slide's row."""
    from wsi_seg.reports.slide_report import (
        _panel_size,
        _resize,
        colorize,
        png_data_uri,
        result_panels,
    )
    from wsi_seg.result.reader import Result

    try:
        result = Result.open(outcome.out, allow_incomplete=True)
    except (WsiSegError, OSError) as exc:
        return "", str(exc)
    try:
        _, overlay, mask, _ = result_panels(result, panel_px=THUMB_PX)
        note = ""
    except WsiSegError as exc:  # the slide moved: the class mask alone
        mask = result.mask(result.pick_level(2 * THUMB_PX), result.current_labels)[:]
        overlay, note = colorize(mask, list(result.class_colors)), f"slide not found: mask only ({exc})"
    return png_data_uri(_resize(overlay, _panel_size(mask.shape, THUMB_PX))), note


def render_cohort_html(outcomes: list[SlideOutcome], title: str) -> str:
    """The cohort page: one row per slide, one column pair (mm², %) per class."""
    from wsi_seg.reports.slide_report import HTML_STYLE

    classes: list[str] = []
    for o in outcomes:
        classes.extend(n for n in o.area_mm2 if n not in classes)
    colors = _class_colors(outcomes)
    head = "".join(
        f"<th class='n'><span class='sw' style='background:{colors.get(c, '#fff')}'></span> "
        f"{html.escape(c)}<br>mm² (% of tissue)</th>"
        for c in classes
    )
    body = []
    for o in outcomes:
        img, note = _row_thumbnail(o) if o.status != "failed" else ("", "")
        cells = "".join(
            f"<td class='n'>{o.area_mm2[c]:.4g} ({o.percent_of_tissue.get(c, 0):.1f}%)</td>"
            if c in o.area_mm2 else "<td></td>"
            for c in classes
        )
        tissue = f"{o.tissue_mm2:.4g}" if o.tissue_mm2 is not None else ""
        labels = f" ({CORRECTED_NAME})" if o.labels == CORRECTED_NAME else ""
        notes = " ".join(x for x in (o.error, note) if x)
        thumb = f"<img src='{img}' alt='overlay of {html.escape(Path(o.slide).name)}'>" if img else ""
        body.append(
            f"<tr><td>{html.escape(Path(o.slide).name)}<br><span class='prov'>{html.escape(Path(o.out).name)}</span></td>"
            f"<td>{thumb}</td>"
            f"<td>{html.escape(o.status + labels)}</td><td class='n'>{tissue}</td>{cells}"
            f"<td class='note'>{html.escape(notes)}</td></tr>"
        )
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "incomplete", "failed")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)} — wsi-seg cohort</title><style>{HTML_STYLE}"
        "tr { border-bottom: 1px solid #eee; } td { vertical-align: top; }</style></head><body>"
        f"<h2>{html.escape(title)}</h2><p>{len(outcomes)} slides: {summary}</p>"
        "<table><tr><th>slide</th><th>overlay</th><th>status</th><th class='n'>tissue mm²</th>"
        f"{head}<th>notes</th></tr>{''.join(body)}</table></body></html>\n"
    )


def _class_colors(outcomes: list[SlideOutcome]) -> dict[str, str]:
    """Class name → hex colour, from the first readable result that names it."""
    colors: dict[str, str] = {}
    for o in outcomes:
        raw = read_provenance(Path(o.out))
        if raw is None:
            continue
        try:
            prov = Provenance.parse(raw, Path(o.out))
        except ResultError:  # its row says why (see _found_outcome)
            continue
        for name, rgb in zip(prov.class_names, prov.class_colors):
            colors.setdefault(name, hex_color(rgb))
    return colors


def write_cohort_report(out_dir: Path, outcomes: list[SlideOutcome]) -> Path:
    """``report.html`` in ``out_dir`` (written to a temporary name, then renamed)."""
    path = Path(out_dir) / REPORT_NAME
    write_text_atomic(path, render_cohort_html(outcomes, Path(out_dir).resolve().name))
    return path


def _read_summary_json(path: Path) -> list[SlideOutcome]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(SlideOutcome)}
        return [SlideOutcome(**{k: v for k, v in row.items() if k in known}) for row in rows]
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: cannot read the cohort summary ({exc}); move it away to rebuild it from the results") from exc


def _found_outcome(path: Path, raw: dict) -> SlideOutcome:
    """The row of a result the summary does not list; malformed attributes: a failed row saying why."""
    try:
        prov = Provenance.parse(raw, path)
    except ResultError as exc:
        return SlideOutcome(slide="", out=str(path), status="failed", error=str(exc))
    status = "done" if prov.complete and not is_partial(path) else "incomplete"
    return SlideOutcome(slide=str(prov.slide.path or ""), out=str(path), status=status)


def summarize(results_dir: str | Path, partial: bool = False) -> tuple[Path, Path, Path, list[SlideOutcome]]:
    """Rebuild ``wsi_seg_summary.csv``/``.json`` and ``report.html`` of ``results_dir``.

    Returns (csv, json, html, rows). Nothing is segmented; areas come from each result's
    label pyramid (the corrected labels when there are some). An unfinished result's areas
    count only what was written, so one is refused (ResultError naming them) unless
    ``partial``, which lists it with status ``incomplete``.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise ConfigError(f"{root}: results folder not found")
    summary_json = root / f"{SUMMARY_NAME}.json"
    listed = _read_summary_json(summary_json) if summary_json.is_file() else []
    seen = {Path(o.out).name for o in listed}
    found = []
    for path in sorted(root.iterdir()):
        if not path.is_dir() or not path.name.removesuffix(PARTIAL_SUFFIX).endswith(".zarr"):
            continue
        raw = read_provenance(path)
        if raw is None:
            continue
        final = path.name.removesuffix(PARTIAL_SUFFIX)
        if path.name in seen or (final in seen and (root / final).exists()):
            continue
        found.append(_found_outcome(path, raw))
    outcomes = []
    for o in listed:  # a summary row whose result was later resumed elsewhere keeps its own path
        if not Path(o.out).exists() and (root / Path(o.out).name).exists():
            o.out = str(root / Path(o.out).name)
        outcomes.append(o)
    outcomes += found
    if not outcomes:
        raise ConfigError(f"{root}: no wsi-seg results (*.zarr) and no {SUMMARY_NAME}.json; nothing to summarize")
    unfinished = [Path(o.out).name for o in outcomes if o.status == "incomplete"]
    if unfinished and not partial:
        names = ", ".join(unfinished[:3]) + (f" and {len(unfinished) - 3} more" if len(unfinished) > 3 else "")
        raise ResultError(f"{root}: {len(unfinished)} result(s) not finished ({names}); rerun segment to finish "
                          "them, or pass --partial to summarize what they hold")
    outcomes = [with_areas(o) for o in outcomes]
    csv_path, json_path = write_summary(root, outcomes)
    return csv_path, json_path, write_cohort_report(root, outcomes), outcomes
