"""The PSCL pipeline as resumable steps, and the method benchmark built from them.

Each step (synthetic data, pre-training, stage 1, pseudo-labels, stage 2, evaluation)
reuses what an earlier call left in its folder, so an interrupted experiment continues
where it stopped when rerun. :func:`benchmark_method` runs the thesis's comparisons on
the synthetic WSSS benchmark or on any dataset (``--data``: LUAD-HistoSeg / BCSS-WSSS
layout, or labels.csv, e.g. cut from real annotated tissue by ``make-dataset``) — CAM
baseline vs PSCL (pseudo-label mIoU), PSCL with and without background, stage 1 vs
stage 2, CE vs NR — beside trivial baselines (every tissue pixel one class), and
:func:`format_thesis_tables` prints them like the thesis's tables 5.6–5.9, 5.19 and
5.23, one table per protocol. Each figure is published only after the run's own record
(``config.yaml``) was read back and says it ran with the settings the row names, and
each row says whether its training losses stayed finite and whether it collapsed to
one class.
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


def benchmark_data(cfg: MethodBenchmarkConfig) -> tuple[Path, dict[str, Any]]:
    """The dataset of the benchmark (``cfg.data``, checked: train labels and test masks;
    else the synthetic set in ``work/data``) and the stage-1 settings it implies (the
    µm/px a make-dataset folder records)."""
    if not cfg.data:
        return synthetic_data(Path(cfg.work) / "data", cfg.n_train, cfg.n_val, cfg.n_test, cfg.seed), {}
    from wsi_seg_training.datasets.check import open_checked_dataset
    from wsi_seg_training.datasets.make import patch_mpp_of

    data = Path(cfg.data)
    index = open_checked_dataset(data)
    index.split("train", need_labels=True)
    index.split("test", need_masks=True)
    mpp = patch_mpp_of(data)
    return data, ({"data.mpp": mpp} if mpp is not None else {})


def read_back(run_dir: Path, expected: dict[str, Any], recorded: tuple[str, ...] = ()) -> dict[str, Any]:
    """The settings ``expected`` (dotted keys) as the run's ``config.yaml`` records them,
    and those named in ``recorded`` (read for the table, not compared); OutputError when
    an expected one differs: a figure counts only if its configuration took effect."""
    import yaml

    path = run_dir / "config.yaml"
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise OutputError(f"{path}: cannot read the run's settings back ({exc})") from exc
    found: dict[str, Any] = {}
    for key, want in expected.items():
        value: Any = saved
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        found[key] = value
        if value != want and not (isinstance(want, float) and isinstance(value, (int, float))
                                  and math.isclose(value, want)):
            raise OutputError(f"{path}: {key} is {value!r}, not the {want!r} the benchmark asked for; "
                              "its figures would not be what they say (use a new --work)")
    for key in recorded:
        value = saved
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        found[key] = value
    return found


def provenance_pretrained(checkpoint: Path) -> Any:
    """The encoder weights a checkpoint's provenance says its training started from (None:
    random initialisation)."""
    try:
        config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OutputError(f"{checkpoint}: cannot read its provenance ({exc})") from exc
    return ((config.get("provenance") or {}).get("training") or {}).get("pretrained")


STAGE1_RECORDED = ("batch_size", "precision", "model.pretrained", "optim.lr", "optim.momentum", "optim.weight_decay",
                   "pscl.gating", "pscl.epsilon_reading", "pscl.gating_fallback")
STAGE2_RECORDED = ("precision", "optim.lr")


def run_health(run_dir: Path) -> dict[str, Any]:
    """Epochs, last loss and whether every logged loss was finite, from the run's metrics.csv."""
    import csv

    path = run_dir / "metrics.csv"
    if not path.is_file():
        return {"epochs": 0, "finite": True, "last_loss": None}
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    losses = [float(v) for r in rows for k, v in r.items() if k and "loss" in k and v not in ("", None)]
    last = float(rows[-1]["loss"]) if rows and rows[-1].get("loss") not in ("", None) else None
    return {"epochs": len(rows), "finite": all(math.isfinite(v) for v in losses), "last_loss": last}


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
    settings: dict[str, Any] = field(default_factory=dict)  # as the run's config.yaml records them
    health: dict[str, Any] = field(default_factory=dict)  # run_health of its training

    def collapsed(self, protocol: str = "mlps") -> bool:
        """Whether it scores on one class at most while the split holds several: all its
        tissue predictions went to one class (or none)."""
        s = self.scores[protocol]
        iou = s.iou if protocol == "mlps" else s.iou[1:]
        return sum(1 for v in iou if v > 0) <= 1 < sum(1 for v in iou if not math.isnan(v))


@dataclass
class MethodBenchmark:
    rows: list[Row] = field(default_factory=list)
    split: str = "test"
    config: MethodBenchmarkConfig = field(default_factory=MethodBenchmarkConfig)
    data: str = ""
    baselines: list[Row] = field(default_factory=list)  # trivial: no training

    def to_dict(self) -> dict[str, Any]:
        def row(r: Row) -> dict[str, Any]:
            return {"name": r.name, "train_seconds": round(r.train_seconds, 1), "settings": r.settings,
                    "health": r.health, "collapsed": r.collapsed(),
                    "scores": {p: s.to_dict() for p, s in r.scores.items()}}

        return {
            "split": self.split,
            "data": self.data,
            "config": asdict(self.config),
            "rows": [row(r) for r in self.rows],
            "trivial_baselines": [row(r) for r in self.baselines],
        }

    def health_lines(self) -> list[str]:
        """One line per trained model: finite losses, last loss, collapse."""
        lines = []
        for r in self.rows:
            if not r.health:
                continue
            h = r.health
            loss = f"{h['last_loss']:.4f}" if h.get("last_loss") is not None else "-"
            lines.append(f"{r.name}: {h['epochs']} epochs, losses {'finite' if h['finite'] else 'NOT FINITE'}, "
                         f"last {loss}{', COLLAPSED to one class (mlps)' if r.collapsed() else ''}")
        return lines


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
    data, data_settings = benchmark_data(cfg)
    bench = MethodBenchmark(config=cfg, data=str(data))
    bench.baselines = trivial_baselines(data)
    stage1_models: dict[str, Path] = {}
    for i, ((name, variant), folder) in enumerate(zip(STAGE1_VARIANTS, ("s1_baseline", "s1_pscl", "s1_pscl_nobkg"))):
        report(f"[{i + 1}/5] {name} …")
        t = time.perf_counter()
        stage1_models[folder] = stage1(data, work / folder, cfg.preset, cfg.stage1_epochs, cfg.seed, cfg.device,
                                       batch_size=cfg.stage1_batch_size, settings=data_settings, **variant)
        settings = read_back(work / folder, {
            "data.path": str(data), "model.preset": cfg.preset, "epochs": cfg.stage1_epochs, "seed": cfg.seed,
            "pscl.enabled": variant["pscl"], **({"pscl.include_background": variant["include_background"]}
                                               if variant["pscl"] else {}),
            **({"batch_size": cfg.stage1_batch_size} if cfg.stage1_batch_size is not None else {}),
            **data_settings}, STAGE1_RECORDED)
        settings["provenance.pretrained"] = provenance_pretrained(stage1_models[folder])
        seconds = _trained_seconds(work / folder, t)
        health = run_health(work / folder)
        bench.rows.append(_row(f"{name}, predicted classes", stage1_models[folder], data, cfg, seconds,
                               settings=settings, health=health))
        bench.rows.append(_row(f"{name}, oracle (gt classes)", stage1_models[folder], data, cfg, seconds, "gt",
                               settings=settings))
    labels = pseudo_labels(stage1_models["s1_pscl"], data, work / "pseudo_labels", cfg.device)
    for i, (name, loss) in enumerate(STAGE2_LOSSES):
        report(f"[{len(STAGE1_VARIANTS) + i + 1}/5] {name} …")
        t = time.perf_counter()
        model = stage2(data, labels, stage1_models["s1_pscl"], work / f"s2_{loss}", loss, cfg.stage2_epochs,
                       cfg.seed, cfg.device, cfg.stage2_batch_size)
        settings = read_back(work / f"s2_{loss}", {
            "data.path": str(data), "loss.name": loss, "epochs": cfg.stage2_epochs, "seed": cfg.seed,
            "batch_size": cfg.stage2_batch_size}, STAGE2_RECORDED)
        bench.rows.append(_row(name, model, data, cfg, _trained_seconds(work / f"s2_{loss}", t),
                               settings=settings, health=run_health(work / f"s2_{loss}")))
    return bench


def trivial_baselines(data: Path, split: str = "test") -> list[Row]:
    """Scores with no training: every tissue pixel (all but the dataset's glass seed) one
    class — the train split's most frequent label, and the class best on ``split`` (an
    oracle choice)."""
    import numpy as np

    from wsi_seg.reports.metrics import PROTOCOLS, ConfusionMatrix
    from wsi_seg.slide.tissue import BackgroundSeedParams

    from wsi_seg_training.datasets import open_dataset, read_mask, read_rgb

    index = open_dataset(data)
    info, n = index.info, index.num_classes
    seeding = BackgroundSeedParams(info.background_seed, 200, info.bkg_min_size_px)
    matrices = [ConfusionMatrix(index.class_names) for _ in range(n)]
    for rec in index.split(split, need_masks=True):
        rgb = read_rgb(rec.image)
        gt = read_mask(rec.mask, n, rgb.shape[:2])
        glass = seeding.seed(rgb)
        for c, cm in enumerate(matrices):
            cm.update(gt, np.where(glass, 0, c + 1).astype(np.uint8))
    train = [r.labels for r in index.split("train", need_labels=True)]
    majority = int(np.argmax(np.asarray(train, np.int64).sum(axis=0)))
    best = max(range(n), key=lambda c: matrices[c].scores("mlps").miou)
    names = index.class_names
    rows = [Row(f"Trivial: every tissue pixel {names[majority]} (train's most frequent label)",
                {p: matrices[majority].scores(p) for p in PROTOCOLS}, 0.0)]
    if best != majority:
        rows.append(Row(f"Trivial: every tissue pixel {names[best]} (best one class on {split}, oracle)",
                        {p: matrices[best].scores(p) for p in PROTOCOLS}, 0.0))
    return rows


def _row(name: str, model: Path, data: Path, cfg: MethodBenchmarkConfig, seconds: float,
         image_labels: str = "predicted", settings: dict[str, Any] | None = None,
         health: dict[str, Any] | None = None) -> Row:
    scores = evaluate(model, data, cfg.device, image_labels=image_labels)
    return Row(name, {s.protocol: s for s in scores}, seconds, settings or {}, health or {})


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
    rows = [*bench.rows, *bench.baselines]
    for protocol in PROTOCOLS:
        first = bench.rows[0].scores[protocol]
        classes = list(first.class_names)
        width = max(len(r.name) for r in rows)
        names = (*classes, "mIoU", "fwIoU")
        widths = [max(6, len(c)) for c in names]
        head = f"{'Model':<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(names, widths)) + "  train s"
        what = ("ground-truth background excluded" if protocol == "mlps"
                else "background scored as a class, mIoU over tissue classes")
        lines = [f"IoU (%) on the {bench.split} split, protocol {protocol} ({what})", head, "-" * len(head)]
        for r in rows:
            s = r.scores[protocol]
            cells = [f"{_pct(v):>{w}}" for v, w in zip((*s.iou, s.miou, s.fwiou), widths)]
            lines.append(f"{r.name:<{width}}  " + "  ".join(cells) + f"  {r.train_seconds:7.0f}")
        blocks.append("\n".join(lines))
    health = bench.health_lines()
    if health:
        blocks.append("Training health:\n" + "\n".join(f"  {line}" for line in health))
    return "\n\n".join(blocks)


def format_markdown(bench: MethodBenchmark, protocol: str = "mlps") -> str:
    """The ``protocol`` table as Markdown (for the README)."""
    classes = list(bench.rows[0].scores[protocol].class_names)
    lines = ["| Model | " + " | ".join((*classes, "mIoU", "fwIoU")) + " |",
             "|---" * (len(classes) + 3) + "|"]
    for r in [*bench.rows, *bench.baselines]:
        s = r.scores[protocol]
        lines.append(f"| {r.name} | " + " | ".join(_pct(v).strip() for v in (*s.iou, s.miou, s.fwiou)) + " |")
    return "\n".join(lines)


def _pct(v: float) -> str:
    return "   n/a" if math.isnan(v) else f"{100 * v:6.2f}"
