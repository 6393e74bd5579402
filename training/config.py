"""Training configuration: typed dataclasses, loadable from YAML, TOML or JSON.

:class:`Stage1Config` (classification + PSCL), :class:`Stage2Config` (segmentation on
the stage-1 pseudo-labels) and :class:`PretrainConfig` (unsupervised NT-Xent
pre-training of the encoder); :func:`load_config` reads any of them.

Defaults are the thesis' (table 5.1). Stage 1 (§4.3): SGD lr 0.1 with polynomial decay
(power 0.9), 5 epochs, batch 16, λ_PSCL = 0.1, τ = 0.25, SupCon temperature 0.1,
background in PSCL, no gating (τ_g = 0.8 when on); the thesis does not state SGD
momentum or weight decay, 0.9 and 1e-4 are the usual values for this recipe. Stage 2
(§4.4): AdamW lr 1e-4, 20 epochs, batch 32, cross-entropy. Pre-training (§4.2): AdamW
lr 1e-4, 20 epochs, batch 6, L_intra + 0.5·L_inter. Values the thesis leaves open are
named in each dataclass' docstring.

A config file holds any subset of the fields, nested like the dataclasses::

    epochs: 5
    batch_size: 16
    optim: {lr: 0.1, momentum: 0.9, weight_decay: 1.0e-4, poly_power: 0.9}
    pscl: {enabled: true, weight: 0.1, threshold: 0.25, include_background: true}
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsi_seg.errors import ConfigError

CONFIG_FORMAT_VERSION = 1


class _ConfigFile:
    """``to_dict`` / ``from_dict`` of the top-level config dataclasses (format versioned)."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        d["format_version"] = CONFIG_FORMAT_VERSION
        return d

    @classmethod
    def from_dict(cls: type[_C], data: dict[str, Any], source: str = "config") -> _C:
        data = dict(data)
        data.pop("format_version", None)
        return _build(cls, data, source)


_C = typing.TypeVar("_C", bound=_ConfigFile)


@dataclass
class DataConfig:
    """Where the patches are and how their background is seeded.

    ``background_seed`` / ``bkg_min_size_px`` / ``mpp`` None: the format's default
    (LUAD: seeding on, 200 px, 1.0 µm/px; BCSS: off, 600 px, 0.25 µm/px; csv: on,
    200 px, µm/px must be given or 0.5 is assumed with a warning).
    """

    path: str = ""
    format: str = "auto"
    background_seed: bool | None = None
    bkg_gray_threshold: float = 200.0
    bkg_min_size_px: int | None = None
    mpp: float | None = None
    workers: int = 2


@dataclass
class ModelSettings:
    """The network: a wsi_seg preset, optionally with another timm backbone, and weights.

    ``pretrained``: ``auto`` (ImageNet weights for the standard presets — the thesis'
    ImageNet-22k Swin-T for swin-t, §4.1.1, table 5.13 — random for small/tiny),
    ``imagenet``, ``timm:<tag>``, a ``.safetensors`` file, or ``none`` / null (random
    init); see :mod:`wsi_seg.model.pretrained`. ``pretrained_sha256``: filled in by the run with the
    hash of the file loaded (so config.yaml records it); when given, a pin the file must match.
    """

    preset: str = "swin-t"
    backbone: str | None = None
    pretrained: str | None = "auto"
    pretrained_sha256: str | None = None


@dataclass
class OptimConfig:
    """SGD with polynomial learning-rate decay per step: lr · (1 − t/T)^power."""

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9


@dataclass
class PsclConfig:
    """The PSCL term (thesis eq. 4.2, 4.6–4.8) and CAM gating (eq. 4.4–4.5)."""

    enabled: bool = True
    weight: float = 0.1
    threshold: float = 0.25
    include_background: bool = True
    temperature: float = 0.1
    max_pixels_per_class_per_image: int | None = 100
    max_pixels_total: int | None = 2048
    gating: bool = False
    gating_threshold: float = 0.8


@dataclass
class Stage1Config(_ConfigFile):
    """Everything a stage-1 run depends on; saved resolved as ``RUN_DIR/config.yaml``."""

    out: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelSettings = field(default_factory=ModelSettings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    pscl: PsclConfig = field(default_factory=PsclConfig)
    epochs: int = 5
    batch_size: int = 16
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    progress: bool = True
    val_every: int = 1
    val_max_patches: int | None = None

    def validate(self) -> Stage1Config:
        """Raise ConfigError on values no run could use; returns self."""
        _check([
            *_run_checks(self),
            (self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}"),
            (self.pscl.weight >= 0, f"pscl weight must be ≥ 0, got {self.pscl.weight}"),
            (0 <= self.pscl.threshold < 1, f"pscl threshold must be in [0, 1), got {self.pscl.threshold}"),
            (0 <= self.pscl.gating_threshold < 1, f"gating threshold must be in [0, 1), got {self.pscl.gating_threshold}"),
            (self.pscl.temperature > 0, f"pscl temperature must be positive, got {self.pscl.temperature}"),
            (self.val_every >= 0, f"val_every must be ≥ 0, got {self.val_every}"),
            (self.data.mpp is None or self.data.mpp > 0, f"mpp must be positive, got {self.data.mpp}"),
            (bool(self.data.path), "no dataset given (--data DIR or data.path in the config file)"),
            (bool(self.out), "no run directory given (--out DIR or out in the config file)"),
        ])
        return self


def _check(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _run_checks(cfg: Any) -> list[tuple[bool, str]]:
    """The checks every training config shares (its epochs, optimizer, loader, precision)."""
    return [
        (cfg.epochs >= 1, f"epochs must be ≥ 1, got {cfg.epochs}"),
        (cfg.optim.lr > 0, f"lr must be positive, got {cfg.optim.lr}"),
        (cfg.data.workers >= 0, f"workers must be ≥ 0, got {cfg.data.workers}"),
        (cfg.precision in ("auto", "fp32", "bf16", "fp16"), f"precision must be auto, fp32, bf16 or fp16, got {cfg.precision!r}"),
    ]


@dataclass
class Stage2DataConfig:
    """The dataset (its train split: images; val split: masks for val mIoU) and the
    pseudo-label folder ``wsi-seg pseudo-labels`` wrote for its train split."""

    path: str = ""
    format: str = "auto"
    pseudo_labels: str = ""
    workers: int = 2


@dataclass
class AdamWConfig:
    """AdamW at a constant learning rate (thesis table 5.1: lr 1e-4, no scheduler). The
    thesis does not state weight decay; 0.01 is torch's AdamW default."""

    lr: float = 1e-4
    weight_decay: float = 0.01


@dataclass
class Stage2LossConfig:
    """``name`` ce (cross-entropy, the thesis' best) or nr (noise-reduced, eq. 4.10–4.11);
    ``gumbel_tau``: temperature of the NR loss' Gumbel softmax (not stated; 1.0)."""

    name: str = "ce"
    gumbel_tau: float = 1.0


@dataclass
class Stage2Config(_ConfigFile):
    """Everything a stage-2 run depends on; saved resolved as ``RUN_DIR/config.yaml``.

    Defaults are the thesis' (table 5.1, §4.4): AdamW lr 1e-4, 20 epochs, batch 32,
    cross-entropy. ``init`` is the stage-1 checkpoint whose encoder (and classifier)
    the network starts from; its architecture, classes and µm/px carry over.
    """

    out: str = ""
    init: str = ""
    data: Stage2DataConfig = field(default_factory=Stage2DataConfig)
    optim: AdamWConfig = field(default_factory=AdamWConfig)
    loss: Stage2LossConfig = field(default_factory=Stage2LossConfig)
    epochs: int = 20
    batch_size: int = 32
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    progress: bool = True
    val_every: int = 1
    val_max_patches: int | None = None

    def validate(self) -> Stage2Config:
        """Raise ConfigError on values no run could use; returns self."""
        _check([
            *_run_checks(self),
            (self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}"),
            (self.optim.weight_decay >= 0, f"weight_decay must be ≥ 0, got {self.optim.weight_decay}"),
            (self.loss.name in ("ce", "nr"), f"loss must be ce or nr, got {self.loss.name!r}"),
            (self.loss.gumbel_tau > 0, f"gumbel_tau must be positive, got {self.loss.gumbel_tau}"),
            (self.val_every >= 0, f"val_every must be ≥ 0, got {self.val_every}"),
            (bool(self.data.path), "no dataset given (--data DIR or data.path in the config file)"),
            (bool(self.data.pseudo_labels),
             "no pseudo-labels given (--pseudo-labels DIR, written by wsi-seg pseudo-labels, or data.pseudo_labels)"),
            (bool(self.init), "no stage-1 checkpoint given (--init CKPT or init in the config file)"),
            (bool(self.out), "no run directory given (--out DIR or out in the config file)"),
        ])
        return self


@dataclass
class PretrainDataConfig:
    """Any folder of patches: a dataset (its train split) or a plain folder of images
    (``format`` folder, or auto when the folder is no known dataset; searched
    recursively). Images larger than ``patch_size_px`` are randomly cropped to it."""

    path: str = ""
    format: str = "auto"
    patch_size_px: int | None = None  # None: the model preset's (224)
    workers: int = 2


@dataclass
class ContrastConfig:
    """Thesis eq. 4.1: L = L_intra + ``inter_weight`` · L_inter (λ_inter = 0.5, Zeng et
    al. 2025a). NT-Xent ``temperature`` and ``projection_dim`` are not stated in the
    thesis: 0.1 (the temperature of its SupCon) and SimCLR's 128."""

    inter_weight: float = 0.5
    temperature: float = 0.1
    projection_dim: int = 128


@dataclass
class PretrainConfig(_ConfigFile):
    """Everything an unsupervised pre-training run depends on (thesis §4.2, table 5.1:
    AdamW lr 1e-4, 20 epochs, batch 6, NT-Xent); saved as ``RUN_DIR/config.yaml``."""

    out: str = ""
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    model: ModelSettings = field(default_factory=ModelSettings)
    optim: AdamWConfig = field(default_factory=AdamWConfig)
    contrast: ContrastConfig = field(default_factory=ContrastConfig)
    epochs: int = 20
    batch_size: int = 6
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    progress: bool = True

    def validate(self) -> PretrainConfig:
        """Raise ConfigError on values no run could use; returns self."""
        size = self.data.patch_size_px
        _check([
            *_run_checks(self),
            (self.batch_size >= 2, f"batch_size must be ≥ 2 (NT-Xent needs other images), got {self.batch_size}"),
            (self.optim.weight_decay >= 0, f"weight_decay must be ≥ 0, got {self.optim.weight_decay}"),
            (self.contrast.inter_weight >= 0, f"inter_weight must be ≥ 0, got {self.contrast.inter_weight}"),
            (self.contrast.temperature > 0, f"temperature must be positive, got {self.contrast.temperature}"),
            (self.contrast.projection_dim >= 1, f"projection_dim must be ≥ 1, got {self.contrast.projection_dim}"),
            (size is None or (size > 0 and size % 32 == 0), f"patch_size_px must be a positive multiple of 32, got {size}"),
            (bool(self.data.path), "no image folder given (--data DIR or data.path in the config file)"),
            (bool(self.out), "no run directory given (--out DIR or out in the config file)"),
        ])
        return self


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


def dump_yaml(cfg: Stage1Config | Stage2Config | PretrainConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
