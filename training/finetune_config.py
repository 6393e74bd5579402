"""Settings of ``wsi-seg finetune``: a stage-2 model taught the user's corrections without forgetting.

Torch-free (the CLI registers the command's flags from it). The defaults were chosen by
``examples/correction_loop.py`` on the demo model (docs/benchmarks.md, correcting and
fine-tuning): few epochs over a small mix of corrected and replayed patches, the encoder
at a tenth of the heads' learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wsi_seg.settings import redefault, setting

from wsi_seg_training.config import AdamWConfig, DataSource, EncoderTraining, RunConfig, SupervisedRunConfig


@dataclass
class FinetuneDataConfig(DataSource):
    """The original training set, optional: some of its train patches are replayed beside the
    corrections (their masks, else the starting model's own predictions, are the targets) and
    its val split, when it has masks, scores each epoch."""

    path: str = setting("", flag="--data", metavar="ORIGINAL", default_text="none",
                        help="the model's original training set (LUAD-HistoSeg, BCSS-WSSS or labels.csv): some of "
                             "its train patches are replayed, its val masks score each epoch")
    workers: int = redefault(DataSource, "workers", 0)


ENCODER_LR_SCALE = 0.1


@dataclass
class FinetuneEncoder(EncoderTraining):
    """The backbone during fine-tuning: at a tenth of the heads' rate by default (or frozen),
    so that a few corrected patches move the decoder more than the features."""

    lr_scale: float = redefault(EncoderTraining, "lr_scale", ENCODER_LR_SCALE)

    def checks(self) -> list[tuple[bool, str]]:
        return [
            (self.lr_scale > 0, f"encoder lr scale must be positive, got {self.lr_scale} (use --freeze-encoder)"),
            (not (self.freeze and self.lr_scale != ENCODER_LR_SCALE),
             "--encoder-lr-scale has no effect on a frozen encoder (--freeze-encoder); give one of them"),
        ]


@dataclass
class ReplayConfig:
    """What a fine-tuning epoch is made of, per corrected patch (a patch holding a pixel the
    corrections changed): ``result_ratio`` patches of the same results that no correction
    touched and ``data_ratio`` patches of the original training set (with ``--data``). In a
    corrected patch only the changed pixels are targets, weighted ``corrected_weight``; its
    other pixels are ignored. A replayed patch teaches the starting model's own class
    probabilities (``targets`` soft: distillation, weighted ``distill_weight``; measured to
    forget less than its labels, docs/benchmarks.md), or its labels (hard); an original
    patch with a mask teaches its mask."""

    corrected_weight: float = setting(4.0, flag="--corrected-weight", metavar="W",
                                      help="loss weight of a corrected pixel (a replayed pixel weighs 1)")
    targets: str = setting("soft", flag="--replay-targets", choices=("soft", "hard"),
                           help="what a replayed patch without a mask teaches: soft: the starting model's own "
                                "class probabilities (distillation); hard: its labels (argmax)")
    reviewed: bool = setting(True, flag="--reviewed", negatable=True,
                             help="the pixels of an edited region the user left as they were are targets too "
                                  "(each correction save records its region); --no-reviewed: only the changed "
                                  "pixels are")
    keep_rest: bool = setting(False, flag="--keep-rest",
                              help="the pixels of a corrected patch the corrections left alone keep the starting "
                                   "model's probabilities (distilled) instead of being ignored")
    distill_weight: float = setting(1.0, flag="--distill-weight", metavar="L",
                                    help="weight of the distillation term (soft replay targets) beside the "
                                         "cross-entropy of the corrected pixels")
    result_ratio: float = setting(2.0, flag="--replay", metavar="R",
                                  help="patches of the model's own uncorrected labels per corrected patch")
    data_ratio: float = setting(2.0, flag="--data-replay", metavar="R",
                                help="patches of the original training set (--data) per corrected patch")
    min_tissue: float = setting(0.05, flag="--min-tissue", metavar="F",
                                help="share of tissue a replayed patch of a result must hold")
    repeat: int = setting(4, flag="--repeat", metavar="N",
                          help="times each corrected patch is seen per epoch (with fresh flips)")

    def checks(self) -> list[tuple[bool, str]]:
        return [
            (self.corrected_weight > 0, f"corrected weight must be positive, got {self.corrected_weight}"),
            (self.targets in ("soft", "hard"), f"replay targets must be soft or hard, got {self.targets!r}"),
            (self.distill_weight >= 0, f"--distill-weight must be ≥ 0, got {self.distill_weight}"),
            (self.result_ratio >= 0, f"--replay must be ≥ 0, got {self.result_ratio}"),
            (self.data_ratio >= 0, f"--data-replay must be ≥ 0, got {self.data_ratio}"),
            (0.0 <= self.min_tissue <= 1.0, f"--min-tissue must be in [0, 1], got {self.min_tissue}"),
            (self.repeat >= 1, f"--repeat must be ≥ 1, got {self.repeat}"),
        ]


@dataclass
class FinetuneConfig(SupervisedRunConfig):
    """Everything a fine-tuning run depends on but its results (given on the command line and
    recorded in ``run.json`` and the checkpoint's provenance); saved as ``RUN_DIR/config.yaml``."""

    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    epochs: int = redefault(RunConfig, "epochs", 3)
    batch_size: int = redefault(RunConfig, "batch_size", 4)
    model: str = setting("", flag="--model", metavar="CKPT",
                         help="the stage-2 checkpoint the results were segmented with; fine-tuned whole",
                         required="no checkpoint given (--model CKPT)")
    optim: AdamWConfig = field(default_factory=AdamWConfig)
    encoder: FinetuneEncoder = field(default_factory=FinetuneEncoder)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    allow_older: bool = setting(False, flag="--allow-older-corrections",
                                help="learn corrections saved before the checkpoint was made (carried over from "
                                     "an older model's result, or already learned), which are refused otherwise")
