"""Local class heads as a registry: what each unit's loss reads its class logits from.

A unit's head maps the unit's activation to K class logits. ``head='goodness'`` (the default) is
:class:`~timm_ff.layers.GoodnessHead`: energies per channel / grid cell, a linear map. Every other head is a
*trunk* (activation -> (B, D) features) followed by ``proj``, a linear map to K logits, divided by the unit's
temperature exactly like the goodness head's (the dynamic temperature reads its clarity statistics from the
trunk's features instead of the goodness vector). ``proj`` keeps the name of the goodness head's map, so
``reset_classifier``, the linear probe and timm's ``classifier`` entry treat every head alike.

Built in, each following its source's shape (``feat_side`` is the side of the unit's activation map at the
model's input size):

* ``linear``: global average pool + linear ("greedy SL": InfoPro's ``0c1f`` head, Wang et al. 2021).
* ``pred``: Nøkland & Eidnes (2019, ``anokland/local-loss``, ``train.py``): average-pool the map (halving the
  height, then the width, in turn) until ``C * h * w <= dim_in_decoder``, keeping the spatial layout, then
  one zero-initialised linear layer.
* ``dgl``: DGL's MLP-SR head (Belilovsky et al. 2020, ``eugenium/DGL``, ``auxiliary_nets_study/models.py``):
  average-pool to ``ceil(side / 4)``, ``n_conv`` x (1x1 conv + BN + ReLU) at the unit's width, average-pool to
  2 x 2, then ``mlp_layers`` x (linear + BN + ReLU) of width ``mlp_width`` (``4C``), then the linear map.
* ``infopro``: InfoPro's ``1c2f`` head (``blackfeather-wang/InfoPro-Pytorch``, ``networks/auxiliary_nets.py``):
  3x3 conv + BN + ReLU (stride 2 and twice the width while the map is larger than 8 x 8, as the source's 16-
  and 32-channel stages of ResNet-32; else stride 1 at the unit's width), global average pool, linear to
  ``feature_dim`` + ReLU, then the linear map.

A model can mix heads, one per unit (``head=['goodness'] * 6 + ['dgl'] * 2``): ``head_kwargs`` then go to every
registered head it names. Register your own with :func:`register_head`.
"""
import contextlib
import inspect
import math
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, unknown_choice

__all__ = ['HEADS', 'register_head', 'list_heads', 'check_head', 'create_head_trunk', 'ClassHead',
           'pred_pool_size']

# name -> (builder(in_chs, feat_side, **kwargs) -> trunk module with .out_features, works on (B, C) MLP units?)
_HEADS: Dict[str, Tuple[Callable[..., nn.Module], bool]] = {}
HEADS = ('goodness', 'linear', 'pred', 'dgl', 'infopro')  # the built-in ones, 'goodness' first


def register_head(name: str, spatial_only: bool = True):
    """Decorator adding a head, usable as the ``head=name`` model kwarg (``head_kwargs`` go to the builder).

    Args:
        name: The head's name (must not shadow a registered one).
        spatial_only: Whether the head needs a (B, C, H, W) activation (False: it also serves MLP units).

    The decorated builder is called as ``fn(in_chs, feat_side, **head_kwargs)``, where ``feat_side`` is the side
    of the unit's activation map at the model's input size (None for MLP units). It returns a module mapping the
    unit's activation to (B, D) features and carrying ``out_features = D``; the model adds the linear map to K
    logits (``proj``) and the temperature. A module attribute ``zero_init_proj = True`` starts ``proj`` at zero.
    A checkpoint trained with a user head loads once the module that registers it is imported.
    """
    if name in _HEADS or name == 'goodness':
        raise ValueError(f'head {name!r} is already registered; pick another name')

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _HEADS[name] = (fn, not spatial_only)
        return fn
    return wrap


def list_heads() -> Tuple[str, ...]:
    """Every head: the built-in ones, then the registered ones."""
    return HEADS + tuple(sorted(n for n in _HEADS if n not in HEADS))


def check_head(name: str, kwargs: Dict, spatial: bool = True) -> None:
    """Raise one clear line for an unknown head, an unknown or bad head kwarg, or a head the unit cannot feed."""
    if name not in list_heads():
        raise unknown_choice('head', name, list_heads())
    if not isinstance(kwargs, dict):
        raise ConfigError(f'head_kwargs must be a dict of keyword arguments for head {name!r}, got {kwargs!r}')
    if name == 'goodness':
        if kwargs:
            raise unknown_choice("kwarg for head 'goodness' (set it with the goodness* model kwargs)",
                                 next(iter(kwargs)), ['(none)'])
        return
    fn, any_unit = _HEADS[name]
    params = inspect.signature(fn).parameters
    allowed = [p for p in params if p not in ('in_chs', 'feat_side')]
    for k, v in kwargs.items():
        if k not in allowed:
            raise unknown_choice(f'kwarg for head {name!r}', k, allowed or ['(none)'])
        default = params[k].default
        if isinstance(default, int) and not isinstance(default, bool) and (
                not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise ConfigError(f'head {name!r} kwarg {k}={v!r}: must be a non-negative integer')
    if not spatial and not any_unit:
        allowed_heads = ['goodness'] + [n for n, (_, ok) in _HEADS.items() if ok]
        raise unknown_choice('head for a non-spatial (MLP) unit', name, allowed_heads)


def create_head_trunk(name: str, in_chs: int, feat_side: Optional[int], **kwargs) -> nn.Module:
    """The registered head ``name``'s trunk for a unit of ``in_chs`` channels (see :func:`register_head`)."""
    trunk = _HEADS[name][0](in_chs, feat_side, **kwargs)
    if not isinstance(getattr(trunk, 'out_features', None), int):
        raise ConfigError(f'head {name!r} returned a module without an integer out_features attribute')
    return trunk


class ClassHead(nn.Module):
    """A registered head's trunk, then ``proj`` to K logits, divided by the unit's temperature.

    The trunk runs in the caller's precision (under autocast a conv head runs in bf16); its features, the
    linear map and the temperature are fp32, as in the goodness head.
    """

    def __init__(self, trunk: nn.Module, num_classes: int, temperature: Optional[nn.Module] = None,
                 coupled_norm: Optional[nn.Module] = None):
        """
        Args:
            trunk: Activation -> (B, D) features, with ``out_features = D``.
            num_classes: K (0: the head returns the features).
            temperature: Module mapping (features, logits) -> T; None means T = 1.
            coupled_norm: If given, the trunk reads ``coupled_norm(h)`` (the coupled-normalisation ablation).

        The ``head_norm`` model kwarg is the goodness head's: a registered head keeps its source's shape.
        """
        super().__init__()
        self.trunk = trunk
        self.num_features = trunk.out_features
        self.coupled_norm = coupled_norm
        self.temperature = temperature
        self.num_classes = num_classes
        self.proj = self._make_proj(num_classes)

    def _make_proj(self, num_classes: int) -> Optional[nn.Module]:
        if num_classes <= 0:
            return None
        proj = nn.Linear(self.num_features, num_classes)
        if getattr(self.trunk, 'zero_init_proj', False):
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)
        return proj

    def reset(self, num_classes: int):
        """Rebuild the features -> logits map for ``num_classes`` (0 removes it)."""
        self.num_classes = num_classes
        self.proj = self._make_proj(num_classes)

    def goodness(self, h: torch.Tensor) -> torch.Tensor:
        """(B, D) features of activation ``h`` (fp32): what the temperature reads."""
        if self.coupled_norm is not None:
            h = self.coupled_norm(h)
        return self.trunk(h).float()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Tempered class logits (B, K) in fp32 (the features when num_classes == 0)."""
        f = self.goodness(h)
        if self.proj is None:
            return f
        fp32 = contextlib.nullcontext() if isinstance(f, torch.fx.Proxy) else \
            torch.autocast(device_type=f.device.type, enabled=False)
        with fp32:
            logits = self.proj(f)
            if self.temperature is not None:
                t = self.temperature(f, logits)
                logits = logits / t.reshape(-1, 1)
        return logits


def _side(feat_side: Optional[int], name: str) -> int:
    if not feat_side:
        raise ConfigError(f'head {name!r} needs the side of the unit activation map (a spatial model)')
    return feat_side


class _Seq(nn.Sequential):
    def __init__(self, out_features: int, *mods: nn.Module, zero_init_proj: bool = False):
        super().__init__(*mods)
        self.out_features = out_features
        self.zero_init_proj = zero_init_proj


@register_head('linear', spatial_only=False)
def linear_head(in_chs: int, feat_side: Optional[int]) -> nn.Module:
    """Global average pool (spatial units) and the linear map."""
    mods = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)] if feat_side else []
    return _Seq(in_chs, *mods)


def pred_pool_size(chs: int, side: int, dim_in_decoder: int) -> Tuple[int, int]:
    """Nøkland & Eidnes' pooled map size: halve the height, then the width, in turn (kernels 2, 4, ...) until
    ``chs * h * w <= dim_in_decoder`` or the kernel reaches the map side."""
    ks_h = ks_w = 1
    h = w = side
    dim = chs * h * w
    while dim > dim_in_decoder and ks_h < side:
        ks_h *= 2
        h = math.ceil(side / ks_h)
        dim = chs * h * w
        if dim > dim_in_decoder:
            ks_w *= 2
            w = math.ceil(side / ks_w)
            dim = chs * h * w
    return h, w


@register_head('pred')
def pred_head(in_chs: int, feat_side: Optional[int], dim_in_decoder: int = 4096) -> nn.Module:
    """Nøkland & Eidnes' 'pred' head: average pooling to at most ``dim_in_decoder`` values, zero-initialised map."""
    h, w = pred_pool_size(in_chs, _side(feat_side, 'pred'), dim_in_decoder)
    return _Seq(in_chs * h * w, nn.AdaptiveAvgPool2d((h, w)), nn.Flatten(1), zero_init_proj=True)


@register_head('dgl')
def dgl_head(in_chs: int, feat_side: Optional[int], n_conv: int = 3, mlp_layers: int = 3, mlp_width: int = 0) -> nn.Module:
    """DGL's MLP-SR head; ``mlp_width=0`` is the source's ``4 * in_chs``."""
    side = _side(feat_side, 'dgl')
    width = mlp_width or 4 * in_chs
    mods = [nn.AdaptiveAvgPool2d(math.ceil(side / 4))]
    for _ in range(n_conv):
        mods += [nn.Conv2d(in_chs, in_chs, 1, bias=False), nn.BatchNorm2d(in_chs), nn.ReLU(inplace=True)]
    mods += [nn.AdaptiveAvgPool2d(2), nn.Flatten(1)]
    d = 4 * in_chs
    for _ in range(mlp_layers):
        mods += [nn.Linear(d, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
        d = width
    if not mlp_layers:  # the source's no-MLP variant: BatchNorm on the pooled map before the linear map
        mods.insert(len(mods) - 1, nn.BatchNorm2d(in_chs))
    return _Seq(d, *mods)


@register_head('infopro')
def infopro_head(in_chs: int, feat_side: Optional[int], widen: int = 1, feature_dim: int = 128) -> nn.Module:
    """InfoPro's '1c2f' head: one conv (stride 2, twice the width, on maps larger than 8 x 8), GAP, a hidden layer."""
    side = _side(feat_side, 'infopro')
    stride, conv_chs = (2, 2 * in_chs) if side > 8 else (1, in_chs)
    conv_chs *= max(widen, 1)
    hidden = feature_dim * max(widen, 1)
    return _Seq(hidden, nn.Conv2d(in_chs, conv_chs, 3, stride, 1, bias=False), nn.BatchNorm2d(conv_chs),
                nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(conv_chs, hidden), nn.ReLU(inplace=True))
