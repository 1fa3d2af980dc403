"""Forward-Forward MLPs for vector inputs and flattened small images (MNIST, teacher-student tasks).

Each unit is ``[LayerNorm/length norm if u > 0] -> Linear -> [BatchNorm] -> ReLU``. Images are flattened, so
``in_features`` defaults to ``in_chans * img_size**2``; pass ``in_features`` for plain vectors
(e.g. the synthetic teacher-student tasks, input (B, D)). Features are (B, C): this is a
non-spatial model in timm's sense (``forward_features`` returns NC, not NCHW).
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from ._ffnet import DTGFF_DEFAULTS, FF_DEFAULTS, FFNet, build_ffnet, check_ff_kwargs, norm_layer, sequential
from ._hub_org import HUB_ORG

__all__ = ['FFMLP']

_FAMILY_KWARGS = ('widths', 'in_features', 'img_size', 'num_classes', 'in_chans', 'global_pool')


def check_vector_input(x: torch.Tensor, in_features: int):
    """Raise a clear error unless each sample flattens to ``in_features`` values (an FX leaf, like the image check)."""
    if x[0].numel() != in_features:
        raise ValueError(f'expected inputs of {in_features} features per sample (B, {in_features}) '
                         f'or an image that flattens to it, got {tuple(x.shape)}')


torch.fx.wrap('check_vector_input')


class FFMLP(FFNet):
    """Fully connected network of local units."""

    def __init__(
            self,
            widths: Tuple[int, ...] = (512, 512, 512, 512),
            in_features: Optional[int] = None,
            img_size: int = 28,
            num_classes: int = 10,
            in_chans: int = 1,
            global_pool: str = '',
            **ff_kwargs,
    ):
        """
        Args:
            widths: Hidden width of each unit.
            in_features: Input vector size; default ``in_chans * img_size ** 2``.
            img_size: Image side, used only to derive ``in_features``.
            num_classes: K.
            in_chans: Image channels, used only to derive ``in_features``.
            global_pool: Unused (features are already pooled); kept for the timm contract.
            **ff_kwargs: DTG-FF / FF switches, see :data:`timm_ff.models.FF_KWARGS`.
        """
        super().__init__()
        check_ff_kwargs(ff_kwargs, _FAMILY_KWARGS)
        d_in = in_features or in_chans * img_size * img_size
        self.in_features = d_in
        bodies, cin = [], d_in
        norm = norm_layer(ff_kwargs.get('norm', 'batchnorm'), dims=1)
        for w in widths:
            bodies.append(sequential(fc=nn.Linear(cin, w), bn=norm(w), act=nn.ReLU(inplace=True)))
            cin = w
        family = dict(widths=list(widths), in_features=in_features, img_size=img_size)
        self._build_units(nn.Flatten(1), d_in, bodies, list(widths), [1] * len(widths), num_classes,
                          in_chans, global_pool, spatial=False, ff_kwargs=ff_kwargs, family_kwargs=family)

    def check_input(self, x: torch.Tensor):
        """Accept (B, D) vectors or images whose flattened size is ``in_features``."""
        check_vector_input(x, self.in_features)


def _create_ff_mlp(variant: str, pretrained: bool = False, defaults: Optional[dict] = None, **kwargs):
    for k, v in (defaults or {}).items():
        kwargs.setdefault(k, v)
    n = len(kwargs.get('widths', (0, 0, 0, 0)))
    return build_ffnet(FFMLP, variant, pretrained, tuple(range(n)), **kwargs)


def _cfg(label_embed: bool = False, **kwargs):
    classifier = 'units.0.label_embed' if label_embed else tuple(f'units.{u}.head.proj' for u in range(4))
    return {
        'url': '', 'num_classes': 10, 'input_size': (1, 28, 28), 'pool_size': None, 'crop_pct': 1.0,
        'interpolation': 'bilinear', 'mean': (0.1307,), 'std': (0.3081,), 'first_conv': 'units.0.body.fc',
        'classifier': classifier, 'license': 'apache-2.0', **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'dtgff_mlp.mnist': _cfg(False, hf_hub_id=f'{HUB_ORG}/dtgff_mlp.mnist'),
    'ff_mlp.mnist': _cfg(True, hf_hub_id=f'{HUB_ORG}/ff_mlp.mnist'),
})


@register_model
def dtgff_mlp(pretrained: bool = False, **kwargs) -> FFMLP:
    """DTG-FF MLP (4 x 512 units)."""
    return _create_ff_mlp('dtgff_mlp', pretrained, dict(DTGFF_DEFAULTS, goodness='channel'), **kwargs)  # no grid on vectors


@register_model
def ff_mlp(pretrained: bool = False, **kwargs) -> FFMLP:
    """Classic FF MLP (4 x 512 units, label added to the input vector)."""
    return _create_ff_mlp('ff_mlp', pretrained, FF_DEFAULTS, **kwargs)
