"""Normalisation between local units (the 'decoupled normalisation' of DTG-FF).

A unit's goodness is read from its raw activation while the next unit receives a separately
normalised copy, so a unit cannot hand its goodness on and the next unit must find new features.
These norms are parameter-free on purpose: the coupled ablation re-applies the very same norm
inside the goodness head, and the two must be the same function. ``'batchnorm'`` (Trifecta's norm at
each block's input, for classic FF) is BatchNorm without affine parameters over the batch, which in
classic FF holds the positive and the negative pass together: unlike the per-sample norms it keeps how
a sample's energy compares with the batch's. Its running statistics are buffers, one set per instance.
``'groupnorm'`` is GroupNorm without affine parameters over the unit's goodness channel groups
(``goodness_groups``; one group, the whole activation, when that is 0): with one group per class it is
DeeperForward's norm between layers (Sun et al. 2025, ``model/cwconv.py``: ``F.group_norm(y, num_class)``), which
takes each class group's own energy out of what the next unit receives.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, unknown_choice

__all__ = ['LengthNorm', 'ChannelLayerNorm', 'UNIT_NORMS', 'create_unit_norm']

_EPS = 1e-6


class LengthNorm(nn.Module):
    """Per-position L2 normalisation over channels, scaled so each element has unit RMS (Hinton's FF)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.float().square().mean(1, keepdim=True) + _EPS).to(x.dtype)


def channel_layer_norm(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free LayerNorm over dim 1 of an NCHW or NC tensor."""
    if x.ndim == 2:
        return F.layer_norm(x, x.shape[1:], eps=_EPS)
    return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], eps=_EPS).permute(0, 3, 1, 2)


torch.fx.wrap('channel_layer_norm')  # branches on the rank: an FX leaf


class ChannelLayerNorm(nn.Module):
    """Per-position LayerNorm over channels without affine parameters; works on NCHW and NC."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_layer_norm(x)


UNIT_NORMS = {'length': LengthNorm, 'layernorm': ChannelLayerNorm, 'batchnorm': nn.BatchNorm2d,
              'groupnorm': nn.GroupNorm, 'none': nn.Identity}


def create_unit_norm(kind: str, num_channels: int = 0, spatial: bool = True, groups: int = 0) -> nn.Module:
    """Build a between-unit norm by name ('length', 'layernorm', 'batchnorm', 'groupnorm' or 'none').

    ``num_channels`` (and ``spatial``: 2d or 1d) size the 'batchnorm' statistics; ``num_channels`` and ``groups``
    (0: one group) split the channels for 'groupnorm'; the others ignore them.
    """
    if kind not in UNIT_NORMS:
        raise unknown_choice('unit norm', kind, UNIT_NORMS)
    if kind == 'groupnorm':
        g = groups or 1
        if num_channels < 1 or num_channels % g:
            raise ConfigError(f"unit_norm='groupnorm' normalises each of the goodness_groups={g} channel groups, "
                              f'which must split the {num_channels} channels of every unit but the last evenly; '
                              f'allowed: channels that are multiples of {g}')
        return nn.GroupNorm(g, num_channels, affine=False)
    if kind == 'batchnorm':
        if num_channels < 1:
            raise ValueError("unit_norm='batchnorm' needs the unit's channel count")
        return (nn.BatchNorm2d if spatial else nn.BatchNorm1d)(num_channels, affine=False)
    return UNIT_NORMS[kind]()
