"""Stage-1 pseudo-labels (thesis eq. 4.9) and the CAMs stage 2's noise-reduced loss needs.

Output of :func:`generate_pseudo_labels` (``OUT`` = ``--out``)::

    OUT/<split>/mask/<patch stem>.png   index PNG, 0 = background, 1..N = classes
                                         (palette = class colours, background white)
    OUT/<split>/cams/<patch stem>.npz   "cams": uint8 (N, H, W) = round(255 · CAM),
                                         absent classes zeroed, at patch resolution
    OUT/pseudo_labels.json              manifest: conventions, classes, checkpoint, counts

Note the mask convention differs from the datasets' ground truth (there N =
background): pseudo-labels use the internal convention of ``wsi_seg.reports.metrics``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from wsi_seg_training.config import DEFAULT_GATING, RUN_GATING, PsclConfig
from wsi_seg_training.datasets import BackgroundSeedParams, PatchDataset, open_dataset

from wsi_seg.errors import ConfigError, OutputError
from wsi_seg.lock import folder_lock
from wsi_seg.model import CamHead, PredictRules, load_checkpoint
from wsi_seg.model.config import ModelConfig
from wsi_seg.model.predict_rules import IGNORE_LABEL

log = logging.getLogger(__name__)

MANIFEST_NAME = "pseudo_labels.json"
PSEUDO_LABEL_FORMAT_VERSION = 1
CAM_SCALE = 255
BACKGROUND_COLOR = (255, 255, 255)




def resolve_rules(cfg: ModelConfig, gating_threshold: float | str | None, gating_epsilon: float | None,
                  gating_fallback: str | None = None, epsilon_reading: str | None = None) -> PredictRules:
    """The rules to predict a checkpoint's patches with: the gating its stage-1 run used
    (``gating_threshold`` ``"run"``), none (None) or τ_g given (a τ_g means the floor
    reading of ε unless ``epsilon_reading`` says otherwise); ``gating_epsilon``,
    ``gating_fallback`` and ``epsilon_reading`` None keep the run's."""
    run = PredictRules.of_checkpoint(cfg)
    if gating_threshold == RUN_GATING:
        gating_threshold = run.gating_threshold
    elif gating_threshold == DEFAULT_GATING:
        default = PsclConfig().predict_rules()
        gating_threshold = default.gating_threshold
        epsilon_reading = epsilon_reading or default.epsilon_reading
        gating_epsilon = default.gating_epsilon if gating_epsilon is None else gating_epsilon
    elif isinstance(gating_threshold, float | int) and epsilon_reading is None:
        epsilon_reading = "floor"  # a τ_g given is a τ_g used
    elif isinstance(gating_threshold, str):
        raise ConfigError(f"gating threshold must be a number, 'run', 'default' or None, got {gating_threshold!r}")
    return run.replace(gating_threshold=gating_threshold,
                       gating_epsilon=run.gating_epsilon if gating_epsilon is None else gating_epsilon,
                       gating_fallback=gating_fallback or run.gating_fallback,
                       epsilon_reading=epsilon_reading or run.epsilon_reading)


def palette_of(class_colors: tuple[tuple[int, int, int], ...]) -> list[int]:
    colors = [BACKGROUND_COLOR, *class_colors]
    flat = [v for c in colors for v in c]
    return flat + [0] * (768 - len(flat))


def write_label_png(path: Path, mask: np.ndarray, palette: list[int]) -> None:
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette(palette)
    tmp = path.with_name(path.name + ".tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)


def write_cams(path: Path, cams: np.ndarray) -> None:
    """(N, H, W) float CAMs in [0, 1] → compressed npz of uint8 ``cams``."""
    scaled = np.rint(np.clip(cams, 0.0, 1.0) * CAM_SCALE).astype(np.uint8)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(tmp, cams=scaled)
    os.replace(tmp, path)


def read_cams(path: str | Path) -> np.ndarray:
    """(N, H, W) float32 CAMs in [0, 1] from a file written by :func:`write_cams`."""
    with np.load(path, allow_pickle=False) as data:
        return data["cams"].astype(np.float32) / CAM_SCALE


@dataclass
class PseudoLabelResult:
    out: Path
    split: str
    patches: int
    manifest: Path
    fully_gated: int = 0  # patches whose every class the gate rejected (see PredictRules.gating_fallback)
    rules: PredictRules | None = None


def generate_pseudo_labels(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    split: str = "train",
    format: str = "auto",
    batch_size: int = 8,
    device: str = "auto",
    workers: int = 0,
    gating_threshold: float | str | None = RUN_GATING,
    overwrite: bool = False,
    progress: bool = True,
    gating_epsilon: float | None = None,
    gating_fallback: str | None = None,
    epsilon_reading: str | None = None,
) -> PseudoLabelResult:
    """Write eq. 4.9 pseudo-labels and CAMs of a stage-1 checkpoint for one split.

    Gating (eq. 4.4–4.5): by default as the stage-1 run was trained (``"run"``); None
    turns it off, a number sets τ_g; ``gating_epsilon`` None keeps the run's ε."""
    from tqdm import tqdm

    from wsi_seg.inference.runtime import resolve_device

    dev = resolve_device(device)
    loaded = load_checkpoint(model, device=dev)
    cfg = loaded.config
    if not isinstance(loaded.net.head, CamHead):
        raise ConfigError(f"{model}: pseudo-labels come from a stage-1 checkpoint; this one is stage {cfg.stage}")
    rules = resolve_rules(cfg, gating_threshold, gating_epsilon, gating_fallback, epsilon_reading)
    index = open_dataset(data, format)
    if tuple(index.class_names) != tuple(cfg.class_names):
        raise ConfigError(
            f"{data}: dataset classes {', '.join(index.class_names)} differ from the checkpoint's "
            f"{', '.join(cfg.class_names)}"
        )
    records = index.split(split)
    out = Path(out)
    with folder_lock(out):  # one writer per pseudo-label folder
        mask_dir, cam_dir = out / split / "mask", out / split / "cams"
        if mask_dir.exists() and any(mask_dir.iterdir()) and not overwrite:
            raise OutputError(f"{mask_dir}: already holds pseudo-labels; use --overwrite or another --out")
        mask_dir.mkdir(parents=True, exist_ok=True)
        cam_dir.mkdir(parents=True, exist_ok=True)
        dataset = PatchDataset(records, index.num_classes, background_seed=BackgroundSeedParams.of_model(cfg))
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
        palette = palette_of(cfg.class_colors)
        net = loaded.net.eval()
        fully_gated = ignored_pixels = 0
        with torch.inference_mode():
            for batch in tqdm(loader, desc=f"pseudo-labels {split}", unit="batch", disable=not progress):
                # the CAM head's predict, as ``wsi-seg segment``'s, with the patch labels known here
                labels = net.predict(batch["image"].to(dev), batch["background"], batch["labels"].to(dev), rules)
                masks = labels.mask.cpu().numpy()
                if labels.fully_gated is not None:
                    fully_gated += int(labels.fully_gated.sum())
                ignored_pixels += int((masks == IGNORE_LABEL).sum())
                cams = labels.activations.cpu().numpy()
                for j, i in enumerate(batch["index"].tolist()):
                    stem = records[i].image.stem
                    write_label_png(mask_dir / f"{stem}.png", masks[j], palette)
                    write_cams(cam_dir / f"{stem}.npz", cams[j])
        manifest = out / MANIFEST_NAME
        existing = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}
        splits = dict(existing.get("splits", {}))
        splits[split] = {"patches": len(records), "fully_gated_patches": fully_gated, "ignored_pixels": ignored_pixels,
                         "mask_dir": f"{split}/mask", "cam_dir": f"{split}/cams"}
        payload = {
            "format_version": PSEUDO_LABEL_FORMAT_VERSION,
            "rule": "thesis eq. 4.9: (argmax CAM + 1) * (1 - background seed); absent classes zeroed",
            "mask_convention": f"0 = background, 1..N = class_names, {IGNORE_LABEL} = ignore (a fully gated patch's "
                               "tissue under gating fallback ignore)",
            "class_names": list(cfg.class_names),
            "class_colors": [list(c) for c in cfg.class_colors],
            "cams": {"key": "cams", "dtype": "uint8", "layout": "(N, H, W)", "scale": 1 / CAM_SCALE},
            **rules.gating_record(),
            "background_seed": BackgroundSeedParams.of_model(cfg).__dict__,
            "checkpoint": {"path": str(Path(model).resolve()), "sha256": loaded.sha256},
            "dataset": {"path": str(Path(data).resolve()), "format": index.info.name},
            "splits": splits,
        }
        manifest.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        log.info("%d %s pseudo-labels written to %s; gating %s: %d patches fully gated", len(records), split, out,
                 rules.gating_line(), fully_gated)
        return PseudoLabelResult(out=out, split=split, patches=len(records), manifest=manifest, fully_gated=fully_gated,
                                 rules=rules)
