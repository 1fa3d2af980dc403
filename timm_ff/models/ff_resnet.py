"""Forward-Forward ResNets: DTG-FF and classic FF on a ResNet-18/34 topology.

DTG-FF follows "Synthetic Benchmarks Overstate Forward-Forward Scaling" (arXiv 2606.06539):
dynamic temperature goodness, decoupled normalisation and multi-layer fusion on an FF CNN trained
strictly layer-locally. The paper's body is not public; the concrete parts are this project's
design (see README, "DTG-FF as implemented"). Classic FF follows Hinton, "The Forward-Forward
Algorithm" (2022).

Each residual block (``unit_size='block'``) or stage (``'stage'``) is one local unit; the stem is
folded into the first. ``stem='cifar'`` is a 3x3 stride-1 conv for 32x32 inputs, ``'imagenet'`` the
7x7 stride-2 conv + max-pool for 224x224; by default it follows the pretrained tag's input size.
Blocks are timm's own :class:`timm.models.resnet.BasicBlock`.

Where a unit's goodness is read (``goodness_at``): ``'output'`` reads the block's output
``relu(shortcut(x) + f(x))``, so a block inherits its input's energy through the identity path and can
score well while learning little; ``'branch'`` reads the residual branch ``f(x)`` before the add (as
DeeperForward computes each layer's loss), so the goodness is what the block itself adds. The next unit
receives the block output either way. With ``'branch'`` the stride-2 shortcuts are parameter-free
(average pool + zero channels, the CIFAR ResNet's option A): a learned 1x1 shortcut would never get a
gradient, as nothing it computes reaches a goodness.

A grid or patch goodness reads each unit on at most a ``goodness_patches`` x ``goodness_patches`` grid whose
cells are at least 2x2 positions (:func:`grid_sides`, unless ``goodness_patches`` is given): on 32x32 CIFAR
inputs the 4x4 maps of stage 4 are read on a 2x2 grid. Read per position, their goodness vector was heavy
tailed (std / mean 2.2-2.6 across a batch at init, against 0.26 in stage 1), the deep units' cross-entropy
rose above chance early in training and they ended below the shallow ones
(``benchmarks/results/resnet18_depth_screening_cpu.json``).
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg
from timm.models.resnet import BasicBlock, downsample_conv

from ..errors import unknown_choice
from ._ffnet import (DTGFF_DEFAULTS, FF_CONV_DEFAULTS, FFNet, build_ffnet, check_ff_kwargs, head_defaults, norm_layer,
                     sequential)
from ._hub_org import CIFAR10_CLASSES, HUB_ORG

__all__ = ['FFResNet', 'DTGFF_RESNET_DEFAULTS', 'grid_sides']

STEMS = ('cifar', 'imagenet')
UNIT_SIZES = ('block', 'stage')
GOODNESS_AT = ('output', 'branch')
# DTG-FF ResNets also standardise each goodness value over the batch before the class map: with the 2x2 stage-4
# cells of grid_sides, every dtg unit of ResNet-18 on CIFAR-10 gained 1.4-3.1 pp over the old heads
# (benchmarks/results/cifar10_resnet18_headnorm_cpu.json against resnet18_depth_screening_cpu.json's output_dtg).
DTGFF_RESNET_DEFAULTS = dict(DTGFF_DEFAULTS, head_norm='batchnorm')
_FAMILY_KWARGS = ('layers', 'channels', 'stem', 'unit_size', 'goodness_at', 'num_classes', 'in_chans', 'global_pool')


class PadShortcut(nn.Module):
    """Parameter-free shortcut: ``stride`` x ``stride`` average pool, then zero channels up to ``out_chs``."""

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.pad, self.stride = out_chs - in_chs, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(x, self.stride) if self.stride > 1 else x
        return F.pad(x, (0, 0, 0, 0, 0, self.pad)) if self.pad else x


class BranchBlock(BasicBlock):
    """timm's BasicBlock returning ``(relu(shortcut(x) + f(x)), f(x))``: its output and its residual branch."""

    def forward(self, x: torch.Tensor):
        shortcut = self.downsample(x) if self.downsample is not None else x
        f = self.bn2(self.conv2(self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))))
        if self.se is not None:
            f = self.se(f)
        if self.drop_path is not None:
            f = self.drop_path(f)
        return self.act2(f + shortcut), f


class BranchStage(nn.Sequential):
    """A stage of :class:`BranchBlock` units: the last block's output and its residual branch."""

    def forward(self, x: torch.Tensor):
        for block in self:
            x, f = block(x)
        return x, f


class FFResNet(FFNet):
    """ResNet (BasicBlock) backbone trained as a sequence of local units."""

    def __init__(
            self,
            layers: Tuple[int, ...] = (2, 2, 2, 2),
            channels: Tuple[int, ...] = (64, 128, 256, 512),
            stem: str = 'cifar',
            unit_size: str = 'block',
            goodness_at: str = 'output',
            num_classes: int = 10,
            in_chans: int = 3,
            global_pool: str = 'avg',
            **ff_kwargs,
    ):
        """
        Args:
            layers: Blocks per stage.
            channels: Channels per stage.
            stem: 'cifar' (3x3 conv, stride 1) or 'imagenet' (7x7 conv stride 2 + max-pool).
            unit_size: 'block' (one unit per residual block) or 'stage'.
            goodness_at: 'output' (goodness of the block output) or 'branch' (of the residual branch
                before the add; parameter-free stride-2 shortcuts).
            num_classes: K.
            in_chans: Input channels.
            global_pool: timm pool type for ``forward_head`` ('' keeps NCHW).
            **ff_kwargs: DTG-FF / FF switches, see :data:`timm_ff.models.FF_KWARGS`.
        """
        super().__init__()
        check_ff_kwargs(ff_kwargs, _FAMILY_KWARGS)
        if stem not in STEMS:
            raise unknown_choice('stem', stem, STEMS)
        if unit_size not in UNIT_SIZES:
            raise unknown_choice('unit_size', unit_size, UNIT_SIZES)
        if goodness_at not in GOODNESS_AT:
            raise unknown_choice('goodness_at', goodness_at, GOODNESS_AT)
        branch = goodness_at == 'branch'
        if len(layers) != len(channels):
            raise ValueError(f'layers {layers} and channels {channels} must have the same length')
        c0 = channels[0]
        norm = norm_layer(ff_kwargs.get('norm', 'batchnorm'))
        bias = norm is nn.Identity  # without a norm the stem conv gets a bias (timm's BasicBlock convs stay bias-free)
        if stem == 'cifar':
            stem_mod = sequential(conv=nn.Conv2d(in_chans, c0, 3, 1, 1, bias=bias), bn=norm(c0),
                                  act=nn.ReLU(inplace=True))
            reduction = 1
        else:
            stem_mod = sequential(conv=nn.Conv2d(in_chans, c0, 7, 2, 3, bias=bias), bn=norm(c0),
                                  act=nn.ReLU(inplace=True), pool=nn.MaxPool2d(3, 2, 1))
            reduction = 4
        blocks, chs, reds = [], [], []
        inplanes = c0
        stages = []
        for s, (n, planes) in enumerate(zip(layers, channels)):
            stage = []
            for b in range(n):
                stride = 2 if (s > 0 and b == 0) else 1
                down = None
                if (stride != 1 or inplanes != planes) and branch:
                    down = PadShortcut(inplanes, planes, stride)
                elif stride != 1 or inplanes != planes:
                    down = downsample_conv(inplanes, planes, kernel_size=1, stride=stride,
                                           norm_layer=norm)
                block_cls = BranchBlock if branch else BasicBlock
                stage.append(block_cls(inplanes, planes, stride=stride, downsample=down, norm_layer=norm))
                inplanes = planes
                reduction *= stride
                if unit_size == 'block':
                    blocks.append(stage[-1])
                    chs.append(planes)
                    reds.append(reduction)
            stages.append(stage)
            if unit_size == 'stage':
                blocks.append(BranchStage(*stage) if branch else nn.Sequential(*stage))
                chs.append(planes)
                reds.append(reduction)
        family = dict(layers=list(layers), channels=list(channels), stem=stem, unit_size=unit_size,
                      goodness_at=goodness_at)
        self._build_units(stem_mod, c0, blocks, chs, reds, num_classes, in_chans, global_pool,
                          spatial=True, ff_kwargs=ff_kwargs, family_kwargs=family)


def grid_sides(input_size: int, stem: str, layers: Sequence[int], unit_size: str, max_side: int) -> List[int]:
    """Goodness grid side of each unit: ``max_side``, but at most half the unit's map side, so that every cell
    averages at least 2x2 positions (a 4x4 map read per position gives a heavy-tailed goodness vector)."""
    side = input_size if stem == 'cifar' else -(-input_size // 4)
    sides = []
    for s, n in enumerate(layers):
        side = side if s == 0 else -(-side // 2)  # a stride-2 3x3 conv with padding 1: ceil(side / 2)
        sides += [min(max_side, max(1, side // 2))] * (n if unit_size == 'block' else 1)
    return sides


def _create_ff_resnet(variant: str, pretrained: bool = False, defaults: Optional[dict] = None, **kwargs):
    """Build an FFResNet through timm's builder; ``stem`` follows the tag's input size unless given, and so does
    the default per-unit goodness grid (:func:`grid_sides`) of a grid or patch goodness."""
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                 pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
    if 'stem' not in kwargs:
        kwargs['stem'] = 'cifar' if max(cfg.input_size[-2:]) <= 64 else 'imagenet'
    auto_grid = 'goodness_patches' not in kwargs
    head_defaults(kwargs, cfg.input_size)
    for k, v in (defaults or {}).items():
        kwargs.setdefault(k, v)
    layers = kwargs.get('layers', (2, 2, 2, 2))
    if auto_grid and kwargs.get('goodness') in ('grid', 'patch') and kwargs.get('stem') in STEMS:
        kwargs['goodness_patches'] = grid_sides(min(cfg.input_size[-2:]), kwargs['stem'], layers,
                                                kwargs.get('unit_size', 'block'), kwargs['goodness_patches'])
    if kwargs.get('unit_size', 'block') == 'stage':
        out_indices = tuple(range(len(layers)))
    else:  # the last block unit of each stage, like timm's ResNet feature levels
        out_indices = tuple(sum(layers[:s + 1]) - 1 for s in range(len(layers)))
    return build_ffnet(FFResNet, variant, pretrained, out_indices, **kwargs)


def _cfg(url: str = '', num_units: int = 8, label_embed: bool = False, **kwargs):
    classifier = 'units.0.label_embed' if label_embed else tuple(f'units.{u}.head.proj' for u in range(num_units))
    return {
        'url': url, 'num_classes': 10, 'input_size': (3, 32, 32), 'pool_size': (4, 4),
        'crop_pct': 1.0, 'interpolation': 'bilinear', 'mean': (0.4914, 0.4822, 0.4465),
        'std': (0.2470, 0.2435, 0.2616), 'first_conv': 'units.0.stem.conv', 'classifier': classifier,
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2606.06539', **kwargs,
    }


def _tags(arch: str, num_units: int, label_embed: bool, tags=('cifar10', 'cifar100', 'imagenet100')) -> dict:
    base = dict(num_units=num_units, label_embed=label_embed)
    data = {
        'cifar10': dict(label_names=CIFAR10_CLASSES),
        'cifar100': dict(num_classes=100, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
        'imagenet100': dict(num_classes=100, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
                            interpolation='bicubic', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    }
    return {f'{arch}.{t}': _cfg(hf_hub_id=f'{HUB_ORG}/{arch}.{t}', **base, **data[t]) for t in tags}


default_cfgs = generate_default_cfgs({
    **_tags('dtgff_resnet18', 8, False),
    **_tags('dtgff_resnet34', 16, False),
    **_tags('ff_resnet18', 8, True),
    **_tags('ff_resnet34', 16, True),
})


@register_model
def dtgff_resnet18(pretrained: bool = False, **kwargs) -> FFResNet:
    """DTG-FF ResNet-18 (8 block units)."""
    return _create_ff_resnet('dtgff_resnet18', pretrained, dict(DTGFF_RESNET_DEFAULTS, layers=(2, 2, 2, 2)), **kwargs)


@register_model
def dtgff_resnet34(pretrained: bool = False, **kwargs) -> FFResNet:
    """DTG-FF ResNet-34 (16 block units)."""
    return _create_ff_resnet('dtgff_resnet34', pretrained, dict(DTGFF_RESNET_DEFAULTS, layers=(3, 4, 6, 3)), **kwargs)


@register_model
def ff_resnet18(pretrained: bool = False, **kwargs) -> FFResNet:
    """Classic FF ResNet-18 (label in the input, SymBa loss on mean-square goodness)."""
    return _create_ff_resnet('ff_resnet18', pretrained, dict(FF_CONV_DEFAULTS, layers=(2, 2, 2, 2)), **kwargs)


@register_model
def ff_resnet34(pretrained: bool = False, **kwargs) -> FFResNet:
    """Classic FF ResNet-34 (label in the input, SymBa loss on mean-square goodness)."""
    return _create_ff_resnet('ff_resnet34', pretrained, dict(FF_CONV_DEFAULTS, layers=(3, 4, 6, 3)), **kwargs)
