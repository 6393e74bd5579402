"""``wsi-seg train | pretrain | pseudo-labels | evaluate``: thin wrappers over the training library.

Joined to the ``wsi-seg`` CLI through the ``wsi_seg.commands`` entry-point group
(:func:`register`). ``python -m training …`` runs the same commands without the
entry points installed (e.g. under ``torchrun``).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wsi_seg.errors import ConfigError

log = logging.getLogger(__name__)

# argparse dest → dotted Stage1Config key (flags left unset keep the config file's value)
_TRAIN_OVERRIDES = {
    "data": "data.path",
    "format": "data.format",
    "out": "out",
    "preset": "model.preset",
    "backbone": "model.backbone",
    "pretrained": "model.pretrained",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "optim.lr",
    "momentum": "optim.momentum",
    "weight_decay": "optim.weight_decay",
    "device": "device",
    "precision": "precision",
    "workers": "data.workers",
    "seed": "seed",
    "pscl_weight": "pscl.weight",
    "pscl_threshold": "pscl.threshold",
    "pscl_background": "pscl.include_background",
    "gating_threshold": "pscl.gating_threshold",
    "background_seed": "data.background_seed",
    "bkg_min_size": "data.bkg_min_size_px",
    "mpp": "data.mpp",
    "val_every": "val_every",
}
# argparse dest → dotted Stage2Config key
_TRAIN2_OVERRIDES = {
    "data": "data.path",
    "format": "data.format",
    "pseudo_labels": "data.pseudo_labels",
    "init": "init",
    "out": "out",
    "loss": "loss.name",
    "gumbel_tau": "loss.gumbel_tau",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "device": "device",
    "precision": "precision",
    "workers": "data.workers",
    "seed": "seed",
    "val_every": "val_every",
}
# argparse dest → dotted PretrainConfig key
_PRETRAIN_OVERRIDES = {
    "data": "data.path",
    "format": "data.format",
    "patch_size": "data.patch_size_px",
    "out": "out",
    "preset": "model.preset",
    "backbone": "model.backbone",
    "pretrained": "model.pretrained",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "temperature": "contrast.temperature",
    "inter_weight": "contrast.inter_weight",
    "device": "device",
    "precision": "precision",
    "workers": "data.workers",
    "seed": "seed",
}
# flags of one stage only (argparse dest → flag), refused with the other
_STAGE1_ONLY = {
    "preset": "--preset", "backbone": "--backbone", "pretrained": "--pretrained", "momentum": "--momentum",
    "pscl_weight": "--pscl-weight", "pscl_threshold": "--pscl-threshold", "no_pscl": "--no-pscl",
    "pscl_background": "--pscl-background", "gating": "--gating", "gating_threshold": "--gating-threshold",
    "background_seed": "--background-seed", "bkg_min_size": "--bkg-min-size", "mpp": "--mpp",
}
_STAGE2_ONLY = {"pseudo_labels": "--pseudo-labels", "init": "--init", "loss": "--loss", "gumbel_tau": "--gumbel-tau"}


def _show_training_logs() -> None:
    logger = logging.getLogger("training")
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train``, ``pretrain``, ``pseudo-labels``, ``evaluate``, ``synth-dataset`` and ``benchmark-method``."""
    _register_train(sub)
    _register_pretrain(sub)
    _register_pseudo_labels(sub)
    _register_evaluate(sub)
    _register_synth_dataset(sub)
    _register_benchmark_method(sub)


def _register_benchmark_method(sub: argparse._SubParsersAction) -> None:
    from training.experiment import MethodBenchmarkConfig as D

    p = sub.add_parser(
        "benchmark-method",
        help="train and score CAM baseline vs PSCL, PSCL without background, stage 2 CE vs NR on synthetic data",
        description="The thesis's comparisons on the synthetic WSSS benchmark, printed as its tables "
                    "(both protocols). Resumable: rerun the same command to continue.",
    )
    p.add_argument("--work", type=Path, required=True, metavar="DIR", help="folder for the dataset, runs and results")
    p.add_argument("--n-train", type=int, default=D.n_train)
    p.add_argument("--n-test", type=int, default=D.n_test)
    p.add_argument("--preset", default=D.preset, help="model preset (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=D.stage1_epochs, help="stage-1 epochs (default: %(default)s)")
    p.add_argument("--stage2-epochs", type=int, default=D.stage2_epochs)
    p.add_argument("--stage1-batch-size", type=int, default=None)
    p.add_argument("--stage2-batch-size", type=int, default=D.stage2_batch_size)
    p.add_argument("--seed", type=int, default=D.seed)
    p.add_argument("--device", default=D.device)
    p.set_defaults(func=run_benchmark_method)


def run_benchmark_method(args: argparse.Namespace) -> int:
    from training.experiment import MethodBenchmarkConfig, benchmark_method, format_markdown, format_thesis_tables
    from wsi_seg.metrics import PROTOCOLS

    _show_training_logs()
    cfg = MethodBenchmarkConfig(
        work=str(args.work), n_train=args.n_train, n_test=args.n_test, preset=args.preset,
        stage1_epochs=args.epochs, stage2_epochs=args.stage2_epochs, stage1_batch_size=args.stage1_batch_size,
        stage2_batch_size=args.stage2_batch_size, seed=args.seed, device=args.device,
    )
    bench = benchmark_method(cfg)
    table = format_thesis_tables(bench)
    print(table)
    (args.work / "results.txt").write_text(table + "\n", encoding="utf-8")
    (args.work / "results.md").write_text(
        "\n\n".join(f"Protocol {p}:\n\n{format_markdown(bench, p)}" for p in PROTOCOLS) + "\n", encoding="utf-8")
    (args.work / "results.json").write_text(json.dumps(bench.to_dict(), indent=1) + "\n", encoding="utf-8")
    print(f"results in {args.work / 'results.txt'}, results.md and results.json")
    return 0


def _register_synth_dataset(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth-dataset",
        help="write a synthetic H&E-like WSSS dataset (image labels in the names, masks for val/test)",
    )
    p.add_argument("out", type=Path, metavar="OUT")
    p.add_argument("--format", default="luad", choices=["luad", "bcss", "csv"], help="dataset layout (default: luad)")
    p.add_argument("--n-train", type=int, default=800)
    p.add_argument("--n-val", type=int, default=32)
    p.add_argument("--n-test", type=int, default=128)
    p.add_argument("--mpp", type=float, default=1.0, help="µm/px of the patches (default: 1.0, as LUAD-HistoSeg)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_synth_dataset)


def _run_synth_dataset(args: argparse.Namespace) -> int:
    from training.synthetic_dataset import write_dataset

    if args.out.exists() and any(args.out.iterdir()):
        raise ConfigError(f"{args.out}: folder exists and is not empty; choose a new one")
    write_dataset(args.out, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
                  format=args.format, seed=args.seed, mpp=args.mpp)
    print(f"wrote {args.n_train} train, {args.n_val} val, {args.n_test} test patches ({args.format}) → {args.out}")
    return 0


def _register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a PSCL model: stage 1 (classification + PSCL) or stage 2 (segmentation on pseudo-labels)",
        description="Train PSCL stage 1 or 2 into RUN_DIR; rerun the same command to resume an interrupted run. "
                    "Defaults are the thesis': stage 1 SGD lr 0.1, poly decay, 5 epochs, batch 16, λ 0.1, τ 0.25; "
                    "stage 2 AdamW lr 1e-4, 20 epochs, batch 32, cross-entropy.",
    )
    p.add_argument("--stage", type=int, choices=[1, 2], required=True,
                   help="1: classifier + PSCL from patch labels; 2: encoder + decoder on stage-1 pseudo-labels")
    p.add_argument("--data", type=Path, default=None, metavar="DIR", help="dataset folder")
    p.add_argument("--format", choices=["auto", "luad", "bcss", "csv"], default=None, help="dataset layout (default: auto)")
    p.add_argument("--out", type=Path, default=None, metavar="RUN_DIR", help="run directory (checkpoint, metrics, state)")
    p.add_argument("--config", type=Path, default=None, metavar="FILE", help="YAML/TOML/JSON settings; flags override it")
    s2 = p.add_argument_group("stage 2")
    s2.add_argument("--pseudo-labels", type=Path, default=None, metavar="DIR",
                    help="pseudo-labels of the train split, written by wsi-seg pseudo-labels")
    s2.add_argument("--init", type=Path, default=None, metavar="CKPT", help="stage-1 checkpoint to start from")
    s2.add_argument("--loss", choices=["ce", "nr"], default=None,
                    help="ce: cross-entropy (default); nr: noise-reduced loss (thesis eq. 4.10–4.11)")
    s2.add_argument("--gumbel-tau", type=float, default=None, metavar="TAU", help="Gumbel-softmax temperature of nr (default 1)")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--preset", default=None, help="stage 1: model preset (swin-t, convnext-t, resnet50, small, tiny; default swin-t)")
    model.add_argument("--backbone", default=None, metavar="NAME", help="stage 1: any timm backbone with strides 4–32 instead of a preset")
    p.add_argument("--pretrained", default=None, metavar="PATH",
                   help="stage 1: local backbone weights file (ImageNet, or RUN_DIR/encoder.safetensors of wsi-seg pretrain)")
    p.add_argument("--epochs", type=int, default=None, metavar="N", help="default 5 (stage 1), 20 (stage 2)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="global batch, split over torchrun processes (default 16 stage 1, 32 stage 2)")
    p.add_argument("--lr", type=float, default=None,
                   help="stage 1: SGD, decayed polynomially (power 0.9; default 0.1); stage 2: AdamW (default 1e-4)")
    p.add_argument("--momentum", type=float, default=None, help="stage 1: default 0.9")
    p.add_argument("--weight-decay", type=float, default=None, metavar="WD", help="default 1e-4 (stage 1), 0.01 (stage 2)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None,
                   help="autocast (default: auto = bf16 where the device computes it natively, fp16 on older CUDA GPUs, else fp32)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="DataLoader worker processes (default 2)")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--pscl-weight", type=float, default=None, metavar="LAMBDA", help="λ of the PSCL term (default 0.1)")
    p.add_argument("--pscl-threshold", type=float, default=None, metavar="TAU", help="CAM confidence τ of PSCL pixels (default 0.25)")
    p.add_argument("--no-pscl", action="store_true", help="MLSM only: the CAM baseline")
    p.add_argument("--pscl-background", action=argparse.BooleanOptionalAction, default=None,
                   help="background pixels take part in PSCL (default: yes)")
    p.add_argument("--gating", action="store_true", help="gate CAMs by classification score (eq. 4.4–4.5)")
    p.add_argument("--gating-threshold", type=float, default=None, metavar="TAU", help="τ_g of gating (default 0.8)")
    p.add_argument("--background-seed", action=argparse.BooleanOptionalAction, default=None,
                   help="colour-threshold background seeding (default: on for LUAD/csv, off for BCSS)")
    p.add_argument("--bkg-min-size", type=int, default=None, metavar="PX", help="remove_small_objects size in px (default 200 LUAD, 600 BCSS)")
    p.add_argument("--mpp", type=float, default=None, metavar="UM", help="µm/px of the patches (default: the format's)")
    p.add_argument("--val-every", type=int, default=None, metavar="N", help="epochs between val mIoU checks (0: never)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true", help="discard an existing run in RUN_DIR and start over")
    p.set_defaults(func=run_train)


def _overrides(args: argparse.Namespace, mapping: dict[str, str]) -> dict[str, Any]:
    """Dotted config keys of the flags that were given (unset flags keep the file's value)."""
    overrides: dict[str, Any] = {}
    for dest, key in mapping.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides[key] = str(value) if isinstance(value, Path) else value
    if getattr(args, "no_progress", False):
        overrides["progress"] = False
    return overrides


def _refuse(args: argparse.Namespace, flags: dict[str, str], stage: int) -> None:
    """ConfigError when flags of the other stage were given (store_true flags: False = not given)."""
    store_true = ("no_pscl", "gating")
    given = [flag for dest, flag in flags.items()
             if getattr(args, dest, None) is not None and not (dest in store_true and not getattr(args, dest))]
    if given:
        other = 2 if stage == 1 else 1
        raise ConfigError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to --stage {other} only, not --stage {stage}")


def train_config_from_args(args: argparse.Namespace) -> Any:
    """The Stage1Config or Stage2Config of parsed ``train`` arguments: defaults ← --config ← flags."""
    from training.config import Stage2Config, load_config, load_stage1_config

    if args.stage == 2:
        _refuse(args, _STAGE1_ONLY, 2)
        return load_config(Stage2Config, args.config, _overrides(args, _TRAIN2_OVERRIDES))
    _refuse(args, _STAGE2_ONLY, 1)
    overrides = _overrides(args, _TRAIN_OVERRIDES)
    if args.no_pscl:
        overrides["pscl.enabled"] = False
    if args.gating:
        overrides["pscl.gating"] = True
    return load_stage1_config(args.config, overrides)


def run_train(args: argparse.Namespace) -> int:
    _show_training_logs()
    cfg = train_config_from_args(args).validate()
    if args.stage == 2:
        from training.stage2 import train_stage2

        result = train_stage2(cfg, overwrite=args.overwrite)
    else:
        from training.stage1 import train_stage1

        result = train_stage1(cfg, overwrite=args.overwrite)
    if result.checkpoint is not None:
        last = result.history[-1] if result.history else {}
        val = f", val mIoU {100 * last['val_miou']:.2f} %" if last.get("val_miou") is not None else ""
        loss = f" ({cfg.loss.name})" if args.stage == 2 else ""
        print(f"stage {args.stage}: {len(result.history)} epochs, loss{loss} {last.get('loss', float('nan')):.4f}{val} "
              f"→ {result.checkpoint}")
    return 0


def _register_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain", help="unsupervised pre-training of the encoder on unlabelled patches (NT-Xent)",
        description="Pre-train the encoder on any folder of patches (thesis §4.2: NT-Xent, L_intra + 0.5·L_inter; "
                    "AdamW lr 1e-4, 20 epochs, batch 6) into RUN_DIR/encoder.safetensors, for "
                    "wsi-seg train --stage 1 --pretrained FILE with the same preset. Rerun to resume.",
    )
    p.add_argument("--data", type=Path, default=None, metavar="DIR",
                   help="a dataset (its train split) or any folder of images (searched recursively)")
    p.add_argument("--format", choices=["auto", "folder", "luad", "bcss", "csv"], default=None,
                   help="auto (default): a dataset if DIR is one, else a plain image folder")
    p.add_argument("--out", type=Path, default=None, metavar="RUN_DIR", help="run directory (weights, metrics, state)")
    p.add_argument("--config", type=Path, default=None, metavar="FILE", help="YAML/TOML/JSON settings; flags override it")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--preset", default=None, help="model preset whose encoder to train (default swin-t)")
    model.add_argument("--backbone", default=None, metavar="NAME", help="any timm backbone with strides 4–32")
    p.add_argument("--pretrained", default=None, metavar="PATH", help="local weights to start from (e.g. ImageNet)")
    p.add_argument("--patch-size", type=int, default=None, metavar="PX",
                   help="training crop size (default: the preset's, 224); larger images are cropped at random")
    p.add_argument("--epochs", type=int, default=None, metavar="N", help="default 20")
    p.add_argument("--batch-size", type=int, default=None, metavar="N", help="images per step, split over torchrun processes (default 6)")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 1e-4)")
    p.add_argument("--weight-decay", type=float, default=None, metavar="WD", help="default 0.01")
    p.add_argument("--temperature", type=float, default=None, metavar="T", help="NT-Xent temperature (default 0.1)")
    p.add_argument("--inter-weight", type=float, default=None, metavar="LAMBDA", help="λ_inter of eq. 4.1 (default 0.5)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None,
                   help="autocast (default: auto = bf16 where the device computes it natively, fp16 on older CUDA GPUs, else fp32)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="DataLoader worker processes (default 2)")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true", help="discard an existing run in RUN_DIR and start over")
    p.set_defaults(func=run_pretrain)


def pretrain_config_from_args(args: argparse.Namespace) -> Any:
    """The PretrainConfig of parsed ``pretrain`` arguments: defaults ← --config ← flags."""
    from training.config import PretrainConfig, load_config

    return load_config(PretrainConfig, args.config, _overrides(args, _PRETRAIN_OVERRIDES))


def run_pretrain(args: argparse.Namespace) -> int:
    from training.pretrain import train_pretrain

    _show_training_logs()
    cfg = pretrain_config_from_args(args).validate()
    result = train_pretrain(cfg, overwrite=args.overwrite)
    if result.weights is not None:
        last = result.history[-1] if result.history else {}
        preset = f"--backbone {cfg.model.backbone}" if cfg.model.backbone else f"--preset {cfg.model.preset}"
        print(f"pretrain: {len(result.history)} epochs, loss {last.get('loss', float('nan')):.4f} → {result.weights} "
              f"(use: wsi-seg train --stage 1 {preset} --pretrained {result.weights} …)")
    return 0


def _register_pseudo_labels(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pseudo-labels", help="write stage-1 pseudo-labels (thesis eq. 4.9) and CAMs for stage 2")
    p.add_argument("--model", type=Path, required=True, metavar="CKPT", help="stage-1 checkpoint")
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="dataset folder")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--split", choices=["train", "val", "test"], default="train")
    p.add_argument("--format", choices=["auto", "luad", "bcss", "csv"], default="auto")
    p.add_argument("--gating", nargs="?", type=float, const=0.8, default=None, metavar="TAU",
                   help="gate CAMs by classification score (τ_g, default 0.8)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_pseudo_labels)


def run_pseudo_labels(args: argparse.Namespace) -> int:
    from training.pseudo_labels import generate_pseudo_labels

    result = generate_pseudo_labels(
        args.model, args.data, args.out, split=args.split, format=args.format, batch_size=args.batch_size,
        device=args.device, workers=args.workers, gating_threshold=args.gating, overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(f"{result.patches} {result.split} pseudo-labels → {result.out}")
    return 0


def _register_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a checkpoint on a val/test split (mIoU, fwIoU, Dice, accuracy)")
    p.add_argument("--model", type=Path, required=True, metavar="CKPT")
    p.add_argument("--data", type=Path, required=True, metavar="DIR")
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--protocol", choices=["mlps", "tpro", "both"], default="both",
                   help="mlps: ground-truth background excluded; tpro: background a class, mIoU over tissue")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the scores as JSON")
    p.add_argument("--image-labels", choices=["gt", "predicted"], default="gt",
                   help="stage 1: classes a patch may take — from its ground truth, or the classifier's")
    p.add_argument("--gating", nargs="?", type=float, const=0.8, default=None, metavar="TAU")
    p.add_argument("--format", choices=["auto", "luad", "bcss", "csv"], default="auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate_checkpoint
    from wsi_seg.metrics import PROTOCOLS, format_table, write_json

    protocols = PROTOCOLS if args.protocol == "both" else (args.protocol,)
    result = evaluate_checkpoint(
        args.model, args.data, split=args.split, protocols=protocols, format=args.format,
        batch_size=args.batch_size, device=args.device, workers=args.workers,
        image_labels=args.image_labels, gating_threshold=args.gating, progress=not args.no_progress,
    )
    print(f"{result.checkpoint} on {args.data} ({result.split}, {result.patches} patches)")
    print(format_table(result.scores))
    if args.json is not None:
        write_json(args.json, result.scores, extra={
            "checkpoint": str(result.checkpoint), "sha256": result.sha256, "dataset": str(args.data),
            "split": result.split, "patches": result.patches, "image_labels": args.image_labels,
            "gating_threshold": args.gating, "confusion_matrix": result.confusion.counts.tolist(),
        })
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsi-seg", description="PSCL training commands of wsi-seg.")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training``: the training commands with wsi-seg's logging and error handling."""
    from wsi_seg.cli.main import run

    return run(build_parser().parse_args(argv))
