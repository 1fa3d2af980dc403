"""Goodness heads: from a unit's activation to a goodness vector and K class logits.

Goodness is the energy (mean or sum of squares) of an activation, read per channel group
(CwComp / ASGE style), per spatial patch, or over the whole tensor. It is always computed in
fp32, since squares of bf16/fp16 activations overflow or lose the small differences that carry
the class signal.
"""
import contextlib
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, unknown_choice

__all__ = ['GOODNESS_MODES', 'GOODNESS_REDUCE', 'HEAD_PROJ', 'goodness_vector', 'FixedLinear', 'ClassGroupMean',
           'GoodnessHead', 'register_goodness', 'list_goodness']

GOODNESS_MODES = ('channel', 'patch', 'channel_patch', 'grid')
GOODNESS_REDUCE = ('mean', 'sum')
HEAD_PROJ = ('learned', 'fixed', 'class_groups')
HEAD_NORMS = ('none', 'batchnorm')

# user goodness modes: name -> (fn(h, groups, patches, reduce) -> (B, G), size(in_chs, groups, patches) -> G)
_USER_GOODNESS: Dict[str, Tuple[Callable, Callable]] = {}


def register_goodness(name: str, num_values: Callable[[int, int, int], int]):
    """Decorator adding a goodness mode, usable as the ``goodness=name`` model kwarg.

    Args:
        name: The mode's name (must not shadow a built-in one).
        num_values: ``(in_chs, groups, patches) -> G``, the length of the goodness vector, so the
            head's goodness -> logits map can be built before any data is seen.

    The decorated function is called as ``fn(h, groups=, patches=, reduce=)`` on the unit's raw
    activation (any dtype) and must return a (B, G) tensor; the head casts it to fp32. A checkpoint
    trained with a user mode loads once the module that registers it is imported (as for any timm
    model defined outside timm).
    """
    if name in GOODNESS_MODES:
        raise ValueError(f'goodness mode {name!r} is built in; pick another name')

    def wrap(fn: Callable) -> Callable:
        _USER_GOODNESS[name] = (fn, num_values)
        return fn
    return wrap


def list_goodness() -> Tuple[str, ...]:
    """Every goodness mode: the built-in ones, then the registered ones."""
    return GOODNESS_MODES + tuple(sorted(_USER_GOODNESS))


def goodness_vector(
        h: torch.Tensor,
        mode: str = 'channel',
        groups: int = 0,
        patches: int = 2,
        reduce: str = 'mean',
) -> torch.Tensor:
    """Energy of ``h`` per channel group and/or spatial patch, in fp32.

    Args:
        h: Activation, (B, C, H, W) or (B, C).
        mode: 'channel' (one value per channel group), 'patch' (one value per cell of a
            ``patches`` x ``patches`` grid, channels pooled), 'channel_patch' (both, concatenated) or
            'grid' (one value per channel group *per* grid cell: spatial layout kept, G * patches^2 values).
        groups: Channel groups for 'channel' and 'grid'; 0 means one group per channel.
        patches: Grid side for 'patch' and 'grid'.
        reduce: 'mean' or 'sum' of squares inside each group / patch.

    Returns:
        (B, G) goodness vector.
    """
    if mode in _USER_GOODNESS:
        return _USER_GOODNESS[mode][0](h, groups=groups, patches=patches, reduce=reduce).float()
    if mode not in GOODNESS_MODES:
        raise unknown_choice('goodness mode', mode, list_goodness())
    if reduce not in GOODNESS_REDUCE:
        raise unknown_choice('goodness reduce', reduce, GOODNESS_REDUCE)
    sq = h.float().square()
    if sq.ndim == 2:
        sq = sq[:, :, None, None]
    B, C, H, W = sq.shape
    pool = torch.mean if reduce == 'mean' else torch.sum
    parts = []
    if mode == 'grid':
        g = groups or C
        if C % g:
            raise ValueError(f'goodness groups={g} must divide the {C} channels of this unit')
        per_group = sq.reshape(B, g, C // g, H, W).mean(2)
        cells = F.adaptive_avg_pool2d(per_group, patches).flatten(1)
        return cells * (C // g * H * W) / (patches * patches) if reduce == 'sum' else cells
    if mode in ('channel', 'channel_patch'):
        g = groups or C
        if C % g:
            raise ValueError(f'goodness groups={g} must divide the {C} channels of this unit')
        parts.append(pool(sq.reshape(B, g, (C // g) * H * W), dim=2))
    if mode in ('patch', 'channel_patch'):
        if H == 1 and W == 1:
            raise ValueError("goodness mode 'patch' needs a spatial activation; this unit's output is (B, C)")
        per_pos = pool(sq, dim=1, keepdim=True)
        if reduce == 'mean':
            parts.append(F.adaptive_avg_pool2d(per_pos, patches).flatten(1))
        else:
            cells = F.adaptive_avg_pool2d(per_pos, patches).flatten(1)
            parts.append(cells * (H * W) / (patches * patches))
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


torch.fx.wrap('goodness_vector')  # shape-dependent Python: an FX leaf (called, not traced through)


class FixedLinear(nn.Module):
    """A random linear map held in buffers: saved with the weights, never trained."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        ref = nn.Linear(in_features, out_features)
        self.register_buffer('weight', ref.weight.detach().clone())
        self.register_buffer('bias', torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class ClassGroupMean(nn.Module):
    """Goodness -> K logits without parameters: class k's logit is the mean of the k-th of K equal, consecutive
    blocks of the goodness vector.

    On per-channel goodness (``goodness='channel'``) that is the energy (mean square over the block's channels and
    positions) of the k-th group of C / K channels: CwComp's class logit (Papachristodoulou et al. 2024). A registered
    goodness mode's vector is split the same way (DeeperForward's ``'relu_mean'`` with one group per class gives K
    values, each its class's logit).
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        if in_features < out_features or in_features % out_features:
            raise ConfigError(f"head_proj='class_groups' gives each of the K={out_features} classes an equal group of "
                              f"a unit's channels; a unit has {in_features}, allowed: a positive multiple of "
                              f'{out_features} ({out_features}, {2 * out_features}, ...)')
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.out_features, -1).mean(2)


class GoodnessHead(nn.Module):
    """Goodness vector -> K class logits, divided by the unit's temperature.

    With ``num_classes=0`` the head returns the scalar goodness per sample (mean or sum over the
    goodness vector), which is what classic FF thresholds and what label scoring compares.
    """

    def __init__(
            self,
            in_chs: int,
            num_classes: int,
            mode: str = 'channel',
            groups: int = 0,
            patches: int = 2,
            reduce: str = 'mean',
            proj: str = 'learned',
            temperature: Optional[nn.Module] = None,
            coupled_norm: Optional[nn.Module] = None,
            spatial: bool = True,
            norm: str = 'none',
    ):
        """
        Args:
            in_chs: Channels of the activation the head reads.
            num_classes: K; 0 gives the scalar-goodness head.
            mode: See :func:`goodness_vector`.
            groups: Channel groups (0: one per channel).
            patches: Patch grid side.
            reduce: 'mean' or 'sum' of squares.
            proj: 'learned' linear map to K logits, 'fixed' random map (a buffer), or 'class_groups' (each
                class's logit is the energy of its own group of C / K channels; :class:`ClassGroupMean`).
            temperature: Module mapping (goodness, logits) -> T (B or scalar); None means T = 1.
            coupled_norm: If given, goodness is read from ``coupled_norm(h)`` (the tensor handed
                to the next unit): the coupled-normalisation ablation.
            spatial: Whether the activation is (B, C, H, W); False for MLP units.
            norm: 'batchnorm' standardises each goodness value over the batch (no affine parameters;
                running statistics at eval, where it is a fixed affine map, so the logits stay a linear map of
                the goodness) before the projection; 'none' projects the raw goodness. Only for class heads.
        """
        super().__init__()
        if proj not in HEAD_PROJ:
            raise unknown_choice('head projection', proj, HEAD_PROJ)
        if norm not in HEAD_NORMS:
            raise unknown_choice('head norm', norm, HEAD_NORMS)
        if mode not in list_goodness():
            raise unknown_choice('goodness mode', mode, list_goodness())
        if proj == 'class_groups' and mode not in ('channel', *_USER_GOODNESS):  # a registered mode's own values
            raise unknown_choice("goodness mode for head_proj='class_groups' (one energy per channel)", mode,
                                 ('channel', *_USER_GOODNESS))
        if not spatial and mode not in ('channel', *_USER_GOODNESS):
            raise unknown_choice('goodness mode for a non-spatial (MLP) unit', mode, ('channel',))
        self.mode, self.groups, self.patches, self.reduce = mode, groups, patches, reduce
        self.proj_kind = proj
        self.num_classes = num_classes
        n_chan = (groups or in_chs) if mode in ('channel', 'channel_patch') else 0
        n_patch = patches * patches if mode in ('patch', 'channel_patch') else 0
        n_grid = (groups or in_chs) * patches * patches if mode == 'grid' else 0
        self.num_goodness = _USER_GOODNESS[mode][1](in_chs, groups, patches) if mode in _USER_GOODNESS else \
            n_chan + n_patch + n_grid
        self.coupled_norm = coupled_norm
        self.temperature = temperature
        self.norm = nn.BatchNorm1d(self.num_goodness, affine=False) if norm == 'batchnorm' else None
        self.proj = self._make_proj(num_classes)

    def _make_proj(self, num_classes: int) -> Optional[nn.Module]:
        if num_classes <= 0:
            return None
        if self.proj_kind == 'fixed':
            return FixedLinear(self.num_goodness, num_classes)
        if self.proj_kind == 'class_groups':
            return ClassGroupMean(self.num_goodness, num_classes)
        return nn.Linear(self.num_goodness, num_classes)

    def reset(self, num_classes: int):
        """Rebuild the goodness -> logits map for ``num_classes`` (0 removes it)."""
        self.num_classes = num_classes
        self.proj = self._make_proj(num_classes)

    def goodness(self, h: torch.Tensor) -> torch.Tensor:
        """(B, G) goodness vector of activation ``h`` (fp32)."""
        if self.coupled_norm is not None:
            h = self.coupled_norm(h)
        return goodness_vector(h, self.mode, self.groups, self.patches, self.reduce)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Tempered class logits (B, K) in fp32, or scalar goodness (B,) when num_classes == 0."""
        g = self.goodness(h)
        if self.proj is None:
            return g.mean(1) if self.reduce == 'mean' else g.sum(1)
        # FX cannot record a context manager: a symbolically traced graph runs this in the caller's precision
        fp32 = contextlib.nullcontext() if isinstance(g, torch.fx.Proxy) else \
            torch.autocast(device_type=g.device.type, enabled=False)
        with fp32:
            logits = self.proj(self.norm(g) if self.norm is not None else g)
            if self.temperature is not None:
                t = self.temperature(g, logits)
                logits = logits / t.reshape(-1, 1)  # T is a scalar or one value per sample
        return logits
