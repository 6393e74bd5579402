"""Gumbel-softmax probabilities with their own seed (the P_i of thesis eq. 4.11)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GumbelSoftmax(nn.Module):
    """P = ``torch.nn.functional.gumbel_softmax(logits, tau, hard=False)`` over dim 1.

    With a ``seed`` (or after :meth:`reseed`) the k-th call draws its Gumbel noise from
    a seed derived from (``seed``, k) inside a forked RNG, so results repeat run to run and across resumes
    and the global RNG is left untouched; without one it draws from the global RNG.
    """

    def __init__(self, tau: float = 1.0, seed: int | None = None) -> None:
        super().__init__()
        if not tau > 0:
            raise ValueError(f"Gumbel-softmax temperature must be positive, got {tau}")
        self.tau = tau
        self.seed = seed
        self.calls = 0

    def reseed(self, seed: int) -> None:
        """Restart the noise sequence (e.g. per epoch, so resumed runs draw the same)."""
        self.seed = seed
        self.calls = 0

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, C, …) logits → (B, C, …) probabilities summing to 1 over C."""
        if self.seed is None:
            return F.gumbel_softmax(logits, tau=self.tau, hard=False, dim=1)
        devices = list(range(torch.cuda.device_count())) if logits.is_cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed((self.seed * 2_654_435_761 + self.calls) % 2**63)
            self.calls += 1
            return F.gumbel_softmax(logits, tau=self.tau, hard=False, dim=1)
