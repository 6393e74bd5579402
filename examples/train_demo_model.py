"""Reproduce the bundled demo model: synthetic WSSS data → PSCL stage 1 → wsi_seg/assets.

The demo model is a demonstration on synthetic tissue (``wsi_seg.synthetic``), trained
from random initialisation with the ``small`` preset on a CPU; it is not a model of
real histology. Train real models with ``wsi-seg train`` on LUAD-HistoSeg, BCSS-WSSS or
your own patches (see the README)::

    python examples/train_demo_model.py --work /tmp/demo_model_run

Steps: a LUAD-HistoSeg-layout dataset of synthetic patches (labels in the file names),
stage 1 (MLSM + 0.1·PSCL unless ``--no-pscl``), evaluation of its pseudo-labels on the
test split, then the checkpoint is copied into ``wsi_seg/assets/demo_model``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from wsi_seg.model.default import DEMO_MODEL_DIR

from training.config import load_stage1_config
from training.evaluate import evaluate_checkpoint
from wsi_seg.metrics import format_table, write_json
from training.stage1 import train_stage1
from training.synthetic_dataset import write_dataset

ASSETS = Path(__file__).resolve().parents[1] / "wsi_seg" / "assets" / DEMO_MODEL_DIR


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="folder for the dataset and the run")
    ap.add_argument("--train", type=int, default=800)
    ap.add_argument("--test", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--no-pscl", action="store_true", help="train the CAM baseline instead")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--install", action="store_true", help=f"copy the checkpoint to {ASSETS}")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    data = args.work / "data"
    if not (data / "train").is_dir():
        write_dataset(data, n_train=args.train, n_val=32, n_test=args.test, seed=args.seed)
    cfg = load_stage1_config(None, {
        "data.path": str(data), "out": str(args.work / "stage1"), "model.preset": "small",
        "epochs": args.epochs, "pscl.enabled": not args.no_pscl, "data.workers": 0,
        "device": "cpu", "seed": args.seed,
    })
    train_stage1(cfg)
    ckpt = Path(cfg.out) / "checkpoint"
    result = evaluate_checkpoint(ckpt, data, split="test", device="cpu", progress=False)
    print(format_table(result.scores))
    write_json(args.work / "stage1_test_scores.json", result.scores)
    if args.install:
        ASSETS.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copy2(ckpt / name, ASSETS / name)
        print(f"installed {ckpt} → {ASSETS}")


if __name__ == "__main__":
    main()
