"""The rules that choose and gate a stage-1 patch's classes when a network predicts.

Thesis: "Weakly supervised segmentation of histopathology images with pseudo-supervised
contrastive learning"; equation and table numbers below refer to it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from wsi_seg.errors import ConfigError
from wsi_seg.model.config import ModelConfig


@dataclass(frozen=True)
class PredictRules:
    """Which classes a stage-1 patch may take, and how its CAMs are gated, in ``predict``.

    Used by the CAM head only (eq. 4.3, 4.9). The segmentation head predicts background and
    classes itself and ignores them.

    * ``score_threshold``: when no image labels are given, a class is kept when its
      sigmoid score is ≥ this, and each patch's top class is always kept. None uses the
      checkpoint's ``cam_score_threshold`` (0.5, or τ_g for a run trained with gating).
      ``wsi-seg evaluate`` passes each protocol's reference threshold here.
    * ``gating_threshold``: τ_g of eq. 4.4–4.5, CAM_n ← CAM_n · [sigmoid(score_n) > τ_g],
      background always kept. None turns gating off. The thesis uses 0.8 (§4.3.2).
    * ``gating_epsilon``: ε of tables 5.16/5.17, the fraction of its CAM that a gated-out
      class keeps. 0 is eq. 4.5.

    With image labels (training pseudo-labels, the ``gt`` oracle), the CAMs of absent
    classes are zeroed instead and ``score_threshold`` does not apply. Gating still does.
    """

    score_threshold: float | None = None
    gating_threshold: float | None = None
    gating_epsilon: float = 0.0

    def __post_init__(self) -> None:
        if self.score_threshold is not None and not 0 <= self.score_threshold <= 1:
            raise ConfigError(f"score threshold must be in [0, 1], got {self.score_threshold}")
        if self.gating_threshold is not None and not 0 <= self.gating_threshold < 1:
            raise ConfigError(f"gating threshold must be in [0, 1), got {self.gating_threshold}")
        if not 0 <= self.gating_epsilon < 1:
            raise ConfigError(f"gating epsilon must be in [0, 1), got {self.gating_epsilon}")

    @classmethod
    def of_checkpoint(cls, cfg: ModelConfig) -> PredictRules:
        """The gating a stage-1 checkpoint's run made its pseudo-labels and val scores with
        (its provenance ``["training"]["pseudo_labels"]``, written from :meth:`gating_record`);
        no gating for checkpoints that do not record it."""
        recorded = cfg.provenance.get("training", {}).get("pseudo_labels", {})
        return cls(gating_threshold=recorded.get("gating_threshold"),
                   gating_epsilon=float(recorded.get("gating_epsilon") or 0.0))

    def gating_record(self) -> dict[str, Any]:
        """The gating as recorded in checkpoint provenance, pseudo-label manifests and
        evaluation JSON (:meth:`of_checkpoint` reads it back)."""
        return {"gating_threshold": self.gating_threshold, "gating_epsilon": self.gating_epsilon}

    def gating_line(self) -> str:
        """The gating in words for reports: ``τ_g 0.8, ε 0.0`` or ``off``."""
        return "off" if self.gating_threshold is None else f"τ_g {self.gating_threshold}, ε {self.gating_epsilon}"

    def replace(self, **changes: Any) -> PredictRules:
        """A copy with ``changes`` applied, validated again."""
        return dataclasses.replace(self, **changes)
