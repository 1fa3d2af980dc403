"""Small, fast Forward-Forward CNNs for CPU-scale experiments (DTG-FF and classic FF).

A plain VGG-style stack: unit u is ``[max-pool 2x2 if u > 0] -> n x (conv3x3-BN-ReLU)``; the first
conv of unit 0 is the stem. ``cnn_s`` has four one-conv units (32-64-128-256 channels), ``cnn_m``
four two-conv units (64-128-256-512). Both take 32x32 inputs (any size >= 8 works).
"""
from typing import Optional, Tuple

import torch.nn as nn
from timm.models import generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg

from ._ffnet import (DTGFF_DEFAULTS, FF_CONV_DEFAULTS, FFNet, build_ffnet, check_ff_kwargs, head_defaults, norm_layer,
                     sequential)
from ._hub_org import CIFAR10_CLASSES, HUB_ORG

__all__ = ['FFCNN']

_FAMILY_KWARGS = ('channels', 'convs_per_unit', 'num_classes', 'in_chans', 'global_pool')


def _conv_bn_act(cin: int, cout: int, norm: str) -> nn.Sequential:
    norm_cls = norm_layer(norm)
    return sequential(conv=nn.Conv2d(cin, cout, 3, 1, 1, bias=norm_cls is nn.Identity), bn=norm_cls(cout),
                      act=nn.ReLU(inplace=True))


class FFCNN(FFNet):
    """VGG-style CNN of local units."""

    def __init__(
            self,
            channels: Tuple[int, ...] = (32, 64, 128, 256),
            convs_per_unit: int = 1,
            num_classes: int = 10,
            in_chans: int = 3,
            global_pool: str = 'avg',
            **ff_kwargs,
    ):
        """
        Args:
            channels: Output channels of each unit.
            convs_per_unit: conv3x3-BN-ReLU layers in each unit.
            num_classes: K.
            in_chans: Input channels.
            global_pool: timm pool type for ``forward_head``.
            **ff_kwargs: DTG-FF / FF switches, see :data:`timm_ff.models.FF_KWARGS`.
        """
        super().__init__()
        check_ff_kwargs(ff_kwargs, _FAMILY_KWARGS)
        if convs_per_unit < 1:
            raise ValueError(f'convs_per_unit must be >= 1, got {convs_per_unit}')
        norm = ff_kwargs.get('norm', 'batchnorm')
        stem = _conv_bn_act(in_chans, channels[0], norm)
        bodies, reds = [], []
        cin = channels[0]
        for u, c in enumerate(channels):
            layers = [] if u == 0 else [nn.MaxPool2d(2)]
            n = convs_per_unit - 1 if u == 0 else convs_per_unit
            for _ in range(n):
                layers.append(_conv_bn_act(cin, c, norm))
                cin = c
            bodies.append(nn.Sequential(*layers))
            reds.append(2 ** u)
        family = dict(channels=list(channels), convs_per_unit=convs_per_unit)
        self._build_units(stem, channels[0], bodies, list(channels), reds, num_classes, in_chans,
                          global_pool, spatial=True, ff_kwargs=ff_kwargs, family_kwargs=family)


def _create_ff_cnn(variant: str, pretrained: bool = False, defaults: Optional[dict] = None, **kwargs):
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                 pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
    head_defaults(kwargs, cfg.input_size)
    for k, v in (defaults or {}).items():
        kwargs.setdefault(k, v)
    n = len(kwargs.get('channels', (0, 0, 0, 0)))
    return build_ffnet(FFCNN, variant, pretrained, tuple(range(n)), **kwargs)


def _cfg(label_embed: bool = False, **kwargs):
    classifier = 'units.0.label_embed' if label_embed else tuple(f'units.{u}.head.proj' for u in range(4))
    return {
        'url': '', 'num_classes': 10, 'input_size': (3, 32, 32), 'pool_size': (4, 4), 'crop_pct': 1.0,
        'interpolation': 'bilinear', 'mean': (0.4914, 0.4822, 0.4465), 'std': (0.2470, 0.2435, 0.2616),
        'first_conv': 'units.0.stem.conv', 'classifier': classifier, 'license': 'apache-2.0', **kwargs,
    }


def _tags(arch: str, label_embed: bool) -> dict:
    return {
        f'{arch}.cifar10': _cfg(label_embed, hf_hub_id=f'{HUB_ORG}/{arch}.cifar10', label_names=CIFAR10_CLASSES),
        f'{arch}.cifar100': _cfg(label_embed, hf_hub_id=f'{HUB_ORG}/{arch}.cifar100', num_classes=100,
                                 mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
    }


default_cfgs = generate_default_cfgs({
    **_tags('dtgff_cnn_s', False), **_tags('dtgff_cnn_m', False),
    **_tags('ff_cnn_s', True), **_tags('ff_cnn_m', True),
})


@register_model
def dtgff_cnn_s(pretrained: bool = False, **kwargs) -> FFCNN:
    """DTG-FF small CNN (4 units, 32-256 channels)."""
    return _create_ff_cnn('dtgff_cnn_s', pretrained, DTGFF_DEFAULTS, **kwargs)


@register_model
def dtgff_cnn_m(pretrained: bool = False, **kwargs) -> FFCNN:
    """DTG-FF medium CNN (4 two-conv units, 64-512 channels)."""
    return _create_ff_cnn('dtgff_cnn_m', pretrained, dict(DTGFF_DEFAULTS, channels=(64, 128, 256, 512),
                                                            convs_per_unit=2), **kwargs)


@register_model
def ff_cnn_s(pretrained: bool = False, **kwargs) -> FFCNN:
    """Classic FF small CNN."""
    return _create_ff_cnn('ff_cnn_s', pretrained, FF_CONV_DEFAULTS, **kwargs)


@register_model
def ff_cnn_m(pretrained: bool = False, **kwargs) -> FFCNN:
    """Classic FF medium CNN."""
    return _create_ff_cnn('ff_cnn_m', pretrained, dict(FF_CONV_DEFAULTS, channels=(64, 128, 256, 512),
                                                         convs_per_unit=2), **kwargs)
