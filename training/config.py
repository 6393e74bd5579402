"""Training configuration: typed dataclasses, loadable from YAML, TOML or JSON.

:class:`Stage1Config` (classification + PSCL), :class:`Stage2Config` (segmentation on
the stage-1 pseudo-labels) and :class:`PretrainConfig` (unsupervised NT-Xent
pre-training of the encoder); :func:`load_config` reads any of them.

Defaults are the thesis' (table 5.1). Stage 1 (§4.3): SGD lr 0.1 with polynomial decay
(power 0.9), 5 epochs, batch 16, λ_PSCL = 0.1, τ = 0.25, SupCon temperature 0.1,
background in PSCL, gating on (eq. 4.4–4.5 as tables 5.16/5.17 set it: a class passes
when its logit > ε = 0; a patch the gate rejects entirely keeps its top class). The thesis
does not state SGD momentum or weight decay; the defaults are what the reference code
(WSSS-Tissue / MLPS ``PolyOptimizer``) ran: momentum 5e-4 and weight decay 5e-4
(docs/method.md). Stage 2 (§4.4): AdamW lr 1e-4, 20 epochs, batch 32, cross-entropy. Pre-training (§4.2): AdamW lr 1e-4, 20 epochs, batch 6,
L_intra + 0.5·L_inter. Values the thesis leaves open are named in each dataclass'
docstring.

A config file holds any subset of the fields, nested like the dataclasses::

    epochs: 5
    batch_size: 16
    optim: {lr: 0.1, momentum: 5.0e-4, weight_decay: 5.0e-4, poly_power: 0.9}
    pscl: {enabled: true, weight: 0.1, threshold: 0.25, include_background: true}
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsi_seg.errors import ConfigError
from wsi_seg.settings import redefault, setting

if typing.TYPE_CHECKING:
    from wsi_seg.model.predict_rules import PredictRules

CONFIG_FORMAT_VERSION = 1
# what `pseudo-labels` / `evaluate` gate with when told: as the stage-1 run was trained (its
# checkpoint provenance), or as a run with today's defaults would (`--gating` without TAU)
RUN_GATING = "run"
DEFAULT_GATING = "default"


_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_FORMATS = ("auto", "luad", "bcss", "csv")


@dataclass
class DataSource:
    """Where a run's patches come from and how many processes read them."""

    path: str = setting("", flag="--data", metavar="DIR", help="dataset folder",
                        required="no dataset given (--data DIR or data.path in the config file)")
    format: str = setting("auto", flag="--format", choices=_FORMATS, help="dataset layout")
    workers: int = setting(2, flag="--workers", metavar="N", help="DataLoader worker processes", result=False)

    def checks(self) -> list[tuple[bool, str]]:
        return [(self.workers >= 0, f"workers must be ≥ 0, got {self.workers}")]


@dataclass
class RunConfig:
    """The settings every training run shares: its folder, data, length, seed and device.

    Stage configs inherit it; ``to_dict``/``from_dict`` read and write it as a config file
    (format versioned), ``validate`` refuses what no run could use.
    """

    out: str = setting("", flag="--out", metavar="RUN_DIR", result=False,
                       help="run directory (result, metrics.csv, config.yaml, run.json, state/)",
                       required="no run directory given (--out DIR or out in the config file)")
    data: DataSource = field(default_factory=DataSource)
    epochs: int = setting(1, flag="--epochs", metavar="N",
                          help="passes over the train split; more than a finished or interrupted run in RUN_DIR "
                               "did continues it to the new total (stage 1's poly LR then follows the new "
                               "total's schedule from the step reached), fewer is refused")
    batch_size: int = setting(1, flag="--batch-size", metavar="N",
                              help="patches per step, split over torchrun processes")
    seed: int = setting(0, flag="--seed", metavar="N", help="seed of weights, batches and augmentations")
    device: str = setting("auto", flag="--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N", result=False)
    precision: str = setting("auto", flag="--precision", choices=_PRECISIONS,
                             help="autocast precision; auto: bf16 where the device computes it natively, "
                                  "fp16 on older CUDA GPUs, else fp32 (as wsi-seg segment)")
    progress: bool = setting(True, flag="--no-progress", help="no progress bars", result=False)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["format_version"] = CONFIG_FORMAT_VERSION
        return d

    @classmethod
    def from_dict(cls: type[_C], data: dict[str, Any], source: str = "config") -> _C:
        data = dict(data)
        data.pop("format_version", None)
        return _build(cls, data, source)

    def checks(self) -> list[tuple[bool, str]]:
        """(ok, message) of each value check, those of the nested settings (their own
        ``checks()``) included; subclasses add theirs."""
        nested = [getattr(self, f.name) for f in dataclasses.fields(self)]
        return [
            (self.epochs >= 1, f"epochs must be ≥ 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}"),
            (self.precision in _PRECISIONS, f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}"),
            *(check for part in nested if hasattr(part, "checks") for check in part.checks()),
        ]

    def validate(self: _C) -> _C:
        """Raise ConfigError on values no run could use (value checks first, then missing
        inputs, the run directory last); returns self."""
        missing = sorted(_required(self), key=lambda item: item[0] == "out")
        _check([*self.checks(), *((bool(value), message) for _, value, message in missing)])
        return self

    def result_settings(self) -> dict[str, Any]:
        """``to_dict()`` without the settings marked ``result=False``: what a resumed run
        must share with the one it resumes."""
        return json.loads(json.dumps({**_result_part(self), "format_version": CONFIG_FORMAT_VERSION}, default=str))


_C = typing.TypeVar("_C", bound=RunConfig)


def _required(cfg: Any) -> list[tuple[str, Any, str]]:
    """(name, value, message) of each field marked ``required``, nested ones first."""
    nested, top = [], []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            nested += _required(value)
        elif f.metadata.get("required"):
            top.append((f.name, value, f.metadata["required"]))
    return nested + top


def _result_part(cfg: Any) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if not f.metadata.get("result", True):
            continue
        value = getattr(cfg, f.name)
        d[f.name] = _result_part(value) if dataclasses.is_dataclass(value) else value
    return d


@dataclass
class SupervisedRunConfig(RunConfig):
    """A run scored on the val split (when it has masks) as it trains: stages 1 and 2."""

    val_every: int = setting(1, flag="--val-every", metavar="N", help="epochs between val mIoU checks, 0: never",
                             result=False)
    val_max_patches: int | None = setting(None, help="val patches scored per check (None: all)", result=False)

    def checks(self) -> list[tuple[bool, str]]:
        return [*super().checks(), (self.val_every >= 0, f"val_every must be ≥ 0, got {self.val_every}")]


@dataclass
class DataConfig(DataSource):
    """Where the patches are and how their background is seeded.

    ``background_seed`` / ``bkg_min_size_px`` / ``mpp`` None: the format's default
    (LUAD: seeding on, 200 px, 1.0 µm/px; BCSS: on, 600 px, 0.25 µm/px — thesis §4.3.2, table 5.8; csv: on,
    200 px, µm/px must be given or 0.5 is assumed with a warning).
    """

    background_seed: bool | None = setting(None, flag="--background-seed", negatable=True,
                                           help="colour-threshold background seeding",
                                           default_text="on (thesis §4.3.2, also for BCSS)")
    bkg_gray_threshold: float = setting(200.0, help="gray level above which a pixel is background")
    bkg_min_size_px: int | None = setting(None, flag="--bkg-min-size", metavar="PX",
                                          help="remove_small_objects size of the background seed",
                                          default_text="200 LUAD, 600 BCSS")
    mpp: float | None = setting(None, flag="--mpp", metavar="UM", help="µm/px of the patches",
                                default_text="the format's")

    def checks(self) -> list[tuple[bool, str]]:
        return [*super().checks(), (self.mpp is None or self.mpp > 0, f"mpp must be positive, got {self.mpp}")]


@dataclass
class ModelSettings:
    """The network: a wsi_seg preset, optionally with another timm backbone, and weights.

    ``pretrained``: ``auto`` (ImageNet weights for the standard presets — the thesis'
    ImageNet-22k Swin-T for swin-t, §4.1.1, table 5.13 — random for small/tiny),
    ``imagenet``, ``timm:<tag>``, a ``.safetensors`` file, or ``none`` / null (random
    init); see :mod:`wsi_seg.model.pretrained`. ``pretrained_sha256``: filled in by the run with the
    hash of the file loaded (so config.yaml records it); when given, a pin the file must match.
    """

    preset: str = setting("swin-t", flag="--preset", metavar="NAME", exclusive="model",
                          help="model preset (swin-t, convnext-t, resnet50, small, tiny; ViTs: vit-s16, "
                               "vit-l16, small-vit; foundation encoders: uni, uni2-h, virchow2, h-optimus-0, "
                               "prov-gigapath)")
    backbone: str | None = setting(None, flag="--backbone", metavar="NAME", exclusive="model",
                                   help="any timm backbone instead of a preset: strides 4–32, or a plain ViT "
                                        "(vit_*, hf-hub:ORG/NAME) under the multi-scale adapter",
                                   default_text="the preset's")
    pretrained: str | None = setting(
        "auto", flag="--pretrained", metavar="WEIGHTS",
        help="initial encoder weights: auto (ImageNet for swin-t/convnext-t/swinv2-t/resnet50 — swin-t: timm's "
             "ImageNet-22k swin_tiny_patch4_window7_224.ms_in22k, thesis §4.1.1 — random for small/tiny), imagenet, "
             "timm:<tag>, a .safetensors file (e.g. RUN_DIR/encoder.safetensors of wsi-seg pretrain) or none; hub "
             "weights come from the Hugging Face cache (HF_HUB_OFFLINE=1: cache only)")
    pretrained_sha256: str | None = setting(
        None, result=False, help="sha256 of the initial weights; the run records it, a given value is a pin")


@dataclass
class EncoderTraining:
    """How the backbone (the timm model; not a ViT's adapter, which trains with the heads)
    is trained: frozen, or at ``lr_scale`` × the learning rate (pathology foundation
    encoders are often frozen or fine-tuned at a tenth of the heads' rate)."""

    freeze: bool = setting(False, flag="--freeze-encoder",
                           help="keep the backbone's weights as loaded; train adapter, heads and decoder only")
    lr_scale: float = setting(1.0, flag="--encoder-lr-scale", metavar="S",
                              help="the backbone's learning rate is S × --lr")

    def checks(self) -> list[tuple[bool, str]]:
        return [
            (self.lr_scale > 0, f"encoder lr scale must be positive, got {self.lr_scale} (use --freeze-encoder)"),
            (not (self.freeze and self.lr_scale != 1.0),
             "--encoder-lr-scale has no effect on a frozen encoder (--freeze-encoder); give one of them"),
        ]


@dataclass
class OptimConfig:
    """SGD with polynomial learning-rate decay per step: lr · (1 − t/T)^power."""

    lr: float = setting(0.1, flag="--lr", metavar="LR", help="SGD learning rate, decayed polynomially per step")
    momentum: float = setting(5e-4, flag="--momentum", metavar="M",
                              help="SGD momentum (5e-4: what the reference code ran, docs/method.md)")
    weight_decay: float = setting(5e-4, flag="--weight-decay", metavar="WD", help="weight decay")
    poly_power: float = setting(0.9, help="power of the polynomial decay")

    def checks(self) -> list[tuple[bool, str]]:
        return [(self.lr > 0, f"lr must be positive, got {self.lr}")]


@dataclass
class PsclConfig:
    """The PSCL term (thesis eq. 4.2, 4.6–4.8) and CAM gating (eq. 4.4–4.5)."""

    enabled: bool = setting(True, flag="--no-pscl", help="MLSM only: the CAM baseline")
    weight: float = setting(0.1, flag="--pscl-weight", metavar="LAMBDA", help="λ of the PSCL term")
    threshold: float = setting(0.25, flag="--pscl-threshold", metavar="TAU", help="CAM confidence τ of PSCL pixels")
    include_background: bool = setting(True, flag="--pscl-background", negatable=True,
                                       help="background pixels take part in PSCL")
    temperature: float = setting(0.1, help="SupCon temperature")
    max_pixels_per_class_per_image: int | None = setting(100, help="PSCL pixels sampled per class and image")
    max_pixels_total: int | None = setting(2048, help="PSCL pixels sampled per step")
    gating: bool = setting(True, flag="--gating", metavar="TAU", value_of="gating_threshold", negatable=True,
                           help="gate CAMs by classification score (eq. 4.4–4.5; the headline rows of tables "
                                "5.16/5.17) in the run's pseudo-labels and val scores; TAU sets τ_g (with --epsilon-reading "
                                "floor); --no-gating: off")
    gating_threshold: float = setting(0.8, flag="--gating-threshold", metavar="TAU", help="τ_g of gating (§4.3.2)")
    gating_epsilon: float = setting(0.0, flag="--gating-epsilon", metavar="EPS",
                                    help="ε of tables 5.16/5.17, applied as --epsilon-reading says")
    epsilon_reading: str = setting("logit", flag="--epsilon-reading", choices=("logit", "floor"),
                                   help="how ε gates (docs/method.md): logit: a class passes when its logit > ε, "
                                        "sigmoid > 0.5 at ε 0 (τ_g unused); floor: a class passes when sigmoid > "
                                        "τ_g and a rejected class keeps ε × its CAM (ε 0: eq. 4.5)")
    gating_fallback: str = setting("top", flag="--gating-fallback", choices=("top", "ignore"),
                                   help="a patch whose every class the gate rejects: top: keeps its top-scoring "
                                        "class; ignore: its tissue is left out of stage-2 targets and scores")
    gate_pscl: bool = setting(False, flag="--gate-pscl",
                              help="also gate the CAMs PSCL labels its pixels with (patch labels already zero "
                                   "absent classes there)")

    def predict_rules(self) -> PredictRules:
        """The rules of this run's pseudo-labels and val scores: its gating, if on."""
        from wsi_seg.model.predict_rules import PredictRules  # torch-free CLI registration

        return PredictRules(gating_threshold=self.gating_threshold if self.gating else None,
                            gating_epsilon=self.gating_epsilon, gating_fallback=self.gating_fallback,
                            epsilon_reading=self.epsilon_reading)

    def checks(self) -> list[tuple[bool, str]]:
        return [
            (self.weight >= 0, f"pscl weight must be ≥ 0, got {self.weight}"),
            (0 <= self.threshold < 1, f"pscl threshold must be in [0, 1), got {self.threshold}"),
            (0 <= self.gating_threshold < 1, f"gating threshold must be in [0, 1), got {self.gating_threshold}"),
            (0 <= self.gating_epsilon < 1, f"gating epsilon must be in [0, 1), got {self.gating_epsilon}"),
            (self.epsilon_reading == "floor" or self.gating_threshold == 0.8,
             f"gating threshold τ_g {self.gating_threshold} applies to --epsilon-reading floor; under the logit "
             "reading a class passes when its logit > ε (--gating-epsilon)"),
            (self.temperature > 0, f"pscl temperature must be positive, got {self.temperature}"),
        ]


@dataclass
class Stage1Config(SupervisedRunConfig):
    """Everything a stage-1 run depends on; saved resolved as ``RUN_DIR/config.yaml``."""

    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = redefault(RunConfig, "epochs", 5)
    batch_size: int = redefault(RunConfig, "batch_size", 16)
    model: ModelSettings = field(default_factory=ModelSettings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    encoder: EncoderTraining = field(default_factory=EncoderTraining)
    pscl: PsclConfig = field(default_factory=PsclConfig)


def _check(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


@dataclass
class Stage2DataConfig(DataSource):
    """The dataset (its train split: images; val split: masks for val mIoU) and the
    pseudo-label folder ``wsi-seg pseudo-labels`` wrote for its train split. Without
    pseudo-labels the train split's own full masks are the targets (e.g. corrections
    exported by ``wsi-seg export --patches``)."""

    pseudo_labels: str = setting(
        "", flag="--pseudo-labels", metavar="DIR",
        help="pseudo-labels of the train split, written by wsi-seg pseudo-labels; without it the train "
             "split's own masks are the targets (full masks, e.g. wsi-seg export --patches)")


@dataclass
class AdamWConfig:
    """AdamW at a constant learning rate (thesis table 5.1: lr 1e-4, no scheduler). The
    thesis does not state weight decay; 0.01 is torch's AdamW default."""

    lr: float = setting(1e-4, flag="--lr", metavar="LR", help="AdamW learning rate, constant")
    weight_decay: float = setting(0.01, flag="--weight-decay", metavar="WD", help="weight decay")

    def checks(self) -> list[tuple[bool, str]]:
        return [
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be ≥ 0, got {self.weight_decay}"),
        ]


@dataclass
class Stage2LossConfig:
    """``name`` ce (cross-entropy, the thesis' best) or nr (noise-reduced, eq. 4.10–4.11);
    ``gumbel_tau``: temperature of the NR loss' Gumbel softmax (not stated; 1.0)."""

    name: str = setting("ce", flag="--loss", choices=("ce", "nr"),
                        help="ce: cross-entropy; nr: noise-reduced loss (thesis eq. 4.10–4.11)")
    gumbel_tau: float = setting(1.0, flag="--gumbel-tau", metavar="TAU", help="Gumbel-softmax temperature of nr")

    def checks(self) -> list[tuple[bool, str]]:
        return [
            (self.name in ("ce", "nr"), f"loss must be ce or nr, got {self.name!r}"),
            (self.gumbel_tau > 0, f"gumbel_tau must be positive, got {self.gumbel_tau}"),
        ]


@dataclass
class Stage2Config(SupervisedRunConfig):
    """Everything a stage-2 run depends on; saved resolved as ``RUN_DIR/config.yaml``.

    Defaults are the thesis' (table 5.1, §4.4): AdamW lr 1e-4, 20 epochs, batch 32,
    cross-entropy. ``init`` is the stage-1 checkpoint whose encoder (and classifier)
    the network starts from, or a stage-2 checkpoint that is fine-tuned whole; its
    architecture, classes and µm/px carry over.
    """

    data: Stage2DataConfig = field(default_factory=Stage2DataConfig)
    epochs: int = redefault(RunConfig, "epochs", 20)
    batch_size: int = redefault(RunConfig, "batch_size", 32)
    init: str = setting("", flag="--init", metavar="CKPT",
                        help="stage-1 checkpoint to start from, or a stage-2 checkpoint to fine-tune",
                        required="no checkpoint given (--init CKPT or init in the config file)")
    optim: AdamWConfig = field(default_factory=AdamWConfig)
    encoder: EncoderTraining = field(default_factory=EncoderTraining)
    loss: Stage2LossConfig = field(default_factory=Stage2LossConfig)

    def checks(self) -> list[tuple[bool, str]]:
        return [*super().checks(), (
            self.loss.name != "nr" or bool(self.data.pseudo_labels),
            "the nr loss weighs pseudo-labels by their CAMs: give --pseudo-labels DIR, or train full masks with --loss ce",
        )]


@dataclass
class PretrainDataConfig(DataSource):
    """Any folder of patches: a dataset (its train split) or a plain folder of images
    (``format`` folder, or auto when the folder is no known dataset; searched
    recursively). Images larger than ``patch_size_px`` are randomly cropped to it."""

    path: str = setting("", flag="--data", metavar="DIR",
                        help="a dataset (its train split) or any folder of images (searched recursively)",
                        required="no image folder given (--data DIR or data.path in the config file)")
    format: str = setting("auto", flag="--format", choices=("auto", "folder", *_FORMATS[1:]),
                          help="auto: a dataset if DIR is one, else a plain image folder")
    patch_size_px: int | None = setting(None, flag="--patch-size", metavar="PX", default_text="the preset's, 224",
                                        help="training crop size; larger images are cropped at random")

    def checks(self) -> list[tuple[bool, str]]:
        size = self.patch_size_px
        return [*super().checks(), (size is None or (size > 0 and size % 32 == 0),
                                    f"patch_size_px must be a positive multiple of 32, got {size}")]


@dataclass
class ContrastConfig:
    """Thesis eq. 4.1: L = L_intra + ``inter_weight`` · L_inter (λ_inter = 0.5, Zeng et
    al. 2025a). NT-Xent ``temperature`` and ``projection_dim`` are not stated in the
    thesis: 0.1 (the temperature of its SupCon) and SimCLR's 128."""

    inter_weight: float = setting(0.5, flag="--inter-weight", metavar="LAMBDA", help="λ_inter of eq. 4.1")
    temperature: float = setting(0.1, flag="--temperature", metavar="T", help="NT-Xent temperature")
    projection_dim: int = setting(128, help="output size of the projection heads")

    def checks(self) -> list[tuple[bool, str]]:
        return [
            (self.inter_weight >= 0, f"inter_weight must be ≥ 0, got {self.inter_weight}"),
            (self.temperature > 0, f"temperature must be positive, got {self.temperature}"),
            (self.projection_dim >= 1, f"projection_dim must be ≥ 1, got {self.projection_dim}"),
        ]


@dataclass
class PretrainConfig(RunConfig):
    """Everything an unsupervised pre-training run depends on (thesis §4.2, table 5.1:
    AdamW lr 1e-4, 20 epochs, batch 6, NT-Xent); saved as ``RUN_DIR/config.yaml``."""

    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    epochs: int = redefault(RunConfig, "epochs", 20)
    batch_size: int = redefault(RunConfig, "batch_size", 6)
    model: ModelSettings = field(default_factory=ModelSettings)
    optim: AdamWConfig = field(default_factory=AdamWConfig)
    contrast: ContrastConfig = field(default_factory=ContrastConfig)

    def checks(self) -> list[tuple[bool, str]]:
        return [*super().checks(), (self.batch_size >= 2,
                                    f"batch_size must be ≥ 2 (NT-Xent needs other images), got {self.batch_size}")]


@dataclass
class MethodBenchmarkConfig:
    """Sizes of the method benchmark (``wsi-seg benchmark-method``, :mod:`wsi_seg_training.experiment`);
    the defaults finish in under an hour on 2 CPU cores. ``data``: a dataset folder to run on
    instead of the generated one (``n_train`` / ``n_val`` / ``n_test`` then do not apply)."""

    work: str = ""
    data: str = setting("", flag="--data", metavar="DIR",
                        default_text="a synthetic set of --n-train / --n-test patches written into --work",
                        help="dataset to benchmark on (LUAD-HistoSeg / BCSS-WSSS layout or labels.csv, e.g. "
                             "from make-dataset; needs masks on its test split)")
    n_train: int = setting(800, flag="--n-train", metavar="N", help="train patches")
    n_val: int = 32
    n_test: int = setting(128, flag="--n-test", metavar="N", help="test patches")
    preset: str = setting("small", flag="--preset", metavar="NAME", help="model preset")
    stage1_epochs: int = setting(20, flag="--epochs", metavar="N", help="stage-1 epochs")
    stage2_epochs: int = setting(8, flag="--stage2-epochs", metavar="N", help="stage-2 epochs")
    stage1_batch_size: int | None = setting(None, flag="--stage1-batch-size", metavar="N", help="stage-1 batch",
                                            default_text="the stage-1 default, 16")
    stage2_batch_size: int = setting(16, flag="--stage2-batch-size", metavar="N", help="stage-2 batch")
    seed: int = setting(0, flag="--seed", metavar="N", help="seed of data and runs")
    device: str = setting("cpu", flag="--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N")


@dataclass
class MakeDatasetConfig:
    """What ``wsi-seg make-dataset`` cuts, and how (:mod:`wsi_seg_training.datasets.make`).

    Not stated anywhere, chosen here: the 0.6 / 0.1 / 0.3 image split and the 0.03 share a
    class must cover to enter a train patch's label (the issue's default); the glass seed
    is the one training applies to a csv dataset (grey > 200, 200 px)."""

    images: str = setting("", flag="--images", metavar="DIR", help="folder of RGB images", required="no --images given")
    masks: str = setting("", flag="--masks", metavar="DIR",
                         help="folder of single-channel index PNGs named as the images (0 = unlabelled, "
                              "k = class k of --classes)", required="no --masks given")
    classes: str = setting("", flag="--classes", metavar="A,B,…", help="names of mask indices 1, 2, …",
                           required="no --classes given")
    out: str = setting("", flag="--out", metavar="DIR", help="new (or empty) folder for the dataset",
                       required="no --out given")
    patch: int = setting(224, flag="--patch", metavar="PX", help="patch size in px")
    mpp: float | None = setting(None, flag="--mpp", metavar="UM", default_text="unknown",
                                help="µm/px of the images (recorded in make.json; train with the same --mpp)")
    patch_mpp: float | None = setting(None, flag="--patch-mpp", metavar="UM", default_text="as --mpp",
                                      help="resample the images to this µm/px before cutting (needs --mpp)")
    min_fraction: float = setting(0.03, flag="--min-fraction", metavar="F",
                                  help="share of a patch a class must cover to be in its image-level label")
    other_class: str = setting("", flag="--other-class", metavar="NAME", default_text="none",
                               help="a class for tissue the masks leave unlabelled (0 and not glass); "
                                    "without it such tissue is background")
    fractions: str = setting("0.6,0.1,0.3", flag="--fractions", metavar="TRAIN,VAL,TEST",
                             help="shares of the images per split")
    seed: int = setting(0, flag="--seed", metavar="N", help="seed of the split")
    bkg_gray_threshold: float = setting(200.0, help="glass seed: grey level above which a pixel is glass")
    bkg_min_size_px: int = setting(200, help="glass seed: white regions smaller than this are tissue")

    def class_names(self) -> tuple[str, ...]:
        """The dataset's classes: --classes, then --other-class when given."""
        names = tuple(n.strip() for n in self.classes.split(",") if n.strip())
        return (*names, self.other_class.strip()) if self.other_class.strip() else names

    def split_fractions(self) -> tuple[float, float, float]:
        try:
            parts = tuple(float(v) for v in self.fractions.split(","))
        except ValueError:
            parts = ()
        if len(parts) != 3 or any(v < 0 or not math.isfinite(v) for v in parts) or parts[0] <= 0:
            raise ConfigError(f"--fractions {self.fractions}: expected three shares TRAIN,VAL,TEST ≥ 0, "
                              "train > 0 (e.g. 0.6,0.1,0.3)")
        total = sum(parts)
        return parts[0] / total, parts[1] / total, parts[2] / total

    def check(self) -> None:
        """ConfigError naming the first setting no run could use."""
        for name in ("images", "masks", "out"):
            if not getattr(self, name):
                raise ConfigError(f"no --{name} given")
        names = self.class_names()
        if not self.classes.strip():
            raise ConfigError("no --classes given (names of mask indices 1, 2, …, comma separated)")
        if len(set(names)) != len(names) or any(n.lower() in ("filename", "split", "mask") for n in names):
            raise ConfigError(f"--classes {','.join(names)}: class names must be distinct and not "
                              "filename, split or mask")
        if self.patch < 16:
            raise ConfigError(f"--patch must be at least 16 px, got {self.patch}")
        if not 0.0 < self.min_fraction <= 1.0:
            raise ConfigError(f"--min-fraction must be in (0, 1], got {self.min_fraction}")
        if self.patch_mpp is not None and self.mpp is None:
            raise ConfigError("--patch-mpp needs --mpp (the µm/px of the images)")
        for name in ("mpp", "patch_mpp"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value}")
        self.split_fractions()



def _convert(tp: Any, value: Any, where: str) -> Any:
    """Check/convert a scalar config value against its annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, Path)):
            return str(value)
    else:  # pragma: no cover - all fields are scalars or dataclasses
        return value
    raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")


def _build(cls: type, data: dict[str, Any], source: str, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"known: {', '.join(prefix + n for n in sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, source, f"{prefix}{name}.")
        else:
            kwargs[name] = _convert(tp, value, f"{source}: {prefix}{name}")
    return cls(**kwargs)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML (.yaml/.yml), TOML (.toml) or JSON (.json) file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc})") from exc
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError as exc:  # Python 3.10
                raise ConfigError(f"{path}: TOML configs need Python ≥ 3.11; use YAML") from exc
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"{path}: unknown config file type {suffix!r}; use .yaml, .toml or .json")
    except ConfigError:
        raise
    except Exception as exc:  # yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: not a valid {suffix.lstrip('.').upper()} file ({first})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return data


def load_stage1_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Stage1Config:
    """Defaults ← config file ← ``overrides`` (dotted keys, e.g. ``{"optim.lr": 0.01}``)."""
    return load_config(Stage1Config, path, overrides)


def load_config(cls: type[_C], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> _C:
    """A config of class ``cls``: defaults ← config file ← ``overrides`` (dotted keys)."""
    data: dict[str, Any] = load_config_file(path) if path is not None else {}
    source = str(path) if path is not None else "config"
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: {p} must be a mapping")
        node[leaf] = value
    return cls.from_dict(data, source=source)


def dump_yaml(cfg: RunConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
