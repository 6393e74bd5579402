"""Reproduce the bundled demo model: synthetic data → PSCL stage 1 → pseudo-labels → stage 2.

The demo model is a demonstration on synthetic tissue (``wsi_seg.synthetic``), trained
from random initialisation with the ``small`` preset on a CPU; it is not a model of
real histology. Train real models with ``wsi-seg train`` on LUAD-HistoSeg, BCSS-WSSS or
your own patches (see the README)::

    python examples/train_demo_model.py --work /tmp/demo_model_run

Steps: a LUAD-HistoSeg-layout dataset of synthetic patches (labels in the file names),
stage 1 (MLSM + 0.1·PSCL unless ``--no-pscl``, 20 epochs), evaluation of its pseudo-labels
on the test split, pseudo-labels of the training split (eq. 4.9), stage 2 (encoder from
stage 1 + Mask2Former pixel decoder, cross-entropy, 8 epochs), its evaluation, and with
``--install`` the stage-2 checkpoint is copied into ``wsi_seg/assets/demo_model``.
About 10 minutes on 2 idle CPU cores.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from wsi_seg.model.default import DEMO_MODEL_DIR

from training.config import Stage1Config, Stage2Config, load_config
from training.evaluate import evaluate_checkpoint
from training.pseudo_labels import generate_pseudo_labels
from wsi_seg.metrics import format_table, write_json
from training.stage1 import train_stage1
from training.stage2 import train_stage2
from training.synthetic_dataset import write_dataset

ASSETS = Path(__file__).resolve().parents[1] / "wsi_seg" / "assets" / DEMO_MODEL_DIR


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="folder for the dataset and the run")
    ap.add_argument("--train", type=int, default=800)
    ap.add_argument("--test", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=20, help="stage-1 epochs")
    ap.add_argument("--stage2-epochs", type=int, default=8)
    ap.add_argument("--no-pscl", action="store_true", help="train the CAM baseline instead")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--install", action="store_true", help=f"copy the checkpoint to {ASSETS}")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    data = args.work / "data"
    if not (data / "train").is_dir():
        write_dataset(data, n_train=args.train, n_val=32, n_test=args.test, seed=args.seed)
    cfg = load_config(Stage1Config, None, {
        "data.path": str(data), "out": str(args.work / "stage1"), "model.preset": "small",
        "epochs": args.epochs, "pscl.enabled": not args.no_pscl, "data.workers": 0,
        "device": "cpu", "seed": args.seed,
    })
    train_stage1(cfg)
    stage1 = Path(cfg.out) / "checkpoint"
    result = evaluate_checkpoint(stage1, data, split="test", device="cpu", progress=False)
    print("stage 1 pseudo-labels, test split\n" + format_table(result.scores))
    write_json(args.work / "stage1_test_scores.json", result.scores)

    labels = args.work / "pseudo_labels"
    generate_pseudo_labels(stage1, data, labels, device="cpu", overwrite=True, progress=False)
    cfg2 = load_config(Stage2Config, None, {
        "data.path": str(data), "data.pseudo_labels": str(labels), "init": str(stage1),
        "out": str(args.work / "stage2"), "epochs": args.stage2_epochs, "batch_size": 16,
        "data.workers": 0, "device": "cpu", "seed": args.seed,
    })
    train_stage2(cfg2)
    ckpt = Path(cfg2.out) / "checkpoint"
    result = evaluate_checkpoint(ckpt, data, split="test", device="cpu", progress=False)
    print("stage 2, test split\n" + format_table(result.scores))
    write_json(args.work / "stage2_test_scores.json", result.scores)
    if args.install:
        ASSETS.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copy2(ckpt / name, ASSETS / name)
        print(f"installed {ckpt} → {ASSETS}")


if __name__ == "__main__":
    main()
