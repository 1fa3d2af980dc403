"""InfoPro's information-preserving term (Wang et al., ICLR 2021) for any head-based objective.

Greedy local training "collapses task-relevant information at early layers": each unit keeps only what its
own head needs, and the units after it cannot get back what was thrown away. InfoPro adds to each local
module's loss a reconstruction of the input image from the module's output, weighted heavily early and
lightly late (``blackfeather-wang/InfoPro-Pytorch``, ``networks/resnet.py``; its decoder is in
``networks/auxiliary_nets.py``)::

    loss_u = objective_loss_u + w_u * BCE(sigmoid(decoder_u(h_u)), image)

with ``w_u`` going linearly from ``a`` (unit 0) to ``b`` (the last unit): ``recon=[a, b]`` as an objective
kwarg of ``dtg``, ``bp_deepsup``, ``bp`` or any head-based objective that runs its units the default way.
The source's task weight (``ixy``) rising with depth is left to the objective (every unit's task loss keeps
weight 1, so ``dtg`` with and without the term differ by the term alone).

The decoder (:class:`ReconDecoder`, the source's: bilinear upsampling of the unit's output to the image
size, 3x3 conv to ``12 * widen`` channels, BatchNorm, ReLU, 3x3 conv to the image's channels, sigmoid) is
a training-only submodule ``units.<u>.decoder`` that :meth:`ReconObjective.prepare_model` adds before the
optimiser is built. It runs inside the unit's forward (so DDP and FSDP see it as part of the unit) and
reads that unit's output only; the image it reconstructs is the batch un-normalised with the model's
``pretrained_cfg`` mean and std (what the data pipeline normalised it with), clamped to [0, 1]. Saved
weights drop the decoders: a checkpoint loads with plain ``timm.create_model`` for inference, and its
card records the objective kwargs it was trained with.
"""
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ._base import Objective

__all__ = ['ReconDecoder', 'ReconObjective', 'check_recon_weights', 'strip_decoders', 'DECODER_KEY']

DECODER_KEY = '.decoder.'  # state-dict keys of the training-only decoders contain this


class ReconDecoder(nn.Module):
    """InfoPro's decoder: upsample to the image size, conv3x3 -> BN -> ReLU -> conv3x3 to the image channels.

    Returns pre-sigmoid logits (the loss applies the sigmoid inside a numerically stable BCE).
    """

    def __init__(self, in_chs: int, out_chans: int = 3, widen: int = 1):
        super().__init__()
        mid = 12 * widen
        self.conv1 = nn.Conv2d(in_chs, mid, 3, 1, 1)
        self.bn = nn.BatchNorm2d(mid)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid, out_chans, 3, 1, 1)

    def forward(self, h: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        h = F.interpolate(h, size=tuple(size), mode='bilinear', align_corners=True)
        return self.conv2(self.act(self.bn(self.conv1(h))))


def check_recon_weights(recon: Any) -> tuple:
    """``recon`` must be a pair of non-negative numbers [a, b]; one line naming the bad value otherwise."""
    ok = isinstance(recon, (list, tuple)) and len(recon) == 2 and all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 and w == w for w in recon)
    if not ok:
        raise ConfigError(f'recon must be a pair of non-negative numbers [a, b] (the reconstruction weight of the '
                          f'first and of the last unit), got {recon!r}')
    return float(recon[0]), float(recon[1])


def strip_decoders(state: dict) -> dict:
    """A state dict without the training-only decoders."""
    return {k: v for k, v in state.items() if DECODER_KEY not in f'.{k}'}


class ReconObjective(Objective):
    """``inner``'s loss plus InfoPro's weighted reconstruction of the image from each unit's output."""

    def __init__(self, inner: Objective, recon: Sequence[float], widen: int = 1):
        self.inner = inner
        self.a, self.b = check_recon_weights(recon)
        self.widen = widen
        self.name = inner.name
        self.local = inner.local
        self.label_embed = inner.label_embed
        self.find_unused_parameters = inner.find_unused_parameters
        self._mean: Optional[torch.Tensor] = None
        self._std: Optional[torch.Tensor] = None

    def weight(self, u: int, num_units: int) -> float:
        """Reconstruction weight of unit ``u``: linear from ``a`` (unit 0) to ``b`` (the last unit)."""
        return self.a if num_units <= 1 else self.a + (self.b - self.a) * u / (num_units - 1)

    def check_model(self, model: nn.Module):
        self.inner.check_model(model)
        if self.inner.label_embed is not False or type(self.inner).unit_forward is not Objective.unit_forward:
            raise ConfigError(f'recon is for objectives that read class heads the default way (dtg, bp_deepsup, bp); '
                              f'{self.inner.name!r} runs its units its own way')
        if not getattr(model, 'spatial', False):
            raise ConfigError('recon reconstructs the input image from each unit output: it needs an image model '
                              '(a CNN or ResNet), not an MLP')

    def prepare_model(self, model: nn.Module):
        """Add a decoder to every unit that has none (before the optimiser is built)."""
        cfg = getattr(model, 'pretrained_cfg', None) or {}
        chans = model.in_chans
        mean = cfg.get('mean') or (0.0,) * chans
        std = cfg.get('std') or (1.0,) * chans
        self._mean = torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        for unit, info in zip(model.local_units(), model.feature_info):
            if getattr(unit, 'decoder', None) is None:
                unit.decoder = ReconDecoder(info['num_chs'], chans, self.widen)
        return model

    def init_state(self, x, targets, num_classes):
        mean, std = self._mean.to(x.device), self._std.to(x.device)
        image = (x.float() * std + mean).clamp(0, 1)
        return dict(x=self.inner.init_state(x, targets, num_classes), image=image)

    def unit_forward(self, unit, u, state):
        image = state['image']
        h, out, r = unit(state['x'], with_logits=True, reconstruct=image.shape[-2:])
        bce = F.binary_cross_entropy_with_logits(r.float(), image)
        return dict(x=h, image=image), (out, bce)

    def unit_loss(self, u, num_units, out, targets):
        logits, bce = out
        loss = self.inner.unit_loss(u, num_units, logits, targets)
        term = self.weight(u, num_units) * bce  # a zero weight still connects the decoder (DDP: no unused parameters)
        return term if loss is None else loss + term

    def unit_logits(self, out):
        return self.inner.unit_logits(out[0])

    def fusion_loss(self, fused, targets):
        return self.inner.fusion_loss(fused, targets)
