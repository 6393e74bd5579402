"""A/B tables of the method's open choices (issue 21) on the synthetic WSSS benchmark.

Three tables, each printed in Markdown with the command's settings above it:

* ``optimizer``: stage-1 SGD as the reference code ran it (momentum 5e-4, weight decay
  5e-4: WSSS-Tissue's ``PolyOptimizer`` passes its weight decay positionally into
  SGD's momentum slot) against momentum 0.9 / weight decay 1e-4, for the CAM baseline
  and PSCL;
* ``gating``: one PSCL checkpoint (the default recipe) scored under each gating rule:
  off, the floor reading of ε (τ_g 0.8, ε 0…0.75), the logit reading (logit > ε), and
  the two fallbacks for a fully gated patch;
* ``stage2``: stage 2 (cross-entropy) trained on the pseudo-labels of that checkpoint
  under four of those rules.

Rerunning reuses finished runs in ``--work``. Deterministic (seeded) on one machine::

    python benchmarks/method_ab.py --work runs/ab --n-train 400 --n-test 64 --epochs 10 --stage2-epochs 6
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

from wsi_seg_training import experiment
from wsi_seg_training.evaluate import evaluate_checkpoint
from wsi_seg_training.pseudo_labels import MANIFEST_NAME, generate_pseudo_labels

from wsi_seg.model import PredictRules

OPTIMIZERS = (  # name, stage-1 config keys
    ("reference (WSSS-Tissue): momentum 5e-4, wd 5e-4", {"optim.momentum": 5e-4, "optim.weight_decay": 5e-4}),
    ("momentum 0.9, wd 1e-4 (before)", {"optim.momentum": 0.9, "optim.weight_decay": 1e-4}),
)
GATING = (  # name, rules (None: the checkpoint's own)
    ("off", PredictRules()),
    ("floor: τ_g 0.8, ε 0, fallback top", PredictRules(gating_threshold=0.8)),
    ("floor: τ_g 0.8, ε 0, fallback ignore", PredictRules(gating_threshold=0.8, gating_fallback="ignore")),
    ("floor: τ_g 0.8, ε 0.25", PredictRules(gating_threshold=0.8, gating_epsilon=0.25)),
    ("floor: τ_g 0.8, ε 0.5", PredictRules(gating_threshold=0.8, gating_epsilon=0.5)),
    ("floor: τ_g 0.8, ε 0.75", PredictRules(gating_threshold=0.8, gating_epsilon=0.75)),
    ("logit > ε 0 (sigmoid > 0.5), fallback top", PredictRules(gating_threshold=0.8, epsilon_reading="logit")),
    ("logit > ε 0, fallback ignore",
     PredictRules(gating_threshold=0.8, epsilon_reading="logit", gating_fallback="ignore")),
    ("logit > ε 0.25", PredictRules(gating_threshold=0.8, gating_epsilon=0.25, epsilon_reading="logit")),
    ("logit > ε 0.5", PredictRules(gating_threshold=0.8, gating_epsilon=0.5, epsilon_reading="logit")),
    ("logit > ε 0.75", PredictRules(gating_threshold=0.8, gating_epsilon=0.75, epsilon_reading="logit")),
)
STAGE2_RULES = ("off", "floor: τ_g 0.8, ε 0, fallback top", "floor: τ_g 0.8, ε 0, fallback ignore",
                "logit > ε 0 (sigmoid > 0.5), fallback top")


def _pct(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{100 * v:.2f}"


def _score(model: Path, data: Path, device: str, image_labels: str, rules: PredictRules | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if rules is not None:
        kwargs = dict(gating_threshold=rules.gating_threshold, gating_epsilon=rules.gating_epsilon,
                      gating_fallback=rules.gating_fallback, epsilon_reading=rules.epsilon_reading)
    res = evaluate_checkpoint(model, data, split="test", protocols=("mlps",), device=device, progress=False,
                              image_labels=image_labels, **kwargs)
    counts = res.gating_counts.get("mlps")
    return {"miou": res.scores[0].miou, "iou": res.scores[0].iou, "rules": res.rules.gating_line(),
            "fully_gated": counts.fully_gated if counts else 0, "patches": res.patches,
            "ignored_pixels": counts.ignored_pixels if counts else 0}


def _last_loss(run: Path) -> tuple[float, int]:
    with open(run / "metrics.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return float(rows[-1]["loss"]), len(rows)


def optimizer_table(args: argparse.Namespace, data: Path, work: Path) -> tuple[list[str], Path]:
    lines = ["| stage 1 | SGD | epochs | last loss | predicted mIoU | oracle mIoU | train s |", "|---|---|---|---|---|---|---|"]
    default_pscl = None
    for pscl in (False, True):
        for i, (name, settings) in enumerate(OPTIMIZERS):
            folder = work / f"s1_{'pscl' if pscl else 'cam'}_opt{i}"
            t = time.perf_counter()
            try:
                ckpt = experiment.stage1(data, folder, args.preset, args.epochs, args.seed, args.device, pscl=pscl,
                                         settings=settings)
            except Exception as exc:  # a diverged run is a result of the table
                lines.append(f"| {'PSCL' if pscl else 'CAM baseline'} | {name} | – | {exc} | – | – | – |")
                continue
            loss, epochs = _last_loss(folder)
            seconds = experiment._trained_seconds(folder, t)
            pred = _score(ckpt, data, args.device, "predicted", None)
            gt = _score(ckpt, data, args.device, "gt", None)
            lines.append(f"| {'PSCL' if pscl else 'CAM baseline'} | {name} | {epochs} | {loss:.4f} | "
                         f"{_pct(pred['miou'])} | {_pct(gt['miou'])} | {seconds:.0f} |")
            if pscl and i == 0:
                default_pscl = ckpt
    assert default_pscl is not None, "the default recipe's PSCL run failed"
    return lines, default_pscl


def gating_table(args: argparse.Namespace, data: Path, ckpt: Path) -> list[str]:
    lines = ["| gating | predicted mIoU | fully gated (pred.) | oracle mIoU | fully gated (oracle) | oracle px scored |",
             "|---|---|---|---|---|---|"]
    for name, rules in GATING:
        pred = _score(ckpt, data, args.device, "predicted", rules)
        gt = _score(ckpt, data, args.device, "gt", rules)
        total = gt["patches"] * 224 * 224
        lines.append(f"| {name} | {_pct(pred['miou'])} | {pred['fully_gated']}/{pred['patches']} | {_pct(gt['miou'])} | "
                     f"{gt['fully_gated']}/{gt['patches']} | {100 * (1 - gt['ignored_pixels'] / total):.0f} % |")
    return lines


def stage2_table(args: argparse.Namespace, data: Path, ckpt: Path, work: Path) -> list[str]:
    lines = ["| pseudo-labels gated | fully gated train patches | train px ignored | stage 2 (CE) mIoU | train s |",
             "|---|---|---|---|---|"]
    by_name = dict(GATING)
    for i, name in enumerate(STAGE2_RULES):
        rules = by_name[name]
        labels = work / f"pl_{i}"
        if not (labels / MANIFEST_NAME).is_file():
            generate_pseudo_labels(ckpt, data, labels, device=args.device, overwrite=True, progress=False,
                                   gating_threshold=rules.gating_threshold, gating_epsilon=rules.gating_epsilon,
                                   gating_fallback=rules.gating_fallback, epsilon_reading=rules.epsilon_reading)
        split = json.loads((labels / MANIFEST_NAME).read_text(encoding="utf-8"))["splits"]["train"]
        t = time.perf_counter()
        model = experiment.stage2(data, labels, ckpt, work / f"s2_{i}", "ce", args.stage2_epochs, args.seed, args.device)
        seconds = experiment._trained_seconds(work / f"s2_{i}", t)
        score = _score(model, data, args.device, "predicted", None)
        px = split["patches"] * 224 * 224
        lines.append(f"| {name} | {split['fully_gated_patches']}/{split['patches']} | "
                     f"{100 * split['ignored_pixels'] / px:.1f} % | {_pct(score['miou'])} | {seconds:.0f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--n-train", type=int, default=400)
    ap.add_argument("--n-test", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--stage2-epochs", type=int, default=6)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tables", default="optimizer,gating,stage2")
    args = ap.parse_args()
    from wsi_seg.inference.allocator import pin_malloc_thresholds

    pin_malloc_thresholds()
    data = experiment.synthetic_data(args.work / "data", args.n_train, 16, args.n_test, args.seed)
    print(f"# method A/B: {args.n_train} train / {args.n_test} test synthetic patches, preset {args.preset}, "
          f"{args.epochs} stage-1 + {args.stage2_epochs} stage-2 epochs, seed {args.seed}, {args.device}, "
          f"{platform.processor() or platform.machine()}; mIoU % on the test split, protocol mlps\n", flush=True)
    opt_lines, ckpt = optimizer_table(args, data, args.work)
    tables = args.tables.split(",")
    if "optimizer" in tables:
        print("\n".join(opt_lines) + "\n", flush=True)
    if "gating" in tables:
        print(f"PSCL checkpoint {ckpt} (the default recipe), each gating rule:\n")
        print("\n".join(gating_table(args, data, ckpt)) + "\n", flush=True)
    if "stage2" in tables:
        print("\n".join(stage2_table(args, data, ckpt, args.work)) + "\n", flush=True)


if __name__ == "__main__":
    main()
