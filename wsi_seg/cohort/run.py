"""Many slides in one run: inputs from files, globs or a CSV manifest; a run summary.

Each slide gets ``OUT_DIR/<stem>.zarr``. Finished slides (a complete result of the same
slide and model) are skipped, a failed slide does not stop the others, and the summary
(CSV + JSON) says what happened to each. ``run_cohort`` goes through the slides one by
one; ``wsi_seg.cohort.distributed`` runs the same pieces (``segment_one``, ``CohortSummary``) on
a dask cluster.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from wsi_seg.errors import ConfigError, ResultError, WsiSegError
from wsi_seg.inference.segment import CancelFlag, SegmentOptions, segment_slide
from wsi_seg.model.checkpoint import LoadedModel
from wsi_seg.result.reader import Provenance, Result
from wsi_seg.slide.slide import Slide

log = logging.getLogger(__name__)

SUMMARY_NAME = "wsi_seg_summary"


@dataclass
class SlideOutcome:
    """One row of the run summary."""

    slide: str
    out: str
    status: str  # done | skipped | failed | incomplete (found by ``wsi-seg summarize``)
    patches: int = 0
    seconds: float = 0.0
    error: str = ""
    # per-class areas of a finished slide (from its label pyramid, see wsi_seg.reports.areas)
    labels: str = ""  # the label image they were counted on: mask, or corrected
    tissue_mm2: float | None = None
    area_mm2: dict[str, float] = field(default_factory=dict)
    percent_of_tissue: dict[str, float] = field(default_factory=dict)


def expand_inputs(items: Iterable[str]) -> list[Path]:
    """Slide paths from files, glob patterns and CSV manifests (column ``slide`` or the first)."""
    slides: list[Path] = []
    for item in items:
        path = Path(item)
        if path.suffix.lower() == ".csv" and path.is_file():
            slides.extend(_read_manifest(path))
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise ConfigError(f"{item}: the pattern matches no file")
            slides.extend(Path(m) for m in matches)
        else:
            slides.append(path)
    seen: set[Path] = set()
    unique = [s for s in slides if not (s in seen or seen.add(s))]
    stems = [s.stem for s in unique]
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:
        raise ConfigError(f"several slides share the name {clashes[0]!r}; their outputs would collide in --out-dir")
    return unique


def _read_manifest(path: Path) -> list[Path]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ConfigError(f"{path}: empty manifest")
    header = [h.strip().lower() for h in rows[0]]
    col = header.index("slide") if "slide" in header else 0
    body = rows[1:] if "slide" in header or "path" in header else rows
    base = path.parent
    return [(base / r[col].strip()) if not Path(r[col].strip()).is_absolute() else Path(r[col].strip())
            for r in body if r and r[col].strip()]


def output_path(out_dir: Path, slide: Path) -> Path:
    """Where a cohort puts the result of ``slide``: ``OUT_DIR/<stem>.zarr``."""
    return out_dir / f"{slide.stem}.zarr"


def _existing_result(slide: Path, out: Path) -> tuple[Provenance, str] | None:
    """(provenance of the complete result at ``out``, fingerprint of ``slide``), or None if
    ``out`` is no complete result or ``slide`` cannot be opened (segment_slide reports that)."""
    try:
        prov = Result.open(out).provenance
        with Slide(slide) as s:
            return prov, s.fingerprint()
    except (ResultError, OSError):  # SlideError is an OSError
        return None


def is_finished(slide: Path, out: Path, model_sha256: str) -> bool:
    """True when ``out`` is a complete result of this very slide by the model with this sha256."""
    found = _existing_result(slide, out)
    return found is not None and found[0].slide.fingerprint == found[1] and found[0].model.sha256 == model_sha256


def skipped_outcome(slide: Path, out: Path, model_sha256: str, options: SegmentOptions) -> SlideOutcome | None:
    """The ``skipped`` row for a slide already finished (unless ``overwrite``), the ``failed``
    row naming both slides when ``out`` holds a result of another slide, else None."""
    found = None if options.overwrite else _existing_result(slide, out)
    if found is None:
        return None
    prov, fingerprint = found
    if not str(prov.slide.fingerprint).startswith(fingerprint.split(":")[0] + ":"):
        return SlideOutcome(str(slide), str(out), "failed", error=(
            f"{out}: holds a complete result whose slide fingerprint ({prov.slide.fingerprint}) predates "
            "this version's; pass --overwrite to segment the slide again"
        ))
    if prov.slide.fingerprint != fingerprint:
        return SlideOutcome(str(slide), str(out), "failed", error=(
            f"{out}: holds a complete result of another slide ({prov.slide.path}, fingerprint "
            f"{prov.slide.fingerprint}), not of {slide} (fingerprint {fingerprint}); pass --overwrite to replace it"
        ))
    if prov.model.sha256 == model_sha256:
        return SlideOutcome(str(slide), str(out), "skipped")
    return None


def failed_outcome(slide: Path, out: Path, error: WsiSegError, started: float) -> SlideOutcome:
    """The ``failed`` row of a slide whose run raised ``error`` (``started``: a perf_counter time)."""
    seconds = round(time.perf_counter() - started, 2)
    return SlideOutcome(str(slide), str(out), "failed", seconds=seconds, error=str(error))


def segment_one(
    slide: Path,
    out: Path,
    model: LoadedModel,
    options: SegmentOptions,
    cancel: CancelFlag | None = None,
) -> SlideOutcome:
    """Segment one slide of a cohort; a WsiSegError becomes a ``failed`` row, not a stop
    (``Cancelled``, raised once ``cancel`` is set, is not an error and propagates).

    Shared by the sequential and the distributed runs, so both write the same outputs.
    """
    started = time.perf_counter()
    try:
        res = segment_slide(slide, out, model, options, cancel=cancel)
    except WsiSegError as exc:
        return failed_outcome(slide, out, exc, started)
    return SlideOutcome(str(slide), str(out), "done", res.patches_run, round(res.seconds, 2))


class CohortSummary:
    """Outcomes kept in input order; each new one is reported and the summary files rewritten.

    Outcomes may arrive in any order (a cluster finishes slides out of order); the files
    always list the slides seen so far in the order of the input list.
    """

    def __init__(self, out_dir: Path, report: Callable[[SlideOutcome], None] | None = None) -> None:
        self.out_dir = out_dir
        self.report = report
        self._by_index: dict[int, SlideOutcome] = {}

    def add(self, index: int, outcome: SlideOutcome) -> None:
        """Record the outcome of the ``index``-th input slide (with its areas when finished)."""
        outcome = with_areas(outcome)
        self._by_index[index] = outcome
        if self.report is not None:
            self.report(outcome)
        write_summary(self.out_dir, self.outcomes)

    @property
    def outcomes(self) -> list[SlideOutcome]:
        return [self._by_index[i] for i in sorted(self._by_index)]


def run_cohort(
    slides: list[Path],
    out_dir: Path,
    model: LoadedModel,
    options: SegmentOptions,
    report: Callable[[SlideOutcome], None] | None = None,
) -> list[SlideOutcome]:
    """Segment every slide into ``out_dir`` one after the other; never stops at a failed slide.

    ``wsi_seg.cohort.distributed.run_cohort_dask`` does the same on a dask cluster.
    """
    summary = CohortSummary(out_dir, report)
    for index, slide in enumerate(slides):
        out = output_path(out_dir, slide)
        outcome = skipped_outcome(slide, out, model.sha256, options) or segment_one(slide, out, model, options)
        summary.add(index, outcome)
    return summary.outcomes


def with_areas(outcome: SlideOutcome) -> SlideOutcome:
    """``outcome`` with the per-class areas of its result, when the slide is finished.

    Counted on the corrected labels when the result has them. A result that cannot be
    read keeps its row without areas (logged), so the summary is always written.
    """
    if outcome.status not in ("done", "skipped", "incomplete"):
        return outcome
    from wsi_seg.reports.slide_report import result_areas

    try:
        result = Result.open(outcome.out, allow_incomplete=outcome.status == "incomplete")
        labels = result.current_labels
        rows = result_areas(result, labels)
    except (WsiSegError, OSError, KeyError, ValueError) as exc:
        log.warning("%s: no areas in the summary (%s)", outcome.out, exc)
        return outcome
    tissue = sum(r.area_um2 for r in rows)
    return replace(
        outcome,
        labels=labels,
        tissue_mm2=round(tissue / 1e6, 6),
        area_mm2={r.name: round(r.area_mm2, 6) for r in rows},
        percent_of_tissue={r.name: round(100 * r.tissue_fraction, 3) for r in rows},
    )


def _csv_row(outcome: SlideOutcome, classes: list[str]) -> dict[str, object]:
    row = {k: v for k, v in asdict(outcome).items() if k not in ("area_mm2", "percent_of_tissue")}
    for name in classes:
        row[f"{name} mm2"] = outcome.area_mm2.get(name, "")
        row[f"{name} % of tissue"] = outcome.percent_of_tissue.get(name, "")
    return row


def write_summary(out_dir: Path, outcomes: list[SlideOutcome]) -> tuple[Path, Path]:
    """``wsi_seg_summary.csv`` and ``.json`` in ``out_dir`` (rewritten after each slide).

    The CSV has two columns per class (``<class> mm2``, ``<class> % of tissue``), for
    every class of any slide, in order of appearance; the JSON nests them per slide.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    classes: list[str] = []
    for o in outcomes:
        classes.extend(n for n in o.area_mm2 if n not in classes)
    base = [k for k in SlideOutcome.__dataclass_fields__ if k not in ("area_mm2", "percent_of_tissue")]
    fields = base + [c for name in classes for c in (f"{name} mm2", f"{name} % of tissue")]
    csv_path, json_path = out_dir / f"{SUMMARY_NAME}.csv", out_dir / f"{SUMMARY_NAME}.json"
    write_text_atomic(csv_path, _csv_text(fields, [_csv_row(o, classes) for o in outcomes]))
    rows = [asdict(o) for o in outcomes]
    write_text_atomic(json_path, json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    return csv_path, json_path


def _csv_text(fields: list[str], rows: list[dict[str, object]]) -> str:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary name and rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
