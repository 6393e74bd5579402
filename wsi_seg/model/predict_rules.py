"""The rules that choose and gate a stage-1 patch's classes when a network predicts.

Thesis: "Weakly supervised segmentation of histopathology images with pseudo-supervised
contrastive learning"; equation and table numbers below refer to it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from wsi_seg.errors import ConfigError
from wsi_seg.model.config import ModelConfig

# a pixel left out of stage-2 targets and scores (fallback "ignore"); torch's cross_entropy
# takes it as ignore_index, and it is above any class index a uint8 mask holds
IGNORE_LABEL = 255
GATING_FALLBACKS = ("top", "ignore")
EPSILON_READINGS = ("logit", "floor")


@dataclass(frozen=True)
class PredictRules:
    """Which classes a stage-1 patch may take, and how its CAMs are gated, in ``predict``.

    Used by the CAM head only (eq. 4.3, 4.9). The segmentation head predicts background and
    classes itself and ignores them.

    * ``score_threshold``: when no image labels are given, a class is kept when its
      sigmoid score is ≥ this, and each patch's top class is always kept. None uses the
      checkpoint's ``cam_score_threshold`` (0.5, or the gate's threshold for a run trained
      with gating).
      ``wsi-seg evaluate`` passes each protocol's reference threshold here.
    * ``gating_threshold``: τ_g of eq. 4.4–4.5, CAM_n ← CAM_n · [sigmoid(score_n) > τ_g],
      background always kept. None turns gating off. §4.3.2 sets 0.8 "for all experiments".
    * ``gating_epsilon``: ε of tables 5.16/5.17 ("Gating (ε = 0)" is the headline row),
      applied as ``epsilon_reading`` says (docs/method.md measures both):
      ``logit``: a class passes when its score (the logit) > ε, i.e. sigmoid > sigmoid(ε);
      τ_g is then not used. ``floor``: a class passes when sigmoid > τ_g, and a rejected
      class keeps ε × its CAM (ε = 0 is eq. 4.5).
    * ``gating_fallback``: what a patch whose every class the gate rejects becomes. Eq.
      4.5 alone leaves it no CAM at all, and argmax would give every pixel class 1.
      ``top``: its highest-scoring allowed class passes; ``ignore``: its tissue pixels
      become :data:`IGNORE_LABEL` (left out of stage-2 targets and scores; ``segment``
      writes them as 0, no class).

    With image labels (training pseudo-labels, the ``gt`` oracle), the CAMs of absent
    classes are zeroed instead and ``score_threshold`` does not apply. Gating still does,
    among the present classes.
    """

    score_threshold: float | None = None
    gating_threshold: float | None = None
    gating_epsilon: float = 0.0
    gating_fallback: str = "top"
    epsilon_reading: str = "floor"

    def __post_init__(self) -> None:
        if self.score_threshold is not None and not 0 <= self.score_threshold <= 1:
            raise ConfigError(f"score threshold must be in [0, 1], got {self.score_threshold}")
        if self.gating_threshold is not None and not 0 <= self.gating_threshold < 1:
            raise ConfigError(f"gating threshold must be in [0, 1), got {self.gating_threshold}")
        if not 0 <= self.gating_epsilon < 1:
            raise ConfigError(f"gating epsilon must be in [0, 1), got {self.gating_epsilon}")
        if self.gating_fallback not in GATING_FALLBACKS:
            raise ConfigError(f"gating fallback must be one of {', '.join(GATING_FALLBACKS)}, got {self.gating_fallback!r}")
        if self.epsilon_reading not in EPSILON_READINGS:
            raise ConfigError(f"epsilon reading must be one of {', '.join(EPSILON_READINGS)}, got {self.epsilon_reading!r}")

    @property
    def gate_threshold(self) -> float | None:
        """The sigmoid score a class must exceed to pass the gate (None: no gating)."""
        if self.gating_threshold is None:
            return None
        if self.epsilon_reading == "logit":
            return 1.0 / (1.0 + math.exp(-self.gating_epsilon))
        return self.gating_threshold

    @property
    def gate_floor(self) -> float:
        """The fraction of its CAM a rejected class keeps."""
        return self.gating_epsilon if self.epsilon_reading == "floor" else 0.0

    @classmethod
    def of_checkpoint(cls, cfg: ModelConfig) -> PredictRules:
        """The gating a stage-1 checkpoint's run made its pseudo-labels and val scores with
        (its provenance ``["training"]["pseudo_labels"]``, written from :meth:`gating_record`);
        no gating for checkpoints that do not record it."""
        recorded = (cfg.provenance.get("training") or {}).get("pseudo_labels") or {}
        return cls(gating_threshold=recorded.get("gating_threshold"),
                   gating_epsilon=float(recorded.get("gating_epsilon") or 0.0),
                   gating_fallback=recorded.get("gating_fallback", "top"),
                   epsilon_reading=recorded.get("epsilon_reading", "floor"))

    def gating_record(self) -> dict[str, Any]:
        """The gating as recorded in checkpoint provenance, pseudo-label manifests and
        evaluation JSON (:meth:`of_checkpoint` reads it back)."""
        return {"gating_threshold": self.gating_threshold, "gating_epsilon": self.gating_epsilon,
                "gating_fallback": self.gating_fallback, "epsilon_reading": self.epsilon_reading}

    def record(self) -> dict[str, Any]:
        """Every rule, as ``segment`` records it in a result's provenance."""
        return {"score_threshold": self.score_threshold, **self.gating_record()}

    def gating_line(self) -> str:
        """The gating in words for reports, e.g. ``τ_g 0.8, ε 0.0 (floor), fallback top`` or ``off``."""
        if self.gating_threshold is None:
            return "off"
        if self.epsilon_reading == "logit":
            return f"logit > ε {self.gating_epsilon} (sigmoid > {self.gate_threshold:.3f}), fallback {self.gating_fallback}"
        return f"τ_g {self.gating_threshold}, ε {self.gating_epsilon} (floor), fallback {self.gating_fallback}"

    def replace(self, **changes: Any) -> PredictRules:
        """A copy with ``changes`` applied, validated again."""
        return dataclasses.replace(self, **changes)
