"""Base class of every timm_ff backbone: an ordered list of local units with goodness heads.

A model is a sequence of *local units*. Unit 0 holds the stem (and, for classic FF models, the
label code); every later unit starts with the between-unit norm. Each unit ends in a
:class:`~timm_ff.layers.GoodnessHead` that reads the unit's raw activation. The model never
detaches anything: locality (no gradient across a unit boundary) lives in :mod:`timm_ff.task`.

The timm model contract is honoured: ``forward_features`` returns the last unit's unpooled
activation, ``forward_head(x, pre_logits)`` pools it and (``pre_logits=False``) applies the last
unit's head, ``model(x)`` returns the *fused* logits of the last M units, ``reset_classifier``
rebuilds every unit's head, and ``feature_info`` lists one entry per unit, which is also what
``forward_intermediates`` returns (one raw activation per unit) and ``prune_intermediate_layers`` cuts.

Every forward is FX-traceable (``torch.fx.symbolic_trace``, timm's ``feature_cls='fx'``): shape-dependent
Python lives in functions wrapped with ``torch.fx.wrap`` (graph leaves that still run, and still raise
their clear errors, when the traced graph is called).
"""
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg
from timm.models._features import feature_take_indices

from ..errors import ConfigError, unknown_choice
from ..layers import (
    FUSION_MODES, GOODNESS_MODES, GOODNESS_REDUCE, HEAD_NORMS, HEAD_PROJ, TEMPERATURES, UNIT_NORMS, list_goodness,
    ClassHead, GoodnessHead, LogitFusion, check_head, create_head_trunk, create_temperature, create_unit_norm,
)

__all__ = ['FF_DEFAULTS', 'FF_CONV_DEFAULTS', 'DTGFF_DEFAULTS', 'LocalUnit', 'FFNet', 'FF_KWARGS', 'build_ffnet',
           'head_defaults']

OUTPUT_FMTS = ('NCHW',)  # forward_intermediates formats (MLP units are (B, C) whatever the format)

# The DTG-FF parts, each switchable by one model kwarg. These change what forward() computes,
# so they are model kwargs (saved in config.json) rather than objective or recipe settings.
FF_KWARGS = dict(
    head='goodness',  # each unit's class head: 'goodness' (energies -> linear map), a registered head, or a list (one per unit)
    head_kwargs={},  # keyword arguments of a registered head (e.g. {'mlp_width': 512} for 'dgl')
    head_img_size=None,  # input side the heads are built for (None: the pretrained tag's; only non-goodness heads use it)
    norm='batchnorm',  # norm inside units: 'batchnorm' or 'none' (classic FF: BN would fix each pass's energy)
    label_embed=False,  # classic FF: the label is embedded at the input and labels are scored
    label_code='bias',  # classic FF label code: 'bias' (a learned per-class vector before the stem's ReLU) or 'plane'
    label_plane_size=32,  # side of the learned per-class input plane ('plane'; resized to other input sizes)
    label_units='first',  # classic FF: the label code enters unit 0 only ('first') or every unit's input too ('all')
    goodness='channel',  # goodness vector: 'channel' groups, 'patch' grid, 'channel_patch', or per channel per cell 'grid'
    goodness_groups=0,  # channel groups (0: one per channel)
    goodness_patches=2,  # grid side for 'patch' and 'grid' goodness (or a list: one side per unit)
    goodness_reduce='mean',  # 'mean' or 'sum' of squares
    head_proj='learned',  # goodness -> K logits: 'learned' linear, 'fixed' random map, or 'class_groups' (CwComp)
    head_norm='none',  # 'batchnorm': standardise each goodness value over the batch before the map (goodness heads)
    temperature='dynamic',  # 'dynamic' (clarity stats -> bounded, EMA-smoothed T) or 'fixed'
    t_min=0.5,  # lower bound of the dynamic temperature
    t_max=4.0,  # upper bound of the dynamic temperature
    t_init=1.0,  # initial (and, for 'fixed', constant) temperature
    t_momentum=0.9,  # EMA momentum of the temperature history
    unit_norm='layernorm',  # norm of the tensor handed to the next unit: 'layernorm', 'length', 'batchnorm', 'groupnorm', 'none'
    decoupled=True,  # goodness from the raw activation (True) or from the handed-on normalised one
    fusion='learned',  # 'learned' weights, 'mean' of units, or 'last' unit only
    fuse_last=0,  # M: fuse the last M units (0: all)
)
# DTG-FF's measured best (benchmarks/results/cifar10_gap_cpu.json): energy per channel per cell of a 4x4 grid
# keeps the spatial layout that one energy per channel throws away (+7 pp on CIFAR-10 in 2 epochs).
DTGFF_DEFAULTS = dict(FF_KWARGS, goodness='grid', goodness_patches=4)
# Classic FF (Hinton 2022): label in the input, scalar mean-square goodness, length norm between
# units, fixed T, goodness summed (averaged) over all units to score each label.
FF_DEFAULTS = dict(FF_KWARGS, norm='none', label_embed=True, temperature='fixed', unit_norm='length', fusion='mean')
# Classic FF on conv nets (ff_cnn_*, ff_resnet*), after Trifecta (Dooms et al. 2023): BatchNorm inside each unit
# and at each unit's input, over one batch holding the positive and the negative pass (the ff objective's
# passes='joint'), instead of no norm and a per-sample length norm. Measured on CIFAR-10
# (benchmarks/results/classic_ff_screening_cpu.json).
FF_CONV_DEFAULTS = dict(FF_DEFAULTS, norm='batchnorm', unit_norm='batchnorm')

LABEL_CODES = ('bias', 'plane')
LABEL_UNITS = ('first', 'all')
_CHOICES = dict(norm=('batchnorm', 'none'), label_code=LABEL_CODES, label_units=LABEL_UNITS, goodness=GOODNESS_MODES, goodness_reduce=GOODNESS_REDUCE, head_proj=HEAD_PROJ, head_norm=HEAD_NORMS,
                temperature=tuple(TEMPERATURES), unit_norm=tuple(UNIT_NORMS), fusion=FUSION_MODES)


def check_ff_kwargs(ff_kwargs: Dict, family_kwargs: Sequence[str]) -> Dict:
    """Validate FF kwargs: unknown keys and unknown choices name the bad value and the allowed ones."""
    unknown = [k for k in ff_kwargs if k not in FF_KWARGS]
    if unknown:
        raise unknown_choice('model kwarg', unknown[0], list(FF_KWARGS) + list(family_kwargs))
    for key, allowed in _CHOICES.items():
        allowed = list_goodness() if key == 'goodness' else allowed  # users register goodness modes
        if key in ff_kwargs and ff_kwargs[key] not in allowed:
            raise unknown_choice(f'value for {key}', ff_kwargs[key], allowed)
    return ff_kwargs


def check_image_input(x: torch.Tensor, in_chans: int, min_size: int):
    """Raise a clear error for a wrong channel count or an input too small for the unit strides.

    Wrapped with ``torch.fx.wrap``: a traced graph keeps the call (and its error) as a leaf.
    """
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise ValueError(f'expected input (B, {in_chans}, H, W), got {tuple(x.shape)}')
    if min(x.shape[-2:]) < min_size:
        raise ValueError(f'input size {tuple(x.shape[-2:])} is smaller than the total stride '
                         f'{min_size} of this model; use at least {min_size}x{min_size}')


torch.fx.wrap('check_image_input')


def _resize_plane(plane: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The (B, 1, S, S) label plane resized to the spatial size of the image ``like`` (a no-op at S x S)."""
    if plane.shape[-2:] == like.shape[-2:]:
        return plane
    return torch.nn.functional.interpolate(plane, size=like.shape[-2:], mode='bilinear', align_corners=False)


torch.fx.wrap('_resize_plane')


class LabelPlane(nn.Module):
    """Classic FF label code as a learned input plane (Trifecta's, Dooms et al. 2023).

    ``weight[k]`` is an S x S image for class k. Concatenated to the image as one more input channel,
    the stem's first conv would see it through a (C, 1, k, k) kernel; this module holds that kernel
    (``conv``, the stem conv's geometry) and returns its output, which the unit adds to the stem conv's
    output. Unlike the 'bias' code the label then varies over the image.
    """

    def __init__(self, num_classes: int, conv: nn.Conv2d, size: int = 32):
        super().__init__()
        self.size = size
        self.weight = nn.Parameter(torch.randn(num_classes, size * size))
        self.conv = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)

    @property
    def num_embeddings(self) -> int:
        return self.weight.shape[0]

    def forward(self, labels: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        plane = self.weight[labels].reshape(-1, 1, self.size, self.size).to(image.dtype)
        return self.conv(_resize_plane(plane, image))


class LocalUnit(nn.Module):
    """One locally trained unit: [in_norm] -> [stem (+ label code)] -> body, plus its goodness head.

    The body returns the tensor handed to the next unit, or a tuple (that tensor, the tensor the
    head reads its goodness from).
    """

    def __init__(
            self,
            body: nn.Module,
            head: GoodnessHead,
            in_norm: Optional[nn.Module] = None,
            stem: Optional[nn.Module] = None,
            label_embed: Optional[nn.Embedding] = None,
            spatial: bool = True,
    ):
        super().__init__()
        self.spatial = spatial
        self.in_norm = in_norm if in_norm is not None else nn.Identity()
        self.stem = stem
        self.label_embed = label_embed
        self.body = body
        self.head = head
        self.decoder: Optional[nn.Module] = None  # training-only (timm_ff.objectives.recon), never saved

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None, with_logits: bool = False,
                goodness_vector: bool = False, reconstruct: Optional[Sequence[int]] = None,
                readout_rows: Optional[int] = None):
        """Raw activation of this unit; with ``with_logits`` also the head output.

        Args:
            x: The previous unit's raw activation (the image for unit 0).
            labels: Labels to embed (classic FF); None embeds nothing. A later unit without a label
                code of its own (``label_units='first'``) ignores them.
            with_logits: Also return the head's output (tempered (B, K) logits, or scalar goodness).
            goodness_vector: With ``with_logits``, return the head's (B, G) goodness vector instead
                (one energy per cell / channel group, before it is reduced or mapped to logits).
            reconstruct: With ``with_logits``, also return the decoder's (B, C, H, W) reconstruction logits of
                the input image at this (H, W) size, read from this unit's output (a training-only decoder).
            readout_rows: With ``with_logits``, the head reads only the first ``readout_rows`` samples, detached: a
                readout fitted on features its loss cannot change (SCFF's class heads).
        """
        x = self.in_norm(x)
        if labels is None or (self.label_embed is None and self.stem is None):
            x = self.stem(x) if self.stem is not None else x
        elif self.label_embed is None:
            raise ConfigError('labels were given to a unit that has no label code (label_embed=False)')
        elif self.stem is None:  # a later unit's own code: a per-class bias on its (normalised) input
            code = self.label_embed(labels).to(x.dtype)
            x = x + (code[:, :, None, None] if self.spatial else code)
        else:
            x = self._stem_with_code(x, labels)
        h = self.body(x)
        # a body may hand on one tensor and read its goodness from another (a ResNet block's branch)
        h, tap = h if isinstance(h, tuple) else (h, h)
        if with_logits:
            if readout_rows is not None:
                tap = tap[:readout_rows].detach()
            out = self.head.goodness(tap) if goodness_vector else self.head(tap)
            if reconstruct is not None:
                if self.decoder is None:
                    raise ConfigError('reconstruct= needs a decoder on this unit; ReconObjective.prepare_model adds one')
                return h, out, self.decoder(h, reconstruct)
            return h, out
        return h

    def _stem_with_code(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The stem with the label code added inside it.

        A :class:`LabelPlane` code is added to the output of the stem's ``conv`` child (what an extra
        input channel would add). A 'bias' code (an ``nn.Embedding``) is added to the pre-activation of
        its ``act`` child: a per-class bias before the stem's nonlinearity is what one-hot label planes
        concatenated to the image give after the first conv (away from the borders), so unit 0 mixes
        label and image nonlinearly. A stem without an ``act`` child (the MLP's flatten) gets the code
        on its output, i.e. on the input vector, as in Hinton's label pixels.
        """
        if isinstance(self.label_embed, LabelPlane):
            image = x
            for name, module in self.stem.named_children():
                x = module(x)
                if name == 'conv':
                    x = x + self.label_embed(labels, image)
            return x
        code = self.label_embed(labels).to(x.dtype)
        code = code[:, :, None, None] if self.spatial else code
        children = list(self.stem.named_children()) if isinstance(self.stem, nn.Sequential) else []
        if 'act' not in dict(children):
            return (self.stem(x) if self.stem is not None else x) + code
        for name, module in children:
            if name == 'act':
                x = x + code
            x = module(x)
        return x


class FFNet(nn.Module):
    """Shared machinery of the FF backbones; families build the unit bodies."""

    def _build_units(
            self,
            stem: nn.Module,
            stem_chs: int,
            bodies: List[nn.Module],
            chs: List[int],
            reductions: List[int],
            num_classes: int,
            in_chans: int,
            global_pool: str,
            spatial: bool,
            ff_kwargs: Dict,
            family_kwargs: Dict,
    ):
        cfg = dict(FF_KWARGS)
        cfg.update(ff_kwargs)
        if cfg['label_embed'] and cfg['fusion'] == 'learned':
            raise ConfigError("fusion='learned' needs every unit's class logits in each training step, but classic FF "
                              "models (label_embed=True) score labels only at eval; use fusion='mean' or 'last'")
        if cfg['label_embed'] and cfg['head_norm'] != 'none':
            raise ConfigError(f"head_norm={cfg['head_norm']!r} standardises the goodness fed to class heads, but classic FF "
                              "models (label_embed=True) score labels by their scalar goodness: use head_norm='none'")
        heads = list(cfg['head']) if isinstance(cfg['head'], (list, tuple)) else [cfg['head']] * len(bodies)
        if len(heads) != len(bodies):
            raise ConfigError(f"head must be one head name or a list of {len(bodies)} (one per unit), got {cfg['head']!r}")
        if cfg['label_embed'] and any(h != 'goodness' for h in heads):
            raise ConfigError(f"head={cfg['head']!r} maps a unit's activation to class logits, but classic FF models "
                              "(label_embed=True) score labels by their scalar goodness: use head='goodness'")
        for name in dict.fromkeys(heads):  # head_kwargs go to the registered heads (to 'goodness' only when alone)
            check_head(name, cfg['head_kwargs'] if name != 'goodness' or set(heads) == {'goodness'} else {}, spatial)
        self._unit_heads = heads
        side = cfg['head_img_size']
        if side is not None and (not isinstance(side, int) or isinstance(side, bool) or side < 1):
            raise ConfigError(f'head_img_size must be a positive integer (the input side) or None, got {side!r}')
        if cfg['label_embed'] and cfg['label_code'] == 'plane' and not (isinstance(getattr(stem, 'conv', None), nn.Conv2d) and spatial):
            raise ConfigError("label_code='plane' adds a learned label plane through the stem's first conv; this model "
                              "has no conv stem (an MLP): use label_code='bias'")
        if not isinstance(cfg['label_plane_size'], int) or isinstance(cfg['label_plane_size'], bool) \
                or cfg['label_plane_size'] < 1:
            raise ConfigError(f"label_plane_size must be a positive integer, got {cfg['label_plane_size']!r}")
        patches = cfg['goodness_patches']
        per_unit = list(patches) if isinstance(patches, (list, tuple)) else [patches] * len(bodies)
        if len(per_unit) != len(bodies) or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 1
                                                    for p in per_unit):
            raise ConfigError(f'goodness_patches must be a positive integer or a list of {len(bodies)} positive '
                              f'integers (one grid side per unit), got {patches!r}')
        self.ff_cfg = cfg
        self._unit_patches = per_unit
        img_size = cfg['head_img_size'] or 32
        self._feat_sides = [-(-img_size // r) for r in reductions] if spatial else [None] * len(bodies)
        self._stem_chs = stem_chs
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.spatial = spatial
        self.label_embed_enabled = bool(cfg['label_embed'])
        self.label_sweep_pairs = 64  # classic FF's eval on a CPU: (image, label) pairs a unit scores at once
        self.num_features = self.head_hidden_size = chs[-1]
        self.model_args = dict(family_kwargs, num_classes=num_classes, in_chans=in_chans,
                               global_pool=global_pool, **ff_kwargs)
        units = []
        for u, (body, c) in enumerate(zip(bodies, chs)):
            units.append(LocalUnit(
                body=body,
                head=self._make_head(c, self._unit_patches[u], self._feat_sides[u], self._unit_heads[u]),
                in_norm=create_unit_norm(cfg['unit_norm'], chs[u - 1], spatial, cfg['goodness_groups'])
                if u > 0 else None,
                stem=stem if u == 0 else None,
                label_embed=self._make_label_embed(stem if u == 0 else None, chs[u - 1] if u > 0 else 0),
                spatial=spatial,
            ))
        # an nn.Sequential registered first: timm's FeatureListNet walks (and flattens) children in order
        self.units = nn.Sequential(*units)
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool)) if spatial else nn.Identity()
        self.fusion = LogitFusion(len(units), cfg['fusion'], cfg['fuse_last'])
        self.feature_info = [dict(num_chs=c, reduction=r, module=f'units.{u}')
                             for u, (c, r) in enumerate(zip(chs, reductions))]
        self._min_size = reductions[-1] if spatial else 1

    def _make_head(self, chs: int, patches: int, feat_side: Optional[int] = None, head: str = 'goodness') -> nn.Module:
        cfg = self.ff_cfg
        temp = None
        if not self.label_embed_enabled:
            t_kwargs = dict(t_init=cfg['t_init'])
            if cfg['temperature'] == 'dynamic':
                t_kwargs.update(t_min=cfg['t_min'], t_max=cfg['t_max'], momentum=cfg['t_momentum'])
            temp = create_temperature(cfg['temperature'], **t_kwargs)
        coupled = None if cfg['decoupled'] else create_unit_norm(cfg['unit_norm'], chs, self.spatial,
                                                                 cfg['goodness_groups'])
        if head != 'goodness':
            trunk = create_head_trunk(head, chs, feat_side, **cfg['head_kwargs'])
            return ClassHead(trunk, self.num_classes, temperature=temp, coupled_norm=coupled)
        return GoodnessHead(
            chs,
            num_classes=0 if self.label_embed_enabled else self.num_classes,
            mode=cfg['goodness'],
            groups=cfg['goodness_groups'],
            patches=patches,
            reduce=cfg['goodness_reduce'],
            proj=cfg['head_proj'],
            norm=cfg['head_norm'],
            temperature=temp,
            coupled_norm=coupled,
            spatial=self.spatial,
        )

    def _make_label_embed(self, stem: Optional[nn.Module], in_chs: int = 0) -> Optional[nn.Module]:
        """Unit 0's label code (from its ``stem``), or a later unit's (``in_chs`` wide, ``label_units='all'``)."""
        if not self.label_embed_enabled or self.num_classes <= 0:
            return None
        if stem is None and self.ff_cfg['label_units'] != 'all':
            return None
        if stem is not None and self.ff_cfg['label_code'] == 'plane':
            return LabelPlane(self.num_classes, stem.conv, self.ff_cfg['label_plane_size'])
        emb = nn.Embedding(self.num_classes, self._stem_chs if stem is not None else in_chs)
        nn.init.normal_(emb.weight, std=1.0)
        return emb

    # ----------------------------------------------------------------------------- local units
    def local_units(self) -> List[LocalUnit]:
        """The ordered trainable units (the stem is folded into the first)."""
        return list(self.units)

    def check_input(self, x: torch.Tensor):
        """Raise a clear error for a wrong channel count or an input too small for the unit strides."""
        if self.spatial:
            check_image_input(x, self.in_chans, self._min_size)

    def forward_units(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """Raw activations of every unit (no detach: see timm_ff.task for local training)."""
        self.check_input(x)
        feats = []
        for u, unit in enumerate(self.units):
            x = unit(x, labels=labels)
            feats.append(x)
        return feats

    def forward_unit_logits(self, x: torch.Tensor) -> List[torch.Tensor]:
        """(B, K) class logits of every unit.

        Models with heads map each unit's goodness to logits in one pass. Classic FF models
        (``label_embed=True``) run the network once per label and use each unit's goodness as
        that label's score.
        """
        state = self.eval_init(x)
        out = []
        for u in range(len(self.units)):
            state, z = self.eval_unit(u, state)
            out.append(z)
        return out

    def eval_init(self, x: torch.Tensor):
        """What unit 0 receives when scoring ``x``: the images, or for classic FF every (image, label) pair.

        :meth:`forward_unit_logits` is ``eval_init`` then :meth:`eval_unit` for each unit in turn; a
        pipeline runs the same two pieces with the units spread over processes.
        """
        if self.num_classes <= 0:
            raise ConfigError('this model has no classifier (num_classes=0); reset_classifier(K) first')
        self.check_input(x)
        if not self.label_embed_enabled:
            return x
        K = self.num_classes
        return dict(x=x.repeat_interleave(K, dim=0), labels=torch.arange(K, device=x.device).repeat(x.shape[0]))

    def eval_unit(self, u: int, state):
        """Unit ``u`` on an :meth:`eval_init` state: (next state, (B, K) logits).

        Classic FF's B*K (image, label) pairs go through a CPU in passes of at most :attr:`label_sweep_pairs`
        pairs (whole images' K labels each) when the model is in eval mode, where a pair's output does not depend
        on the others (not under torch.fx, torch.compile or export: they see one pass): one pass of 640 pairs ran
        ``ff_resnet18`` at 0.6x the pairs/s of passes of 20-80 (bf16, one thread), its activations no longer in cache.
        """
        if not self.label_embed_enabled:
            return self.units[u](state, with_logits=True)
        x, labels = state['x'], state['labels']
        step = max(1, self.label_sweep_pairs // self.num_classes) * self.num_classes
        traced = isinstance(x, torch.fx.Proxy) or torch.compiler.is_compiling()  # one pass: no data-dependent flow
        if traced or self.training or x.device.type != 'cpu' or x.shape[0] <= step:
            xs, g = self.units[u](x, labels=labels, with_logits=True)
        else:
            outs = [self.units[u](xc, labels=lc, with_logits=True) for xc, lc in zip(x.split(step), labels.split(step))]
            xs, g = torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
        return dict(x=xs, labels=labels), g.reshape(-1, self.num_classes)

    # ----------------------------------------------------------------------------- timm contract
    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features that also returns intermediates: one raw activation per local unit.

        Index ``u`` is unit ``u``, the same numbering as ``feature_info``. Classic FF models embed no
        label here (there is none to embed): their intermediates are the label-free unit activations.

        Args:
            x: Input image tensor (or (B, D) vectors for the MLPs).
            indices: Take the last n units if int, all if None, the listed units if a sequence
                (negative indices count from the end).
            norm: Accepted for timm compatibility; these models have no final norm, so it changes nothing.
            stop_early: Stop after the last unit that is taken.
            output_fmt: 'NCHW' (MLP units are (B, C) activations whatever the format).
            intermediates_only: Only return the intermediates.

        Returns:
            The last computed unit's activation and the list of intermediates, or just the intermediates.
        """
        if output_fmt not in OUTPUT_FMTS:
            raise unknown_choice('output_fmt', output_fmt, OUTPUT_FMTS)
        take_indices, max_index = feature_take_indices(len(self.units), indices)
        self.check_input(x)
        units = self.units[:max_index + 1] if stop_early else self.units
        intermediates = []
        for u, unit in enumerate(units):
            x = unit(x)
            if u in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the units after the last one ``indices`` needs.

        Args:
            indices: Indices of the intermediates to keep (as in ``forward_intermediates``).
            prune_norm: Accepted for timm compatibility (there is no final norm).
            prune_head: Remove the classifier (every unit's head projection, or the label code).
                Cutting units off the end removes it too: fused logits of the remaining units would
                no longer be what the model was trained to predict.

        Returns:
            The absolute indices that were kept.
        """
        take_indices, max_index = feature_take_indices(len(self.units), indices)
        prune_end = max_index < len(self.units) - 1
        if prune_end:
            self.units = self.units[:max_index + 1]
            self.feature_info = self.feature_info[:max_index + 1]
            self.num_features = self.head_hidden_size = self.feature_info[-1]['num_chs']
            self._min_size = self.feature_info[-1]['reduction'] if self.spatial else 1
            n = len(self.units)
            self.fusion = LogitFusion(n, self.ff_cfg['fusion'], min(self.ff_cfg['fuse_last'], n))
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last unit's raw, unpooled activation (NCHW; NC for MLPs)."""
        return self.forward_units(x)[-1]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pooled features (``pre_logits``) or the last unit's logits from its activation ``x``.

        ``model(x)`` fuses the last M units; with ``fusion='last'`` the two agree.
        """
        if pre_logits or self.num_classes <= 0:
            return self.global_pool(x)
        if self.label_embed_enabled:
            raise ConfigError('classic FF models score labels by re-running the network with each label '
                              'embedded; use model(x) or forward_unit_logits(x), not forward_head')
        return self.units[-1].head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fused class logits (B, K); pooled features when ``num_classes == 0``."""
        if self.num_classes <= 0:
            return self.forward_head(self.forward_features(x))
        return self.fusion(self.forward_unit_logits(x))

    def get_classifier(self) -> nn.Module:
        if self.label_embed_enabled:
            return self.units[0].label_embed
        return self.units[-1].head.proj

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        """Rebuild every unit's head (and the label code) for ``num_classes``; 0 leaves features only."""
        self.num_classes = num_classes
        self.model_args['num_classes'] = num_classes
        if global_pool is not None and self.spatial:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
            self.model_args['global_pool'] = global_pool
        for unit in self.units:
            unit.head.reset(0 if self.label_embed_enabled else num_classes)
        self.units[0].label_embed = self._make_label_embed(self.units[0].stem)
        for u in range(1, len(self.units)):
            self.units[u].label_embed = self._make_label_embed(None, self.feature_info[u - 1]['num_chs'])

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        # fine (what --layer-decay uses): one group per unit, the stem and label code with unit 0 (its loss
        # trains them) and each unit's head with its body; the fusion joins the last unit (99999: previous group)
        if coarse:
            return dict(stem=r'^units\.0\.(?:stem|label_embed)', blocks=r'^units\.(\d+)')
        return dict(stem=r'^units\.0\.', blocks=[(r'^units\.(\d+)\.', None), (r'^fusion', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        if enable:
            raise NotImplementedError('FF units are trained one at a time; use --local-backward per_unit '
                                      'to bound activation memory instead of gradient checkpointing')


def head_defaults(kwargs: Dict, input_size: Sequence[int]) -> Dict:
    """A registered (non-goodness) head is built for the tag's input side."""
    head = kwargs.get('head', 'goodness')
    if any(h != 'goodness' for h in (head if isinstance(head, (list, tuple)) else [head])):
        kwargs.setdefault('head_img_size', int(min(input_size[-2:])))
    return kwargs


def build_ffnet(model_cls: type, variant: str, pretrained: bool, out_indices: Tuple[int, ...], **kwargs) -> nn.Module:
    """``build_model_with_cfg`` for a timm_ff family.

    ``features_only=True`` builds the backbone without heads (num_classes=0), as timm's feature
    wrappers drop a classifier: the heads sit inside the units, so the FX feature extractor would
    otherwise return each unit's head output instead of its activation.
    """
    if kwargs.get('features_only'):
        kwargs['num_classes'] = 0
    try:
        return build_model_with_cfg(model_cls, variant, pretrained,
                                    feature_cfg=dict(flatten_sequential=True, out_indices=out_indices), **kwargs)
    except Exception as e:
        error = _pretrained_hub_error(variant, kwargs, e) if pretrained else None
        if error is None:
            raise
        raise error from e


def _pretrained_hub_error(variant: str, kwargs: Dict, e: Exception):
    """The one-line :class:`~timm_ff.errors.HubError` for timm's Hub download of pretrained weights failing.

    ``timm.create_model(tag, pretrained=True)`` offline, or for a tag whose weights are not published,
    otherwise ends in huggingface_hub's generic text; this names the tag, the released tags and the local
    alternatives instead (the message :func:`timm_ff.hub.create_pretrained` gives). A weights ``file``
    that is not there gives a :class:`FileNotFoundError` naming it (timm's has no text). None for any
    other error (weights from a state dict or a local folder, or not a failed load).
    """
    from huggingface_hub.errors import HfHubHTTPError
    from timm.models._builder import resolve_pretrained_cfg

    from ..hub._common import request_errors
    from ..hub.download import pretrained_file_error, pretrained_load_error
    if not isinstance(e, (HfHubHTTPError, *request_errors())):
        return None
    try:
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                     pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'))
    except Exception:  # noqa: BLE001  (an unresolvable cfg: leave the original error alone)
        return None
    # timm's own order (_builder._resolve_pretrained_source): a state dict or file wins over hf_hub_id
    from_file = cfg.source not in ('hf-hub', 'local-dir') and not cfg.state_dict and cfg.file
    if from_file and isinstance(e, FileNotFoundError):
        return pretrained_file_error(variant, cfg.file)
    from_hub = cfg.source == 'hf-hub' or (not cfg.source and not cfg.state_dict and not cfg.file)
    if not (cfg.hf_hub_id and from_hub):
        return None
    is_tag = cfg.source != 'hf-hub'
    name = f'{cfg.architecture}.{cfg.tag}' if is_tag and cfg.tag else f'hf-hub:{cfg.hf_hub_id}'
    return pretrained_load_error(name, cfg.hf_hub_id, e, tag=is_tag)


def norm_layer(norm: str, dims: int = 2):
    """The norm class a family puts inside its units ('none' gives an identity with the same signature)."""
    if norm == 'none':
        return nn.Identity
    return nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d


def sequential(**modules) -> nn.Sequential:
    """An nn.Sequential with named children (keeps state-dict keys readable)."""
    return nn.Sequential(OrderedDict(modules))
