"""Nøkland & Eidnes' similarity-matching local losses: ``sim`` and ``predsim``.

Nøkland & Eidnes 2019, "Training Neural Networks with Local Error Signals" (ICML), following their code
(``anokland/local-loss``, ``train.py``: ``LocalLossBlockConv``, ``LocalLossBlockLinear``, ``similarity_matrix``).
Each unit's output ``h`` goes through a training-only layer of its own (the source's ``conv_loss``, a 3x3 conv
C -> C without bias; ``linear_loss``, a C -> C linear map without bias, on MLP units), and the batch's similarity
matrix of that layer's output is matched to the similarity matrix of the one-hot labels::

    sim_u = MSE(S(f_u(h_u)), S(onehot(y)))
    S(z) = cosine similarities of the rows of z, each row centred on its own mean

where a row of a (B, C, H, W) map is the standard deviation of each channel over the positions (when C > 3 and
H > 1; else the flattened sample). ``predsim`` adds the 'pred' loss, the cross-entropy of the unit's class head
(``head='pred'``: average pooling to at most 4096 values and a zero-initialised linear map), weighted
``(1 - beta) * pred + beta * sim``. The source's hyperparameters kept here: ``beta = 0.99``, the 3x3 bias-free
similarity conv, the per-channel standard deviation and the 1e-8 in the normalisation, the pred head's shape
(``dim_in_decoder = 4096``), and plain cross-entropy (``--method predsim`` fixes the temperature at 1).

``sim`` trains the backbone by the similarity loss alone, as the source's ``--loss-sup sim``, where no unit has
a classifier and only the network's final linear layer is fitted, by cross-entropy on the detached last hidden
output. Here every unit keeps its class head, so that each unit reports logits for eval and fusion, and each
head is fitted the way the source fits its final layer: by its own cross-entropy on a detached input (a
forward pre-hook on the head), so no head loss reaches the unit's body.

Deviations from the source: the similarity layer and the pred head read the model's unit outputs (a unit is one
or more conv-BN-ReLU layers, or a residual block), and the unit norm between units stays the model's; the
similarity matrix is over each process's batch (and each micro-batch under ``--unit-micro-batches``), as the
source's is over its one-GPU batch of 128; the learning-rate schedule, dropout and the source's last-layer
classifier (here: the fusion of the units' heads) are the recipe's and the model's.

The similarity layer sits in the unit's training-only ``decoder`` slot (the one InfoPro's decoder uses): it runs
inside the unit's forward, so DDP and FSDP see it as part of the unit, and saved weights drop it, so a checkpoint
loads with plain ``timm.create_model``.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..methods import Method, register_method
from ._base import Objective, register_objective

__all__ = ['SimilarityLayer', 'similarity_matrix', 'PredSimObjective', 'SimObjective']

_EPS = 1e-8  # the source's guard on the norm of a centred row


def similarity_matrix(z: torch.Tensor) -> torch.Tensor:
    """(B, B) cosine similarities of the batch's centred rows, in fp32 (the source's ``similarity_matrix``).

    A (B, C, H, W) map with C > 3 and H > 1 is read as one value per channel, its standard deviation over the
    positions; any other tensor as its flattened samples.
    """
    z = z.float()
    if z.ndim == 4 and z.shape[1] > 3 and z.shape[2] > 1:
        z = z.flatten(2).std(dim=2)
    else:
        z = z.flatten(1)
    z = z - z.mean(dim=1, keepdim=True)
    z = z / (z.norm(dim=1, keepdim=True) + _EPS)
    return (z @ z.t()).clamp(-1, 1)


class SimilarityLayer(nn.Module):
    """The training-only layer whose output's similarity matrix is matched: 3x3 conv (spatial) or linear (MLP)."""

    def __init__(self, chs: int, spatial: bool = True):
        super().__init__()
        self.proj = nn.Conv2d(chs, chs, 3, 1, 1, bias=False) if spatial else nn.Linear(chs, chs, bias=False)

    def forward(self, h: torch.Tensor, size: Optional[tuple] = None) -> torch.Tensor:
        """``size`` is the decoder slot's (unused: the layer keeps the unit's shape)."""
        return self.proj(h)


def _detach_input(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)


@register_objective('predsim')
class PredSimObjective(Objective):
    """Each unit minimises ``(1 - beta) * CE(head logits, y) + beta * MSE(S(f(h)), S(onehot(y)))``."""
    local = True
    label_embed = False
    detach_head = False  # 'sim': the head's loss trains the head only

    def __init__(self, beta: float = 0.99, label_smoothing: float = 0.0):
        """
        Args:
            beta: Weight of the similarity loss, ``1 - beta`` that of the head's cross-entropy (source: 0.99).
            label_smoothing: Label smoothing of the head's cross-entropy (source: none).
        """
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta <= 1:
            raise ConfigError(f'predsim beta={beta!r}: must be a number in [0, 1] (the similarity loss weight)')
        self.beta = float(beta)
        self.label_smoothing = label_smoothing

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Give every unit its similarity layer (before the optimiser is built)."""
        spatial = bool(getattr(model, 'spatial', True))
        for unit, info in zip(model.local_units(), model.feature_info):
            if not isinstance(getattr(unit, 'decoder', None), SimilarityLayer):
                unit.decoder = SimilarityLayer(info['num_chs'], spatial)
            if self.detach_head and _detach_input not in unit.head._forward_pre_hooks.values():
                unit.head.register_forward_pre_hook(_detach_input)
        return model

    def unit_forward(self, unit, u, state):
        h, logits, z = unit(state, with_logits=True, reconstruct=())
        return h, (logits, z)

    def similarity_loss(self, z: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
        """MSE between the similarity matrices of ``z`` and of the one-hot labels."""
        label_sim = similarity_matrix(F.one_hot(targets, num_classes))
        return F.mse_loss(similarity_matrix(z), label_sim)

    def unit_loss(self, u, num_units, out, targets):
        logits, z = out
        ce = F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)
        return (1 - self.beta) * ce + self.beta * self.similarity_loss(z, targets, logits.shape[-1])

    def unit_logits(self, out):
        return out[0]


@register_objective('sim')
class SimObjective(PredSimObjective):
    """The similarity loss trains each unit; its head is fitted by its own cross-entropy on a detached input."""
    detach_head = True

    def __init__(self, label_smoothing: float = 0.0):
        """
        Args:
            label_smoothing: Label smoothing of the heads' cross-entropy (source: none).
        """
        super().__init__(beta=1.0, label_smoothing=label_smoothing)

    def unit_loss(self, u, num_units, out, targets):
        logits, z = out
        ce = F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)
        return self.similarity_loss(z, targets, logits.shape[-1]) + ce


_SOURCE = 'anokland/local-loss, train.py'
register_method(Method(
    'predsim', 'predsim', paper='Nøkland & Eidnes 2019, Training Neural Networks with Local Error Signals',
    source=_SOURCE, model_kwargs=dict(head='pred', temperature='fixed', t_init=1.0),
    objective_kwargs=dict(beta=0.99),
    from_source="beta=0.99; the pred head (pool to <= 4096 values, zero-initialised map); the 3x3 bias-free "
                "similarity conv and the similarity matrix of per-channel standard deviations; plain CE (T = 1)",
    published='94.42% (5.58% error): VGG8b, 8.9M parameters, 400 epochs (anokland/local-loss README)'))
register_method(Method(
    'sim', 'sim', paper='Nøkland & Eidnes 2019, Training Neural Networks with Local Error Signals (sim loss)',
    source=_SOURCE, model_kwargs=dict(head='pred', temperature='fixed', t_init=1.0),
    from_source="the similarity loss and layer as in predsim; the heads are fitted on detached inputs, as the "
                "source fits its final classifier; the pred head is this project's readout choice",
    published='92.84% (7.16% error): VGG8b, 400 epochs (anokland/local-loss README)'))
