"""``wsi-seg train | pretrain | pseudo-labels | evaluate | finetune …``: thin wrappers over the training library.

Joined to the ``wsi-seg`` CLI through the ``wsi_seg.commands`` entry-point group
(:func:`register`). ``python -m wsi_seg_training …`` runs the same commands without the
entry points installed (e.g. under ``torchrun``).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wsi_seg.cli.flags import add_config_flags, config_overrides

from wsi_seg.errors import ConfigError

log = logging.getLogger(__name__)

def _show_training_logs() -> None:
    logger = logging.getLogger("wsi_seg_training")
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train``, ``pretrain``, ``pseudo-labels``, ``evaluate``, ``synth-dataset``, ``benchmark-method``,
    ``check-dataset``, ``make-dataset``, ``fit`` and ``finetune``."""
    _register_train(sub)
    _register_pretrain(sub)
    _register_pseudo_labels(sub)
    _register_evaluate(sub)
    _register_synth_dataset(sub)
    _register_benchmark_method(sub)
    _register_check_dataset(sub)
    _register_make_dataset(sub)
    _register_fit(sub)
    _register_finetune(sub)


def _register_finetune(sub: argparse._SubParsersAction) -> None:
    from wsi_seg_training.finetune_config import FinetuneConfig

    p = sub.add_parser(
        "finetune", help="teach a stage-2 model the corrections saved in results, replaying what it already knows",
        description="Fine-tune the stage-2 model the RESULTs were segmented with on their corrections "
                    "(labels/corrected, saved in napari): the corrected pixels weigh more, the rest of a corrected "
                    "patch is ignored, and patches of the model's own uncorrected labels (and of the original "
                    "training set, --data) are replayed beside them so that the rest of the slide is not "
                    "forgotten. Writes RUN/checkpoint, whose provenance names the results and corrections it "
                    "learned from. Rerun to resume.",
    )
    p.add_argument("results", nargs="+", metavar="RESULT", help="corrected results (wsi-seg segment outputs)")
    _add_run_flags(p, {"": FinetuneConfig})
    p.set_defaults(func=run_finetune)


def run_finetune(args: argparse.Namespace) -> int:
    from wsi_seg_training.finetune import finetune
    from wsi_seg_training.finetune_config import FinetuneConfig

    from wsi_seg_training.config import load_config

    _show_training_logs()
    cfg = load_config(FinetuneConfig, args.config, config_overrides(args)).validate()
    result = finetune(cfg, [str(r) for r in args.results], overwrite=args.overwrite)
    if result.checkpoint is not None:
        last = result.history[-1] if result.history else {}
        print(f"finetune: {len(result.history)} epochs on {len(args.results)} result(s), loss "
              f"{last.get('loss', float('nan')):.4f} → {result.checkpoint}")
    return 0


def _register_fit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit", help="the whole recipe: [pre-training →] stage 1 → pseudo-labels → stage 2 → evaluation, report.md",
        description="Run the thesis recipe into RUN (RUN/stage1, RUN/pseudo_labels, RUN/stage2, RUN/eval, "
                    "RUN/report.md with the thesis' numbers for LUAD-HistoSeg / BCSS-WSSS). Rerun to resume; a "
                    "finished run is a no-op that says so; more epochs continue a step and redo what depends "
                    "on it. Recipes: examples/configs/fit_*.yaml.",
    )
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="dataset folder")
    p.add_argument("--out", type=Path, required=True, metavar="RUN", help="run folder")
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="recipe: pretrain / stage1 / stage2 / evaluate sections (YAML, TOML or JSON)")
    p.add_argument("--epochs", type=int, default=None, metavar="N",
                   help="stage-1 epochs (default: the recipe's); more than RUN's stage 1 did continue it and "
                        "redo the pseudo-labels, stage 2 and the scores")
    p.add_argument("--stage2-epochs", type=int, default=None, metavar="N",
                   help="stage-2 epochs (default: the recipe's); more than RUN's stage 2 did continue it and "
                        "redo its scores")
    p.add_argument("--device", default=None, metavar="DEVICE", help="auto, cpu, cuda or cuda:N (default: the recipe's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_fit)


def run_fit(args: argparse.Namespace) -> int:
    from wsi_seg_training.fit import fit, plan_fit

    _show_training_logs()
    over: dict[str, Any] = {}
    if args.device is not None:
        over["device"] = args.device
    if args.epochs is not None:
        over.setdefault("stage1", {})["epochs"] = args.epochs
    if args.stage2_epochs is not None:
        over.setdefault("stage2", {})["epochs"] = args.stage2_epochs
    if args.no_progress:
        over["progress"] = False
    plan = plan_fit(args.data, args.out, args.config, over)
    result = fit(plan, report=print)
    if not result.ran:
        print(f"{result.out}: every step is finished; nothing to do (report: {result.report})")
    else:
        print(f"ran: {', '.join(result.ran)} → {result.report}")
    return 0


def _register_check_dataset(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check-dataset", help="report a dataset's splits, classes, label co-occurrence, sizes, modes and problems",
        description="Counts per split and class, train label co-occurrence, patch sizes and modes (RGB/RGBA/grey), "
                    "mask pixel shares, and every problem (unreadable files, unparseable names, images without "
                    "masks, masks of the wrong mode, size, indices or palette). Exit 1 when there are problems; "
                    "training refuses such a folder with the same findings.",
    )
    p.add_argument("data", type=Path, metavar="DIR", help="dataset folder (LUAD-HistoSeg, BCSS-WSSS or labels.csv)")
    p.add_argument("--format", choices=["auto", "luad", "bcss", "csv"], default="auto",
                   help="dataset layout (default: %(default)s: recognised from the folder)")
    p.add_argument("--headers-only", action="store_true",
                   help="do not decode every image (masks are always decoded); what training checks")
    p.add_argument("--json", type=Path, default=None, metavar="FILE",
                   help="also write the findings as JSON (default: no)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_check_dataset)


def run_check_dataset(args: argparse.Namespace) -> int:
    from wsi_seg_training.datasets import check_dataset

    report = check_dataset(args.data, args.format, decode=not args.headers_only, progress=not args.no_progress)
    print(report.format_text())
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_dict(), indent=1) + "\n", encoding="utf-8")
    return 0 if report.ok else 1


def _register_make_dataset(sub: argparse._SubParsersAction) -> None:
    from wsi_seg_training.config import MakeDatasetConfig

    p = sub.add_parser(
        "make-dataset", help="cut a weakly labelled patch dataset (labels.csv) from pixel-annotated images",
        description="Patches of pixel-annotated images (masks: single-channel index PNGs of the same stem, "
                    "0 = unlabelled, k = class k of --classes) into the labels.csv layout: a train patch is "
                    "labelled with the classes covering ≥ --min-fraction of it, glass is background (the "
                    "thesis's seeding), splits are by image, val/test patches get their masks. Prints the "
                    "dataset's counts and label co-occurrence as check-dataset does.",
    )
    add_config_flags(p, {"": MakeDatasetConfig})
    p.add_argument("--overwrite", action="store_true", help="replace an earlier make-dataset folder in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_make_dataset)


def run_make_dataset(args: argparse.Namespace) -> int:
    from wsi_seg_training.config import MakeDatasetConfig
    from wsi_seg_training.datasets import check_dataset
    from wsi_seg_training.datasets.make import make_dataset

    cfg = MakeDatasetConfig(**config_overrides(args))
    made = make_dataset(cfg, overwrite=args.overwrite, progress=not args.no_progress)
    print(made.summary())
    report = check_dataset(made.out, "csv", decode=False)
    print()
    print(report.format_text())
    mpp = f" --mpp {cfg.patch_mpp or cfg.mpp}" if (cfg.patch_mpp or cfg.mpp) else ""
    print(f"\ntrain on it: wsi-seg train --stage 1 --data {made.out}{mpp} --out RUN, or "
          f"wsi-seg benchmark-method --data {made.out} --work DIR")
    return 0 if report.ok else 1


def _register_benchmark_method(sub: argparse._SubParsersAction) -> None:
    from wsi_seg_training.config import MethodBenchmarkConfig

    p = sub.add_parser(
        "benchmark-method",
        help="train and score CAM baseline vs PSCL, PSCL without background, stage 2 CE vs NR on synthetic "
             "data or a dataset",
        description="The thesis's comparisons on the synthetic WSSS benchmark or on --data (e.g. a make-dataset "
                    "folder), beside trivial baselines (every tissue pixel one class), printed as its tables "
                    "(both protocols), with each run's settings read back from its config.yaml and whether its "
                    "losses stayed finite. Resumable: rerun the same command to continue.",
    )
    p.add_argument("--work", type=Path, required=True, metavar="DIR", help="folder for the dataset, runs and results")
    add_config_flags(p, {"": MethodBenchmarkConfig})
    p.set_defaults(func=run_benchmark_method)


def run_benchmark_method(args: argparse.Namespace) -> int:
    from wsi_seg_training.config import MethodBenchmarkConfig
    from wsi_seg_training.experiment import (
        benchmark_method,
        format_markdown,
        format_thesis_tables,
    )

    from wsi_seg.reports.metrics import PROTOCOLS

    _show_training_logs()
    over = config_overrides(args)
    if over.get("data"):
        sized = [flag for key, flag in (("n_train", "--n-train"), ("n_test", "--n-test")) if key in over]
        if sized:
            raise ConfigError(f"{', '.join(sized)}: sizes of the generated set, which --data replaces; drop them")
    cfg = MethodBenchmarkConfig(work=str(args.work), **over)
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
    p.add_argument("out", type=Path, metavar="OUT", help="new (or empty) folder for the dataset")
    p.add_argument("--format", default="luad", choices=["luad", "bcss", "csv"], help="dataset layout (default: luad)")
    p.add_argument("--n-train", type=int, default=800, metavar="N", help="train patches (default: %(default)s)")
    p.add_argument("--n-val", type=int, default=32, metavar="N", help="val patches (default: %(default)s)")
    p.add_argument("--n-test", type=int, default=128, metavar="N", help="test patches (default: %(default)s)")
    p.add_argument("--mpp", type=float, default=1.0, metavar="UM",
                   help="µm/px of the patches (default: 1.0, as LUAD-HistoSeg)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the patches (default: %(default)s)")
    p.set_defaults(func=_run_synth_dataset)


def _run_synth_dataset(args: argparse.Namespace) -> int:
    from wsi_seg_training.synthetic_dataset import write_dataset

    if args.out.exists() and any(args.out.iterdir()):
        raise ConfigError(f"{args.out}: folder exists and is not empty; choose a new one")
    write_dataset(args.out, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
                  format=args.format, seed=args.seed, mpp=args.mpp)
    print(f"wrote {args.n_train} train, {args.n_val} val, {args.n_test} test patches ({args.format}) → {args.out}")
    return 0


def _register_train(sub: argparse._SubParsersAction) -> None:
    from wsi_seg_training.config import Stage1Config, Stage2Config

    p = sub.add_parser(
        "train", help="train a PSCL model: stage 1 (classification + PSCL) or stage 2 (segmentation on pseudo-labels)",
        description="Train PSCL stage 1 or 2 into RUN_DIR; rerun the same command to resume an interrupted run. "
                    "Defaults are the thesis': stage 1 SGD lr 0.1, poly decay, 5 epochs, batch 16, λ 0.1, τ 0.25; "
                    "stage 2 AdamW lr 1e-4, 20 epochs, batch 32, cross-entropy.",
    )
    p.add_argument("--stage", type=int, choices=[1, 2], required=True,
                   help="1: classifier + PSCL from patch labels; 2: encoder + decoder on stage-1 pseudo-labels")
    _add_run_flags(p, {"1": Stage1Config, "2": Stage2Config}, choice="--stage")
    p.set_defaults(func=run_train)


def _add_run_flags(p: argparse.ArgumentParser, configs: dict[str, type], choice: str = "") -> None:
    """--config, --overwrite and the flags of the run's config classes."""
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="YAML/TOML/JSON settings; flags override it")
    p.add_argument("--overwrite", action="store_true", help="discard an existing run in RUN_DIR and start over")
    add_config_flags(p, configs, choice=choice)


def train_config_from_args(args: argparse.Namespace) -> Any:
    """The Stage1Config or Stage2Config of parsed ``train`` arguments: defaults ← --config ← flags."""
    from wsi_seg_training.config import Stage1Config, Stage2Config, load_config

    cls = Stage2Config if args.stage == 2 else Stage1Config
    return load_config(cls, args.config, config_overrides(args, str(args.stage)))


def run_train(args: argparse.Namespace) -> int:
    _show_training_logs()
    cfg = train_config_from_args(args).validate()
    if args.stage == 2:
        from wsi_seg_training.stage2 import train_stage2

        result = train_stage2(cfg, overwrite=args.overwrite)
    else:
        from wsi_seg_training.stage1 import train_stage1

        result = train_stage1(cfg, overwrite=args.overwrite)
    if result.checkpoint is not None:
        last = result.history[-1] if result.history else {}
        from wsi_seg_training.trainer import val_score, val_words

        score = val_score(last)
        val = f", {val_words(score[0])} {100 * score[1]:.2f} %" if score is not None else ""
        loss = f" ({cfg.loss.name})" if args.stage == 2 else ""
        print(f"stage {args.stage}: {len(result.history)} epochs, loss{loss} {last.get('loss', float('nan')):.4f}{val} "
              f"→ {result.checkpoint}")
    return 0


def _register_pretrain(sub: argparse._SubParsersAction) -> None:
    from wsi_seg_training.config import PretrainConfig

    p = sub.add_parser(
        "pretrain", help="unsupervised pre-training of the encoder on unlabelled patches (NT-Xent)",
        description="Pre-train the encoder on any folder of patches (thesis §4.2: NT-Xent, L_intra + 0.5·L_inter; "
                    "AdamW lr 1e-4, 20 epochs, batch 6) into RUN_DIR/encoder.safetensors, for "
                    "wsi-seg train --stage 1 --pretrained FILE with the same preset. Rerun to resume.",
    )
    _add_run_flags(p, {"": PretrainConfig})
    p.set_defaults(func=run_pretrain)


def pretrain_config_from_args(args: argparse.Namespace) -> Any:
    """The PretrainConfig of parsed ``pretrain`` arguments: defaults ← --config ← flags."""
    from wsi_seg_training.config import PretrainConfig, load_config

    return load_config(PretrainConfig, args.config, config_overrides(args))


def run_pretrain(args: argparse.Namespace) -> int:
    from wsi_seg_training.pretrain import train_pretrain

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
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (pseudo-labels and CAMs)")
    p.add_argument("--split", choices=["train", "val", "test"], default="train", help="split to label (default: train)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    _add_inference_flags(p)
    p.set_defaults(func=run_pseudo_labels)


RUN = object()  # --gating not given: as the stage-1 run was trained


def _gating(value: object) -> float | str | None:
    from wsi_seg_training.pseudo_labels import RUN_GATING

    return RUN_GATING if value is RUN else value  # type: ignore[return-value]


def _add_inference_flags(p: argparse.ArgumentParser) -> None:
    """The flags pseudo-labels and evaluate share, named and shown as in ``train``."""
    from wsi_seg_training.config import DEFAULT_GATING

    p.add_argument("--format", choices=["auto", "luad", "bcss", "csv"], default="auto",
                   help="dataset layout (default: %(default)s)")
    p.add_argument("--gating", nargs="?", type=float, const=DEFAULT_GATING, default=RUN, metavar="TAU",
                   help="gate CAMs by classification score (eq. 4.4–4.5): without TAU as `train` does by default "
                        "(logit > ε); TAU: a class passes when sigmoid > TAU (the floor reading) (default: as the "
                        "stage-1 run was trained, recorded in its checkpoint)")
    p.add_argument("--no-gating", dest="gating", action="store_const", const=None, help="no gating")
    p.add_argument("--gating-epsilon", type=float, default=None, metavar="EPS",
                   help="ε of tables 5.16/5.17, applied as --epsilon-reading says (default: the run's)")
    p.add_argument("--epsilon-reading", choices=["logit", "floor"], default=None,
                   help="floor: a class passes when sigmoid > τ_g, a rejected one keeps ε × its CAM; logit: a class "
                        "passes when its logit > ε (default: the run's)")
    p.add_argument("--gating-fallback", choices=["top", "ignore"], default=None,
                   help="a patch whose every class the gate rejects: top: keeps its top-scoring class; ignore: its "
                        "tissue is left out (of stage-2 targets, of the scores) (default: the run's)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="patches per model call (default: %(default)s)")
    p.add_argument("--device", default="auto", metavar="DEVICE", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="DataLoader worker processes (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_pseudo_labels(args: argparse.Namespace) -> int:
    from wsi_seg_training.pseudo_labels import generate_pseudo_labels

    result = generate_pseudo_labels(
        args.model, args.data, args.out, split=args.split, format=args.format, batch_size=args.batch_size,
        device=args.device, workers=args.workers, gating_threshold=_gating(args.gating), overwrite=args.overwrite,
        progress=not args.no_progress, gating_epsilon=args.gating_epsilon, gating_fallback=args.gating_fallback,
        epsilon_reading=args.epsilon_reading,
    )
    print(f"{result.patches} {result.split} pseudo-labels → {result.out} (gating {result.rules.gating_line()}; "
          f"{result.fully_gated} patches fully gated)")
    return 0


def _register_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a checkpoint on a val/test split (mIoU, fwIoU, Dice, accuracy)")
    p.add_argument("--model", type=Path, required=True, metavar="CKPT", help="checkpoint (stage 1 or 2)")
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="dataset folder")
    p.add_argument("--split", choices=["val", "test"], default="test", help="split to score (default: test)")
    p.add_argument("--protocol", choices=["mlps", "tpro", "both"], default="both",
                   help="mlps: ground-truth background excluded; tpro: background a class, mIoU over tissue "
                        "(default: both)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the scores as JSON (default: no)")
    p.add_argument("--image-labels", choices=["predicted", "gt"], default="predicted",
                   help="stage 1: classes a patch may take — predicted: the classifier's, above each protocol's "
                        "reference threshold (mlps 0.25; tpro 0.15 LUAD, 0.4 BCSS); gt: from its ground truth, an "
                        "oracle of pseudo-label quality, labelled as such (default: predicted)")
    p.add_argument("--score-threshold", type=float, default=None, metavar="T",
                   help="stage 1, predicted: one sigmoid threshold for every protocol (default: each protocol's "
                        "reference threshold)")
    _add_inference_flags(p)
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from wsi_seg_training.evaluate import evaluate_checkpoint

    from wsi_seg.reports.metrics import PROTOCOLS, format_table, write_json

    protocols = PROTOCOLS if args.protocol == "both" else (args.protocol,)
    result = evaluate_checkpoint(
        args.model, args.data, split=args.split, protocols=protocols, format=args.format,
        batch_size=args.batch_size, device=args.device, workers=args.workers,
        image_labels=args.image_labels, gating_threshold=_gating(args.gating), progress=not args.no_progress,
        score_threshold=args.score_threshold, gating_epsilon=args.gating_epsilon,
        gating_fallback=args.gating_fallback, epsilon_reading=args.epsilon_reading,
    )
    print(f"{result.checkpoint} on {args.data} ({result.split}, {result.patches} patches)")
    print(result.mode_line())
    if result.gating_counts:
        print(result.gating_summary())
    print(format_table(result.scores))
    if args.json is not None:
        write_json(args.json, result.scores, extra={
            "checkpoint": str(result.checkpoint), "sha256": result.sha256, "dataset": str(args.data),
            "split": result.split, "patches": result.patches, **result.to_extra(),
            "confusion_matrix": {p: cm.counts.tolist() for p, cm in result.confusions.items()},
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
    """``python -m wsi_seg_training``: the training commands with wsi-seg's logging and error handling."""
    from wsi_seg.cli.main import run

    return run(build_parser().parse_args(argv))
