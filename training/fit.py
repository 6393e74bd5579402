"""``wsi-seg fit``: the whole thesis recipe in one resumable command.

Steps, each in its own folder of ``RUN``::

    RUN/pretrain/         optional NT-Xent pre-training (§4.2), when the config has ``pretrain``
    RUN/stage1/           MLSM + λ·PSCL (§4.3), from ImageNet or the pre-trained encoder
    RUN/pseudo_labels/    eq. 4.9 pseudo-labels of the train split, gated as stage 1 was
    RUN/stage2/           encoder + pixel decoder on the pseudo-labels (§4.4)
    RUN/eval/             scores of stage 1 (predicted classes, and the gt-class oracle) and
                          stage 2 under both protocols
    RUN/report.md         per-class IoU, mIoU, fwIoU per step, beside the thesis' numbers
                          for LUAD-HistoSeg / BCSS-WSSS
    RUN/fit.json          the resolved recipe
    RUN/steps.json        the sha256 of the result each training step was made from

A config file (YAML/TOML/JSON) holds ``pretrain``, ``stage1``, ``stage2`` (each any subset
of that command's config, nested as in its own config files), ``evaluate`` (``split``,
``batch_size``) and top-level ``device``, ``seed``, ``workers``, ``format``, ``precision``,
``progress``. Rerunning
resumes the first unfinished step; a finished recipe is a no-op that says so. More epochs
for a step continue its run (``--epochs`` of ``wsi-seg train``) and redo what depends on
it: a step whose upstream result changed (``RUN/steps.json`` records the sha256 of what
each was made from) trains again from scratch, pseudo-labels and scores are redone
when the checkpoint they were made from changed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wsi_seg_training.config import (
    PretrainConfig,
    Stage1Config,
    Stage2Config,
    load_config_file,
)
from wsi_seg_training.reference import REFERENCE, reference_rows

from wsi_seg.errors import ConfigError
from wsi_seg.lock import folder_lock

log = logging.getLogger(__name__)

_TOP_KEYS = ("format", "device", "seed", "workers", "precision", "progress", "pretrain", "stage1", "stage2",
             "evaluate")


@dataclass
class FitPlan:
    """The resolved recipe: one config per training step, and how to evaluate."""

    data: Path
    out: Path
    pretrain: PretrainConfig | None
    stage1: Stage1Config
    stage2: Stage2Config
    split: str = "test"
    eval_batch_size: int = 8
    device: str = "auto"
    workers: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": str(self.data), "out": str(self.out), "device": self.device,
            "pretrain": self.pretrain.to_dict() if self.pretrain else None,
            "stage1": self.stage1.to_dict(), "stage2": self.stage2.to_dict(),
            "evaluate": {"split": self.split, "batch_size": self.eval_batch_size},
        }


@dataclass
class StepScores:
    name: str
    mode: str
    scores: dict[str, Any] = field(default_factory=dict)  # protocol → SegmentationScores


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def plan_fit(data: str | Path, out: str | Path, config: str | Path | None = None,
             overrides: dict[str, Any] | None = None) -> FitPlan:
    """Read the recipe (defaults ← ``config`` ← ``overrides``, same nesting) into step configs."""
    raw: dict[str, Any] = load_config_file(config) if config is not None else {}
    raw = _merge(raw, overrides or {})
    source = str(config) if config is not None else "fit"
    unknown = sorted(set(raw) - set(_TOP_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known: {', '.join(_TOP_KEYS)}")
    data, out = Path(data), Path(out)
    common: dict[str, Any] = {k: raw[k] for k in ("device", "seed", "precision", "progress") if k in raw}
    workers = raw.get("workers", 0)
    fmt = raw.get("format", "auto")

    def build(cls: type, section: str, fixed: dict[str, Any]) -> Any:
        body = raw.get(section) or {}
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: {section} must be a mapping of settings")
        merged = _merge(_merge({**common, "data": {"workers": workers}}, body), fixed)
        return cls.from_dict(merged, source=f"{source} ({section})")

    pretrain = None
    if raw.get("pretrain"):
        pretrain = build(PretrainConfig, "pretrain", {"out": str(out / "pretrain"),
                                                     "data": {"path": str(data), "format": fmt}})
    s1_fixed: dict[str, Any] = {"out": str(out / "stage1"), "data": {"path": str(data), "format": fmt}}
    if pretrain is not None:
        s1_fixed["model"] = {"pretrained": str(out / "pretrain"), "preset": pretrain.model.preset,
                             "backbone": pretrain.model.backbone}
    stage1 = build(Stage1Config, "stage1", s1_fixed)
    stage2 = build(Stage2Config, "stage2", {
        "out": str(out / "stage2"), "init": str(out / "stage1"),
        "data": {"path": str(data), "format": fmt, "pseudo_labels": str(out / "pseudo_labels")}})
    for cfg in (pretrain, stage1, stage2):
        if cfg is not None:
            cfg.validate()
    ev = raw.get("evaluate") or {}
    extra = sorted(set(ev) - {"split", "batch_size"})
    if extra:
        raise ConfigError(f"{source}: unknown evaluate key(s) {', '.join(extra)}; known: batch_size, split")
    split = ev.get("split", "test")
    if split not in ("val", "test"):
        raise ConfigError(f"{source}: evaluate.split must be val or test, got {split!r}")
    return FitPlan(data=data, out=out, pretrain=pretrain, stage1=stage1, stage2=stage2, split=split,
                   eval_batch_size=int(ev.get("batch_size", 8)), device=stage1.device, workers=workers)


STEPS_NAME = "steps.json"  # RUN/steps.json: the upstream result each training step's run was made from


def _upstream(path: Path) -> dict[str, str]:
    """What a step depends on besides its settings: the sha256 of the result it starts from."""
    from wsi_seg.model.checkpoint import file_sha256

    return {str(path): file_sha256(path)}


def _train_step(name: str, train: Any, cfg: Any, finished_file: Path, report: Any,
                upstream: dict[str, str] | None = None) -> bool:
    """Run one training step unless it finished with these settings; True when it ran.

    More epochs than its run did continue it. ``upstream`` (what it starts from): when it
    differs from what the step's run was made from (RUN/steps.json, written once the
    run's state or result is known to be made from it), that run is stale and the step
    trains again from scratch."""
    from wsi_seg_training.loop import epochs_done, run_finished

    from wsi_seg.errors import OutputError

    out = Path(cfg.out)
    steps_file = out.parent / STEPS_NAME
    steps = json.loads(steps_file.read_text(encoding="utf-8")) if steps_file.is_file() else {}
    recorded = steps.get(out.name)

    def record(*_: Any) -> None:
        if upstream is not None and steps.get(out.name) != upstream:
            steps[out.name] = upstream
            steps_file.write_text(json.dumps(steps, indent=1) + "\n", encoding="utf-8")

    done = epochs_done(out)
    stale = upstream is not None and recorded is not None and recorded != upstream and done > 0
    if not stale and run_finished(out, cfg.epochs, finished_file):
        try:  # the trainer checks the settings and inputs: the same → "already holds a finished run"
            train(cfg)
        except OutputError:
            record()
            report(f"{name}: finished ({cfg.epochs} epochs) — skipped")
            return False
    if stale:
        report(f"{name}: what it was trained from changed ({', '.join(upstream)}) — training again "
               f"({cfg.epochs} epochs) → {out}")
    elif done:
        report(f"{name}: training from epoch {done} to {cfg.epochs} → {out}")
    else:
        report(f"{name}: training ({cfg.epochs} epochs) → {out}")
    train(cfg, overwrite=stale, on_epoch_end=record)  # an epoch's state saved: made from ``upstream``
    record()
    return True


def _pseudo_labels_step(plan: FitPlan, report: Any) -> bool:
    from wsi_seg_training.pseudo_labels import MANIFEST_NAME, generate_pseudo_labels

    from wsi_seg.model.checkpoint import file_sha256

    out = plan.out / "pseudo_labels"
    ckpt = plan.out / "stage1" / "checkpoint"
    sha = file_sha256(ckpt / "model.safetensors")
    manifest = out / MANIFEST_NAME
    if manifest.is_file():
        saved = json.loads(manifest.read_text(encoding="utf-8"))
        if saved.get("checkpoint", {}).get("sha256") == sha and "train" in saved.get("splits", {}):
            report("pseudo-labels: written for this stage-1 checkpoint — skipped")
            return False
    report(f"pseudo-labels: train split → {out} (gated as stage 1 was trained)")
    generate_pseudo_labels(ckpt, plan.data, out, format=plan.stage1.data.format, device=plan.device,
                           workers=plan.workers, overwrite=True, progress=plan.stage1.progress)
    return True


def _evaluate(plan: FitPlan, model: Path, image_labels: str) -> tuple[str, dict[str, Any]]:
    """(mode line, protocol → scores) of a checkpoint, cached in RUN/eval by its sha256."""
    from wsi_seg_training.evaluate import evaluate_checkpoint

    from wsi_seg.model.checkpoint import file_sha256
    from wsi_seg.reports.metrics import SegmentationScores

    cache_dir = plan.out / "eval"
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache = cache_dir / f"{model.parent.name}_{plan.split}_{image_labels}.json"
    sha = file_sha256(model / "model.safetensors")
    if cache.is_file():
        saved = json.loads(cache.read_text(encoding="utf-8"))
        if saved.get("sha256") == sha:
            return saved["mode"], {s["protocol"]: SegmentationScores(**s) for s in saved["scores"]}
    result = evaluate_checkpoint(model, plan.data, split=plan.split, format=plan.stage1.data.format,
                                 batch_size=plan.eval_batch_size, device=plan.device, workers=plan.workers,
                                 image_labels=image_labels, progress=plan.stage1.progress)
    mode = result.mode_line() + (f"; {result.gating_summary()}" if result.gating_counts else "")
    payload = {"sha256": result.sha256, **result.to_extra(), "mode": mode, "scores": [asdict(s) for s in result.scores]}
    cache.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return mode, {s.protocol: s for s in result.scores}


@dataclass
class FitResult:
    out: Path
    report: Path
    ran: list[str]
    steps: list[StepScores]


def fit(plan: FitPlan, report: Any = log.info) -> FitResult:
    """Run every step of ``plan`` that is not finished; write RUN/report.md."""
    with folder_lock(plan.out):  # one fit per RUN folder; each step's run folder has its own lock too
        return _fit_locked(plan, report)


def _fit_locked(plan: FitPlan, report: Any) -> FitResult:
    from wsi_seg_training.pretrain import WEIGHTS_NAME, train_pretrain
    from wsi_seg_training.stage1 import train_stage1
    from wsi_seg_training.stage2 import train_stage2

    (plan.out / "fit.json").write_text(json.dumps(plan.to_dict(), indent=1, default=str) + "\n", encoding="utf-8")
    ran: list[str] = []
    weights = plan.out / "pretrain" / WEIGHTS_NAME
    if plan.pretrain is not None and _train_step("pre-training", train_pretrain, plan.pretrain, weights, report):
        ran.append("pretrain")
    s1_ckpt = plan.out / "stage1" / "checkpoint"
    if _train_step("stage 1", train_stage1, plan.stage1, s1_ckpt / "model.safetensors", report,
                   _upstream(weights) if plan.pretrain is not None else None):
        ran.append("stage1")
    if _pseudo_labels_step(plan, report):
        ran.append("pseudo-labels")
    s2_ckpt = plan.out / "stage2" / "checkpoint"
    if _train_step("stage 2", train_stage2, plan.stage2, s2_ckpt / "model.safetensors", report,
                   _upstream(s1_ckpt / "model.safetensors")):
        ran.append("stage2")
    steps = []
    for name, model, mode in (("Stage 1 (predicted classes)", s1_ckpt, "predicted"),
                              ("Stage 1 (oracle: gt classes)", s1_ckpt, "gt"),
                              ("Stage 2", s2_ckpt, "predicted")):
        mode_line, scores = _evaluate(plan, model, mode)
        steps.append(StepScores(name=name, mode=mode_line, scores=scores))
    path = plan.out / "report.md"
    text = format_report(plan, steps)
    changed = not path.is_file() or path.read_text(encoding="utf-8") != text
    path.write_text(text, encoding="utf-8")
    if changed:
        ran.append("report")
    return FitResult(out=plan.out, report=path, ran=ran, steps=steps)


def _pct(v: float) -> str:
    import math

    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def format_report(plan: FitPlan, steps: list[StepScores]) -> str:
    """RUN/report.md: one table per protocol, the thesis' numbers beside ours where known."""
    from wsi_seg_training.datasets import open_dataset

    index = open_dataset(plan.data, plan.stage1.data.format, check_images=False)
    fmt = index.info.name
    s1 = plan.stage1
    lines = [
        f"# wsi-seg fit: {plan.out.name}",
        "",
        f"Dataset `{plan.data}` ({fmt}; {', '.join(f'{len(v)} {k}' for k, v in index.splits.items())}), "
        f"scored on its {plan.split} split.",
        "",
        f"- pre-training: {'NT-Xent, ' + str(plan.pretrain.epochs) + ' epochs' if plan.pretrain else 'none'}",
        f"- stage 1: preset {s1.model.backbone or s1.model.preset}, weights {s1.model.pretrained} "
        f"(sha256 {(s1.model.pretrained_sha256 or '-')[:12]}), {s1.epochs} epochs, batch {s1.batch_size}, "
        f"SGD lr {s1.optim.lr} momentum {s1.optim.momentum:g} wd {s1.optim.weight_decay:g}, "
        f"PSCL {'on (λ ' + str(s1.pscl.weight) + ')' if s1.pscl.enabled else 'off'}, "
        f"gating {s1.pscl.predict_rules().gating_line()}",
        f"- stage 2: {plan.stage2.loss.name} loss, {plan.stage2.epochs} epochs, batch {plan.stage2.batch_size}",
        "",
        "How each row was scored:",
        "",
    ]
    lines += [f"- {s.name}: {s.mode}" for s in steps]
    refs = reference_rows(fmt)
    for protocol in ("mlps", "tpro"):
        first = steps[0].scores[protocol]
        classes = list(first.class_names)
        what = ("ground-truth background excluded" if protocol == "mlps"
                else "background scored as a class, mIoU over the tissue classes")
        lines += ["", f"## IoU (%), protocol {protocol} ({what})", "",
                  "| Model | " + " | ".join((*classes, "mIoU", "fwIoU")) + " |",
                  "|---" * (len(classes) + 3) + "|"]
        for s in steps:
            sc = s.scores[protocol]
            lines.append(f"| {s.name} | " + " | ".join(_pct(v) for v in (*sc.iou, sc.miou, sc.fwiou)) + " |")
        if protocol == "mlps" and refs:
            for name, row in refs:
                cells = [row.get(c) for c in (*classes, "mIoU", "fwIoU")]
                lines.append(f"| *thesis: {name}* | " + " | ".join("" if v is None else f"{v:.2f}" for v in cells) + " |")
    if refs:
        lines += ["", REFERENCE["note"]]
    else:
        lines += ["", f"No thesis reference numbers for a {fmt} dataset (they exist for LUAD-HistoSeg and BCSS-WSSS)."]
    return "\n".join(lines) + "\n"
