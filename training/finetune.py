"""``wsi-seg finetune``: teach a stage-2 model the user's corrections without forgetting the rest.

One round of the loop segment → correct (napari) → **fine-tune** → segment, over one or
several corrected results of the same model::

    wsi-seg finetune a.zarr b.zarr --model CKPT --out RUN [--data ORIGINAL]

Why not ``train --stage 2`` on the exported corrections alone: a few patches of one region
over-fit the model, which then gets worse where nobody corrected it (docs/benchmarks.md).
So an epoch here mixes (:class:`wsi_seg_training.finetune_config.ReplayConfig`):

* **corrected patches** (those holding a pixel the corrections changed): the changed pixels
  are targets, and so are those of the region the user edited and left as they were (each
  save records its region; ``--no-reviewed`` leaves them out); the patch's other pixels are
  ignored, since nobody said they are right; all weighted ``corrected_weight``;
* **replay of what the model already does**: patches of the same results that no correction
  touched, whose target is the starting model's own class probabilities (distillation,
  as in learning without forgetting; its hard labels with ``--replay-targets hard``, which
  measured worse: self-training on its own argmax drifts a weak class away);
* **replay of the original training set** (``--data``): its train patches with their masks,
  or, without masks, distilled like the above.

The encoder trains at a tenth of the heads' rate (or frozen), for a few epochs. Patches
are cut by ``wsi_seg.exports.patches.export_patches`` (into ``RUN/patches/``) and the
network, optimiser groups and run folder (lock, resume, ``config.yaml``, ``run.json``)
are stage 2's (:class:`wsi_seg_training.stage2.Stage2Trainer`). The checkpoint's
provenance names each result and each correction save it learned from.

Refused, one line each: a result segmented by another model (sha256) or with other
classes than ``--model``; corrections saved before the checkpoint was made (carried over
from an older model's result, or already learned) unless ``--allow-older-corrections``;
no corrected pixel in any result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from wsi_seg.errors import CheckpointError, ConfigError
from wsi_seg.exports.patches import export_patches, patch_starts
from wsi_seg.model import LoadedModel, load_checkpoint
from wsi_seg.model.predict_rules import IGNORE_LABEL
from wsi_seg.result.corrections import corrected_chunks, corrections_history, corrections_state
from wsi_seg.result.format import CORRECTED_NAME
from wsi_seg.result.reader import Result

from wsi_seg_training.augment import apply_joint_many, flips
from wsi_seg_training.datasets import BackgroundSeedParams, DatasetIndex, PatchRecord, open_checked_dataset
from wsi_seg_training.datasets.io import read_mask, read_rgb
from wsi_seg_training.encoder_training import parameter_groups
from wsi_seg_training.finetune_config import FinetuneConfig
from wsi_seg_training.stage2 import Stage2Trainer, _SegmentationForward, stage2_network
from wsi_seg_training.trainer import EpochCallback, LossValues, RunResult, TrainingParts

log = logging.getLogger(__name__)

PATCHES_DIR = "patches"  # RUN/patches/<k>-<result name>/: export_patches of each result


@dataclass
class ResultPlan:
    """One result to learn from: its corrected patches and the uncorrected ones replayed."""

    result: Result
    corrected: list[tuple[int, int]]  # level-0 (y, x) origins of patches holding a changed pixel
    replay: list[tuple[int, int]] = field(default_factory=list)
    saves: list[dict[str, Any]] = field(default_factory=list)  # labels/corrected's save records
    pixels_changed: int = 0
    taken: np.ndarray | None = None  # per label value, the pixels the corrections took from it


@dataclass(frozen=True)
class Item:
    """One training patch: its image, its labels (internal convention) and what they teach.

    ``kind``: ``corrected`` (targets: the pixels where ``labels`` differs from the model's
    ``own``), ``result`` (a replayed patch of a result: the starting model's probabilities,
    or with ``hard`` its ``labels``) or ``data`` (the original set: its mask ``labels``, or
    like a replayed patch without one)."""

    image: Path
    kind: str
    labels: Path | None = None
    own: Path | None = None
    reviewed: tuple[tuple[int, int, int, int], ...] = ()  # boxes (y0, x0, y1, x1) of the patch the user reviewed


class FinetuneDataset(Dataset):
    """Items as dicts of tensors: ``image`` (3, P, P) uint8; ``mask`` (P, P) uint8 hard targets,
    :data:`IGNORE_LABEL` where there are none; ``weight`` () float32, the loss weight of its
    hard targets; ``distill`` (P, P) uint8, 1 where the starting model's probabilities are
    to be kept (a soft-replayed patch; with ``keep_rest`` also the unchanged pixels of a
    corrected patch). All flipped together."""

    def __init__(self, items: list[Item], num_classes: int, corrected_weight: float, hard_replay: bool = False,
                 keep_rest: bool = False) -> None:
        self.items, self.num_classes, self.corrected_weight = items, num_classes, corrected_weight
        self.hard_replay, self.keep_rest = hard_replay, keep_rest
        self.transform = flips()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.items[i]
        rgb = read_rgb(item.image)
        hw = rgb.shape[:2]
        weight = 1.0
        keep = np.zeros(hw, np.uint8)  # 1: keep the starting model's probabilities here
        if item.kind == "corrected":
            target = read_mask(item.labels, self.num_classes, hw)
            own = read_mask(item.own, self.num_classes, hw)
            seen = target != own
            for y0, x0, y1, x1 in item.reviewed:  # reviewed and left as it was: the user's answer too
                seen[y0:y1, x0:x1] = True
            target = np.where(seen, target, IGNORE_LABEL).astype(np.uint8)
            weight = self.corrected_weight
            if self.keep_rest:
                keep[target == IGNORE_LABEL] = 1
        elif item.labels is not None and (item.kind == "data" or self.hard_replay):
            target = read_mask(item.labels, self.num_classes, hw)
        else:  # soft replay: no hard target
            target = np.full(hw, IGNORE_LABEL, np.uint8)
            keep[:] = 1
        image_t = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
        image_t, mask_t, keep_t = apply_joint_many(self.transform, image_t, torch.from_numpy(np.ascontiguousarray(target)),
                                                   torch.from_numpy(keep))
        return {"image": image_t.contiguous(), "mask": mask_t.contiguous(),
                "weight": torch.tensor(weight, dtype=torch.float32), "distill": keep_t.contiguous()}


def weighted_segmentation_loss(logits: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, N+1, h, w) logits (upsampled to the mask, as stage 2 does) against
    (B, P, P) targets, each image's pixels weighted by its ``weight`` (B,); the weighted mean
    over the pixels that have a target (0 when none has)."""
    logits = F.interpolate(logits.float(), size=tuple(mask.shape[-2:]), mode="bilinear", align_corners=False)
    per_pixel = F.cross_entropy(logits, mask.long(), ignore_index=IGNORE_LABEL, reduction="none")
    valid = (mask != IGNORE_LABEL).float() * weight[:, None, None]
    total = valid.sum()
    if float(total) == 0.0:
        return logits.sum() * 0.0
    return (per_pixel * valid).sum() / total


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Mean KL(teacher ‖ student) of the per-pixel class distributions over the pixels
    ``where`` (B, P, P) selects (averaged down to the logits' resolution); 0 where none is."""
    weight = F.adaptive_avg_pool2d(where.float()[:, None], tuple(logits.shape[-2:]))[:, 0]
    total = weight.sum()
    if float(total) == 0.0:
        return logits.sum() * 0.0
    student = F.log_softmax(logits.float(), dim=1)
    teacher = F.log_softmax(teacher_logits.float(), dim=1)
    kl = (teacher.exp() * (teacher - student)).sum(dim=1)  # (B, h, w)
    return (kl * weight).sum() / total


# -- checking and planning ------------------------------------------------------------------

def _checkpoint_made(model: LoadedModel) -> str | None:
    """When the checkpoint's training finished (UTC ISO), if it records it."""
    return (model.config.provenance.get("training") or {}).get("finished_utc")


def check_result(path: str | Path, model: LoadedModel, allow_older: bool) -> Result:
    """The result at ``path``, checked against ``model``: same weights (sha256), same classes,
    corrections not older than the checkpoint (unless ``allow_older``)."""
    result = Result.open(path)
    recorded = result.provenance.model.sha256
    if recorded != model.sha256:
        raise CheckpointError(
            f"{result.path}: segmented by another model (sha256 {str(recorded)[:12]}…) than --model {model.path} "
            f"({model.sha256[:12]}…); fine-tune the model it was segmented with, or re-segment it with --model")
    if tuple(result.class_names) != tuple(model.config.class_names):
        raise CheckpointError(
            f"{result.path}: classes {', '.join(result.class_names)} differ from --model {model.path}'s "
            f"{', '.join(model.config.class_names)}")
    if allow_older:
        return result
    made = _checkpoint_made(model)
    state = corrections_state(result)
    carried = state.get("carried_from") or {}
    if carried and carried.get("model_sha256") not in (None, model.sha256):
        raise ConfigError(
            f"{result.path}: its corrections were carried over from a result of another model "
            f"(sha256 {str(carried.get('model_sha256'))[:12]}…), older than --model {model.path}; check them in "
            "napari and save again, or pass --allow-older-corrections")
    older = [s for s in corrections_history(result) if made and str(s.get("utc", "")) < made]
    if older:
        raise ConfigError(
            f"{result.path}: {len(older)} correction save(s) (the first {older[0].get('utc')}) predate --model "
            f"{model.path} ({made}): made on an older model's result or already learned; pass "
            "--allow-older-corrections to learn them anyway")
    return result


def corrected_origins(result: Result, patch_px: int) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Level-0 origins of the export grid's patches that hold a pixel the corrections changed
    (every patch that overlaps one: the grid's last row and column overlap the one before),
    and per label value (0 = background, 1..N) the pixels the corrections took from it. Only
    the chunks the saves recorded are read."""
    n = len(result.class_names)
    taken = np.zeros(n + 1, np.int64)
    h, w = result.level_shape(0)
    ys_start, xs_start = patch_starts(h, patch_px), patch_starts(w, patch_px)
    if not ys_start or not xs_start:
        return [], taken
    found: set[tuple[int, int]] = set()
    for chunk in corrected_chunks(result):
        y0, x0, diff = chunk.y0, chunk.x0, chunk.changed
        taken += np.bincount(chunk.before[diff].ravel(), minlength=n + 1)[: n + 1]
        for sy in (s for s in ys_start if s < y0 + diff.shape[0] and s + patch_px > y0):
            for sx in (s for s in xs_start if s < x0 + diff.shape[1] and s + patch_px > x0):
                window = diff[max(0, sy - y0) : sy + patch_px - y0, max(0, sx - x0) : sx + patch_px - x0]
                if window.any():
                    found.add((sy, sx))
    return sorted(found), taken


def patch_classes(result: Result, patch_px: int) -> dict[tuple[int, int], np.ndarray]:
    """Per origin of the export grid, the share of each label value (0 = background, 1..N)
    in the patch's current labels, judged on a coarse pyramid level (a patch spans ≥ 8 of
    its pixels)."""
    h, w = result.level_shape(0)
    n = len(result.class_names)
    level = max((lv for lv in result.levels if patch_px / 2**lv >= 8), default=0)
    coarse = np.asarray(result.mask(level, result.current_labels)[:])
    f = 2**level
    out = {}
    for y in patch_starts(h, patch_px):
        for x in patch_starts(w, patch_px):
            cell = coarse[y // f : (y + patch_px) // f, x // f : (x + patch_px) // f]
            if cell.size:
                out[(y, x)] = np.bincount(cell.ravel(), minlength=n + 1)[: n + 1] / cell.size
    return out


def draw_replay(shares: dict[tuple[int, int], np.ndarray], taken: np.ndarray, want: int, min_tissue: float,
                rng: random.Random) -> list[tuple[int, int]]:
    """``want`` uncorrected patches to replay: half where the model's labels hold most of the
    classes the corrections took pixels from (so that it keeps them where they are right),
    half at random among the patches with ``min_tissue`` tissue."""
    pool = sorted(o for o, share in shares.items() if 1.0 - share[0] >= max(min_tissue, 1e-9))
    if want >= len(pool):
        return pool
    weights = taken.astype(np.float64)
    weights[0] = 0.0
    picked: list[tuple[int, int]] = []
    if weights.sum() > 0:
        score = {o: float(shares[o] @ weights) / weights.sum() for o in pool}
        ranked = sorted(pool, key=lambda o: (-score[o], rng.random()))
        picked = [o for o in ranked[: want // 2] if score[o] > 0]
    rest = [o for o in pool if o not in set(picked)]
    return sorted(picked + rng.sample(rest, want - len(picked)))


def plan_results(paths: list[str], model: LoadedModel, cfg: FinetuneConfig) -> list[ResultPlan]:
    """Each result checked, its corrected patches found and its replayed ones drawn (seeded,
    :func:`draw_replay`); a ConfigError when no result holds a corrected pixel."""
    patch_px = int(model.config.patch_size_px)
    plans = []
    seen: set[Path] = set()
    for path in paths:
        result = check_result(path, model, cfg.allow_older)
        if result.path.resolve() in seen:
            raise ConfigError(f"{result.path}: given twice")
        seen.add(result.path.resolve())
        corrected, taken = corrected_origins(result, patch_px)
        plans.append(ResultPlan(result, corrected, saves=corrections_history(result), pixels_changed=int(taken.sum()),
                                taken=taken))
    n_corrected = sum(len(p.corrected) for p in plans)
    if n_corrected == 0:
        names = ", ".join(str(p.result.path) for p in plans)
        raise ConfigError(f"{names}: no corrected pixel to learn from (labels/{CORRECTED_NAME} is absent or equals "
                          "the model's mask); paint and save corrections in napari (wsi-seg view) first")
    taken_all = sum(p.taken for p in plans)
    rng = random.Random(cfg.seed)
    for plan in plans:
        if not plan.corrected:
            log.warning("%s: no corrections; its patches are replayed only", plan.result.path)
        share = len(plan.corrected) if plan.corrected else n_corrected / len(plans)
        want = round(cfg.replay.result_ratio * share)
        shares = {o: s for o, s in patch_classes(plan.result, patch_px).items() if o not in set(plan.corrected)}
        plan.replay = draw_replay(shares, taken_all, want, cfg.replay.min_tissue, rng)
    return plans


def corrections_digest(plans: list[ResultPlan]) -> list[dict[str, Any]]:
    """What makes two runs' inputs the same: each result (path, slide, completion) and a hash
    of its correction saves."""
    return [{"path": str(p.result.path.resolve()),
             "slide_fingerprint": p.result.provenance.slide.fingerprint,
             "completed_utc": p.result.provenance.raw.get("completed_utc"),
             "corrections_sha256": hashlib.sha256(json.dumps(p.saves, sort_keys=True).encode()).hexdigest()}
            for p in plans]


# -- the run ----------------------------------------------------------------------------------

class FinetuneTrainer(Stage2Trainer):
    """Stage 2's trainer over a mix of corrected and replayed patches, with a weighted loss."""

    cfg: FinetuneConfig  # type: ignore[assignment]
    metrics_columns = ("epoch", "loss", "ce", "distill", "lr", "seconds", "val_miou", "val_seconds")

    def __init__(self, cfg: FinetuneConfig, results: list[str]) -> None:
        super().__init__(cfg)  # type: ignore[arg-type]
        self.results = [str(r) for r in results]
        if not self.results:
            raise ConfigError("no result given: wsi-seg finetune RESULT… --model CKPT --out RUN")

    def prepare(self) -> None:
        cfg = self.cfg
        self.init = load_checkpoint(cfg.model)
        if self.init.config.stage != 2:
            raise CheckpointError(f"{cfg.model}: a stage-{self.init.config.stage} checkpoint; finetune takes the "
                                  "stage-2 model the results were segmented with")
        self.plans = plan_results(self.results, self.init, cfg)
        self.labels = None
        self.index: DatasetIndex | None = None
        if cfg.data.path:
            self.index = open_checked_dataset(cfg.data.path, cfg.data.format)
            if tuple(self.index.class_names) != tuple(self.init.config.class_names):
                raise CheckpointError(f"{self.index.root}: classes {', '.join(self.index.class_names)} differ from "
                                      f"--model {cfg.model}'s {', '.join(self.init.config.class_names)}")

    def fingerprint_facts(self) -> dict[str, Any]:
        return {"init_sha256": self.init.sha256, "results": corrections_digest(self.plans)}

    def build(self) -> TrainingParts:
        cfg = self.cfg
        items = self._export_items()
        net = stage2_network(self.init).to(self.device)
        net.cam_head.requires_grad_(False)
        net.train()
        groups = parameter_groups(net, cfg.optim.lr, cfg.encoder)
        optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.nr_loss = None
        self.val_loader = (self.make_val_loader(self.index, BackgroundSeedParams(enabled=False))
                           if self.index is not None else None)
        self.train_items = items
        dataset = FinetuneDataset(items, len(self.init.config.class_names), cfg.replay.corrected_weight,
                                  hard_replay=cfg.replay.targets == "hard", keep_rest=cfg.replay.keep_rest)
        self.teacher = None
        if cfg.replay.keep_rest or (cfg.replay.targets == "soft"
                                    and any(it.kind == "result" or it.labels is None for it in items)):
            self.teacher = _SegmentationForward(stage2_network(self.init)).to(self.device).eval().requires_grad_(False)
        if len(dataset) < cfg.batch_size:
            raise ConfigError(f"{len(dataset)} patches to train on, fewer than one batch of {cfg.batch_size}; "
                              "lower --batch-size")
        return TrainingParts(net=net, optimizer=optimizer, dataset=dataset, forward=_SegmentationForward(net))

    def _export_items(self) -> list[Item]:
        """Cut each result's planned patches (``RUN/patches/``) and draw the original set's."""
        cfg = self.cfg
        items: list[Item] = []
        self.counts = {"corrected": 0, "result": 0, "data": 0}
        for k, plan in enumerate(self.plans):
            out = self.run_dir / PATCHES_DIR / f"{k}-{plan.result.name}"
            export = export_patches(plan.result.path, out, origins=[*plan.corrected, *plan.replay], min_tissue=0.0,
                                    overwrite=True, model_masks=True)
            corrected = {f"{plan.result.name}_y{y}_x{x}.png": (y, x) for y, x in plan.corrected}
            regions = [s["region"] for s in plan.saves if s.get("region")] if cfg.replay.reviewed else []
            for name in sorted(p.name for p in (export.out / "img").iterdir()):
                kind = "corrected" if name in corrected else "result"
                reviewed = _local_boxes(regions, corrected[name], export.patch_px) if kind == "corrected" else ()
                item = Item(export.out / "img" / name, kind, export.out / "mask" / name, export.out / "model_mask" / name,
                            reviewed)
                items += [item] * (cfg.replay.repeat if kind == "corrected" else 1)
                self.counts[kind] += 1
        if self.index is not None and cfg.replay.data_ratio > 0:
            items += self._data_items(round(cfg.replay.data_ratio * self.counts["corrected"]))
        return items

    def _data_items(self, n: int) -> list[Item]:
        """``n`` train patches of ``--data`` (seeded): their masks are targets; those without
        one keep the starting model's probabilities, or with hard replay are left out."""
        records: list[PatchRecord] = list(self.index.split("train"))
        if self.cfg.replay.targets == "hard":
            records = [r for r in records if r.mask is not None]
        picked = random.Random(self.cfg.seed + 1).sample(records, min(n, len(records)))
        self.counts["data"] = len(picked)
        return [Item(r.image, "data", labels=r.mask) for r in picked]

    def start_epoch(self, noise_seed: int) -> None:
        """No loss of its own draws random numbers (stage 2's Gumbel softmax is not used)."""

    def step(self, batch: dict[str, torch.Tensor]) -> LossValues:
        images = batch["image"].to(self.device, non_blocking=True)
        with self.autocast:
            logits = self.forward(images)
        mask = batch["mask"].to(self.device, non_blocking=True)
        ce = weighted_segmentation_loss(logits, mask, batch["weight"].to(self.device))
        if self.teacher is None:
            return {"loss": ce, "ce": ce.detach()}
        which = batch["distill"].to(self.device)
        with torch.no_grad(), self.autocast:
            teacher = self.teacher(images) if float(which.sum()) else logits.detach()
        kd = distillation_loss(logits, teacher, which)
        return {"loss": ce + self.cfg.replay.distill_weight * kd, "ce": ce.detach(), "distill": kd.detach()}

    def run_facts(self) -> dict[str, Any]:
        return {"finetune": self._learned(), "init": {"path": str(Path(self.cfg.model).resolve()),
                                                      "sha256": self.init.sha256},
                "model": self.net.cfg.to_dict()}

    def _learned(self) -> dict[str, Any]:
        """Which results, corrections and patches the run learned from."""
        return {
            "results": [{**digest, "corrected_patches": len(p.corrected), "replayed_patches": len(p.replay),
                         "pixels_changed": p.pixels_changed,
                         "saves": [{k: s.get(k) for k in ("author", "utc", "pixels_changed", "region")} for s in p.saves]}
                        for p, digest in zip(self.plans, corrections_digest(self.plans))],
            "patches": dict(self.counts),
            "data": str(self.index.root.resolve()) if self.index is not None else None,
            "replay": dataclasses.asdict(self.cfg.replay),
        }

    def save_result(self) -> Path:
        from wsi_seg.model import save_checkpoint

        cfg, init = self.cfg, self.init
        provenance = {"training": {
            "stage": 2,
            "method": "fine-tuning on corrections with replay (wsi-seg finetune)",
            "init": {"path": str(Path(cfg.model).resolve()), "sha256": init.sha256, "stage": 2},
            "finetune": self._learned(),
            "train_patches": len(self.train_items),
            "optim": {"name": "AdamW", **dataclasses.asdict(cfg.optim)},
            "encoder": dataclasses.asdict(cfg.encoder),
            "fine_tuned_from": init.config.provenance.get("training"),
            **self.provenance(),
        }}
        return save_checkpoint(self.net, self.result_root / "checkpoint", config=self.net.cfg.replace(provenance=provenance))


def _local_boxes(regions: list[list[int]], origin: tuple[int, int], patch_px: int) -> tuple[tuple[int, int, int, int], ...]:
    """The level-0 boxes ``regions`` (y0, x0, y1, x1) clipped to the patch at ``origin``, in its pixels."""
    oy, ox = origin
    out = []
    for y0, x0, y1, x1 in regions:
        box = (max(0, y0 - oy), max(0, x0 - ox), min(patch_px, y1 - oy), min(patch_px, x1 - ox))
        if box[2] > box[0] and box[3] > box[1]:
            out.append(box)
    return tuple(out)


def finetune(cfg: FinetuneConfig, results: list[str], overwrite: bool = False,
             on_epoch_end: EpochCallback | None = None) -> RunResult:
    """Fine-tune ``cfg.model`` on the corrections of ``results`` into ``cfg.out`` (resumable,
    under the run folder's lock: :meth:`wsi_seg_training.trainer.Trainer.run`)."""
    return FinetuneTrainer(cfg, results).run(overwrite, on_epoch_end)
