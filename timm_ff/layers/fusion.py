"""Multi-layer fusion: one prediction from the class logits of the last M units.

'learned' fusion holds one weight per fused unit (softmax-normalised). The trainer fits those
weights on detached per-unit logits with their own loss, so fusion never sends gradient into a
unit. 'mean' averages with fixed equal weights, 'last' uses only the last unit (the ablation).
"""
from typing import Sequence

import torch
import torch.nn as nn

from ..errors import unknown_choice

__all__ = ['FUSION_MODES', 'LogitFusion']

FUSION_MODES = ('learned', 'mean', 'last')


class LogitFusion(nn.Module):
    """Weighted combination of per-unit logits."""

    def __init__(self, num_units: int, mode: str = 'learned', fuse_last: int = 0):
        """
        Args:
            num_units: Units in the model.
            mode: 'learned', 'mean' or 'last'.
            fuse_last: M, how many of the last units are fused; 0 means all.
        """
        super().__init__()
        if mode not in FUSION_MODES:
            raise unknown_choice('fusion', mode, FUSION_MODES)
        if not 0 <= fuse_last <= num_units:
            raise ValueError(f'fuse_last={fuse_last} must be between 0 and the {num_units} units')
        self.mode = mode
        self.num_units = num_units
        m = 1 if mode == 'last' else (fuse_last or num_units)
        self.first = num_units - m
        self.logit_weights = nn.Parameter(torch.zeros(m)) if mode == 'learned' else None

    @property
    def fused_units(self) -> list:
        """Indices of the units that enter the fusion."""
        return list(range(self.first, self.num_units))

    def weights(self) -> torch.Tensor:
        """The (M,) fusion weights, summing to 1."""
        m = self.num_units - self.first
        if self.logit_weights is None:
            return torch.full((m,), 1.0 / m)
        return self.logit_weights.float().softmax(0)

    def forward(self, unit_logits: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fuse a list with one (B, K) logits tensor per unit (all units, in order)."""
        if len(unit_logits) != self.num_units:
            raise ValueError(f'fusion expects logits of {self.num_units} units, got {len(unit_logits)}')
        stacked = torch.stack([z.float() for z in unit_logits[self.first:]], 0)
        w = self.weights().to(stacked.device)[:, None, None]  # stacked is (M, B, K)
        return (w * stacked).sum(0)
