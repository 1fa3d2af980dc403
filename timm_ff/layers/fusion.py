"""Multi-layer fusion: one prediction from the class logits of the last M units.

'learned' fusion holds one weight per fused unit (softmax-normalised). The trainer fits those
weights on detached per-unit logits with their own loss, so fusion never sends gradient into a
unit. 'mean' averages with fixed equal weights, 'last' uses only the last unit (the ablation).

A ``unit_mask`` buffer (saved with the weights) restricts 'learned' and 'mean' to a subset of the
fused units. After training the trainer's fusion check sets it with :meth:`LogitFusion.select_units`
when a single unit, or the mean of a run of consecutive units, is more accurate on training images than the
fusion as trained, so the fused prediction never trails a unit it could have chosen.
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
        self.register_buffer('unit_mask', torch.ones(m))

    @property
    def fused_units(self) -> list:
        """Indices of the units that enter the fusion."""
        return list(range(self.first, self.num_units))

    def weights(self) -> torch.Tensor:
        """The (M,) fusion weights, summing to 1 (zero outside ``unit_mask``)."""
        mask = self.unit_mask.float() > 0
        if self.logit_weights is None:
            return mask.float() / mask.sum()
        return self.logit_weights.float().masked_fill(~mask.to(self.logit_weights.device), float('-inf')).softmax(0)

    @torch.no_grad()
    def select_units(self, units: Sequence[int]):
        """Fuse only ``units`` (a subset of :attr:`fused_units`), with equal weights."""
        bad = [u for u in units if u not in self.fused_units]
        if not units or bad:
            raise ValueError(f'cannot select units {list(units)}; fused units: {self.fused_units}')
        self.unit_mask.zero_()
        self.unit_mask[[u - self.first for u in units]] = 1.0
        if self.logit_weights is not None:
            self.logit_weights.zero_()

    def combine(self, unit_logits: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
        """Fuse a list of (B, K) logits (all units, in order) with given (M,) weights."""
        if len(unit_logits) != self.num_units:
            raise ValueError(f'fusion expects logits of {self.num_units} units, got {len(unit_logits)}')
        stacked = torch.stack([z.float() for z in unit_logits[self.first:]], 0)
        return (weights.to(stacked.device)[:, None, None] * stacked).sum(0)  # stacked is (M, B, K)

    def forward(self, unit_logits: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fuse a list with one (B, K) logits tensor per unit (all units, in order)."""
        return self.combine(unit_logits, self.weights())
