"""The PSCL pipeline as resumable steps, and the method benchmark built from them.

Each step (synthetic data, pre-training, stage 1, pseudo-labels, stage 2, evaluation)
reuses what an earlier call left in its folder, so an interrupted experiment continues
where it stopped when rerun. :func:`benchmark_method` runs the thesis's comparisons on
the synthetic WSSS benchmark — CAM baseline vs PSCL (pseudo-label mIoU), PSCL with and
without background, stage 1 vs stage 2, CE vs NR — and :func:`format_thesis_tables`
prints them like the thesis's tables 5.6–5.9, 5.19 and 5.23, one table per protocol.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_seg_training.config import (
    MethodBenchmarkConfig,
    PretrainConfig,
    Stage1Config,
    Stage2Config,
    load_config,
)

from wsi_seg.errors import OutputError

if TYPE_CHECKING:  # numpy: imported when scores are read, not when the CLI starts
    from wsi_seg.reports.metrics import SegmentationScores

log = logging.getLogger(__name__)


def synthetic_data(root: Path, n_train: int, n_val: int, n_test: int, seed: int) -> Path:
    """A LUAD-HistoSeg-layout synthetic dataset in ``root`` (written once, then reused)."""
    from wsi_seg_training.synthetic_dataset import write_dataset

    if not (root / "train").is_dir():
        write_dataset(root, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed)
    return root


def _train_or_reuse(train: Callable[[Any], Any], cfg: Any, result: Path, finished: Path | None = None) -> Path:
    """Run ``train(cfg)`` and give back its ``result``; a run that already finished with
    the same settings is reused (a different one still raises)."""
    from wsi_seg_training.loop import (
        run_finished,  # torch: only when training runs, not for --help
    )

    try:
        train(cfg)
    except OutputError:
        if not run_finished(Path(cfg.out), cfg.epochs, finished or result):
            raise
        log.info("%s: finished run reused", cfg.out)
    return result


def pretrain(data: Path, out: Path, preset: str, epochs: int, seed: int, device: str,
             batch_size: int | None = None) -> Path:
    """NT-Xent pre-training (thesis §4.2); the encoder weights file for ``--pretrained``."""
    from wsi_seg_training.pretrain import WEIGHTS_NAME, train_pretrain

    overrides: dict[str, Any] = {
        "data.path": str(data / "train"), "out": str(out), "model.preset": preset, "epochs": epochs,
        "data.workers": 0, "device": device, "seed": seed, "progress": False,
    }
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    cfg = load_config(PretrainConfig, None, overrides)
    return _train_or_reuse(train_pretrain, cfg, out / WEIGHTS_NAME)


def stage1(data: Path, out: Path, preset: str, epochs: int, seed: int, device: str, *,
           pscl: bool = True, include_background: bool = True, pretrained: Path | None = None,
           batch_size: int | None = None, settings: dict[str, Any] | None = None) -> Path:
    """Stage 1 (MLSM, + λ·PSCL unless ``pscl`` is False; ``settings``: other config keys,
    e.g. ``{"optim.momentum": 0.9}``); its checkpoint folder."""
    from wsi_seg_training.stage1 import train_stage1

    overrides: dict[str, Any] = {
        "data.path": str(data), "out": str(out), "model.preset": preset, "epochs": epochs,
        "pscl.enabled": pscl, "pscl.include_background": include_background,
        "data.workers": 0, "device": device, "seed": seed, "progress": False,
    }
    if pretrained is not None:
        overrides["model.pretrained"] = str(pretrained)
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    overrides.update(settings or {})
    cfg = load_config(Stage1Config, None, overrides)
    return _train_or_reuse(train_stage1, cfg, out / "checkpoint", out / "checkpoint" / "model.safetensors")


def pseudo_labels(model: Path, data: Path, out: Path, device: str) -> Path:
    """Eq. 4.9 pseudo-labels of the training split (written once, then reused)."""
    from wsi_seg_training.pseudo_labels import MANIFEST_NAME, generate_pseudo_labels

    if not (out / MANIFEST_NAME).is_file():
        generate_pseudo_labels(model, data, out, device=device, overwrite=True, progress=False)
    return out


def stage2(data: Path, labels: Path, init: Path, out: Path, loss: str, epochs: int, seed: int,
           device: str, batch_size: int = 16) -> Path:
    """Stage 2 (encoder from ``init`` + pixel decoder, ``loss`` ce | nr); its checkpoint folder."""
    from wsi_seg_training.stage2 import train_stage2

    cfg = load_config(Stage2Config, None, {
        "data.path": str(data), "data.pseudo_labels": str(labels), "init": str(init), "out": str(out),
        "loss.name": loss, "epochs": epochs, "batch_size": batch_size, "data.workers": 0,
        "device": device, "seed": seed, "progress": False,
    })
    return _train_or_reuse(train_stage2, cfg, out / "checkpoint", out / "checkpoint" / "model.safetensors")


def evaluate(model: Path, data: Path, device: str, split: str = "test",
             image_labels: str = "predicted") -> list[SegmentationScores]:
    """Scores of ``model`` on ``split`` under both protocols, cached next to the checkpoint
    (stage 1: ``image_labels`` predicted, the reference protocols, or gt, the oracle)."""
    from wsi_seg_training.evaluate import evaluate_checkpoint

    from wsi_seg.reports.metrics import SegmentationScores

    cache = model.parent / f"{split}_{image_labels}_scores.json"
    sha = _sha256(model)
    if cache.is_file():
        saved = json.loads(cache.read_text(encoding="utf-8"))
        if saved.get("sha256") == sha and saved.get("image_labels") == image_labels:
            return [SegmentationScores(**s) for s in saved["scores"]]
    result = evaluate_checkpoint(model, data, split=split, device=device, progress=False, image_labels=image_labels)
    payload = {"sha256": result.sha256, "image_labels": image_labels, "mode": result.mode_line(),
               "scores": [asdict(s) for s in result.scores]}
    cache.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return result.scores


def _sha256(model: Path) -> str:
    from wsi_seg.model.checkpoint import file_sha256

    return file_sha256(model / "model.safetensors")


@dataclass
class Row:
    """One model of the benchmark: its scores per protocol and how long it trained."""

    name: str
    scores: dict[str, SegmentationScores]
    train_seconds: float


@dataclass
class MethodBenchmark:
    rows: list[Row] = field(default_factory=list)
    split: str = "test"
    config: MethodBenchmarkConfig = field(default_factory=MethodBenchmarkConfig)

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "config": asdict(self.config),
            "rows": [{"name": r.name, "train_seconds": round(r.train_seconds, 1),
                      "scores": {p: s.to_dict() for p, s in r.scores.items()}} for r in self.rows],
        }


# (row name, stage-1 variant); each stage-1 model is scored twice: with its predicted
# classes (the reference protocols) and with the ground truth's (an oracle: pseudo-label
# quality, eq. 4.9)
STAGE1_VARIANTS = (
    ("Stage 1, CAM baseline (MLSM)", {"pscl": False}),
    ("Stage 1, MLSM + PSCL", {"pscl": True, "include_background": True}),
    ("Stage 1, MLSM + PSCL, background excluded", {"pscl": True, "include_background": False}),
)
STAGE2_LOSSES = (("Stage 2, CE", "ce"), ("Stage 2, NR", "nr"))


def benchmark_method(cfg: MethodBenchmarkConfig,
                     report: Callable[[str], None] = print) -> MethodBenchmark:
    """Train and score the benchmark's models in ``cfg.work`` (resumable); stage 2 learns
    from the pseudo-labels of the PSCL model with background, as in the thesis."""
    work = Path(cfg.work)
    data = synthetic_data(work / "data", cfg.n_train, cfg.n_val, cfg.n_test, cfg.seed)
    bench = MethodBenchmark(config=cfg)
    stage1_models: dict[str, Path] = {}
    for i, ((name, variant), folder) in enumerate(zip(STAGE1_VARIANTS, ("s1_baseline", "s1_pscl", "s1_pscl_nobkg"))):
        report(f"[{i + 1}/5] {name} …")
        t = time.perf_counter()
        stage1_models[folder] = stage1(data, work / folder, cfg.preset, cfg.stage1_epochs, cfg.seed, cfg.device,
                                       batch_size=cfg.stage1_batch_size, **variant)
        seconds = _trained_seconds(work / folder, t)
        bench.rows.append(_row(f"{name}, predicted classes", stage1_models[folder], data, cfg, seconds))
        bench.rows.append(_row(f"{name}, oracle (gt classes)", stage1_models[folder], data, cfg, seconds, "gt"))
    labels = pseudo_labels(stage1_models["s1_pscl"], data, work / "pseudo_labels", cfg.device)
    for i, (name, loss) in enumerate(STAGE2_LOSSES):
        report(f"[{len(STAGE1_VARIANTS) + i + 1}/5] {name} …")
        t = time.perf_counter()
        model = stage2(data, labels, stage1_models["s1_pscl"], work / f"s2_{loss}", loss, cfg.stage2_epochs,
                       cfg.seed, cfg.device, cfg.stage2_batch_size)
        bench.rows.append(_row(name, model, data, cfg, _trained_seconds(work / f"s2_{loss}", t)))
    return bench


def _row(name: str, model: Path, data: Path, cfg: MethodBenchmarkConfig, seconds: float,
         image_labels: str = "predicted") -> Row:
    scores = evaluate(model, data, cfg.device, image_labels=image_labels)
    return Row(name, {s.protocol: s for s in scores}, seconds)


def _trained_seconds(run_dir: Path, started: float) -> float:
    """Training time from the run's metrics.csv (survives reuse), else the time elapsed."""
    import csv

    path = run_dir / "metrics.csv"
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if rows and "seconds" in rows[0]:
            return sum(float(r["seconds"]) for r in rows)
    return time.perf_counter() - started


def format_thesis_tables(bench: MethodBenchmark) -> str:
    """One table per protocol: Model | per-class IoU | mIoU | fwIoU, in % (thesis format)."""
    from wsi_seg.reports.metrics import PROTOCOLS

    blocks = []
    for protocol in PROTOCOLS:
        first = bench.rows[0].scores[protocol]
        classes = list(first.class_names)
        width = max(len(r.name) for r in bench.rows)
        names = (*classes, "mIoU", "fwIoU")
        widths = [max(6, len(c)) for c in names]
        head = f"{'Model':<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(names, widths)) + "  train s"
        what = ("ground-truth background excluded" if protocol == "mlps"
                else "background scored as a class, mIoU over tissue classes")
        lines = [f"IoU (%) on the {bench.split} split, protocol {protocol} ({what})", head, "-" * len(head)]
        for r in bench.rows:
            s = r.scores[protocol]
            cells = [f"{_pct(v):>{w}}" for v, w in zip((*s.iou, s.miou, s.fwiou), widths)]
            lines.append(f"{r.name:<{width}}  " + "  ".join(cells) + f"  {r.train_seconds:7.0f}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def format_markdown(bench: MethodBenchmark, protocol: str = "mlps") -> str:
    """The ``protocol`` table as Markdown (for the README)."""
    classes = list(bench.rows[0].scores[protocol].class_names)
    lines = ["| Model | " + " | ".join((*classes, "mIoU", "fwIoU")) + " |",
             "|---" * (len(classes) + 3) + "|"]
    for r in bench.rows:
        s = r.scores[protocol]
        lines.append(f"| {r.name} | " + " | ".join(_pct(v).strip() for v in (*s.iou, s.miou, s.fwiou)) + " |")
    return "\n".join(lines)


def _pct(v: float) -> str:
    return "   n/a" if math.isnan(v) else f"{100 * v:6.2f}"
