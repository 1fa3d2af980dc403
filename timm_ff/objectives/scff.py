"""Self-contrastive Forward-Forward (objective ``scff``): FF without labels, on pairs of images.

Chen, Liu, Laydevant and Grollier 2025 (Nature Communications), "Self-Contrastive Forward-Forward Algorithm",
following their code (``neurophysics-cnrsthales/contrastive-forward-forward``, ``SCFF_CIFAR.py`` and
``SCFF_CIFAR_Parallel.py``: ``get_pos_neg_batch_imgcats``, the ``Conv2d`` layer with ``concat=True`` and the loss in
``train``; ``config.json`` for the per-layer values). A positive input is an image paired with itself, a negative
one an image paired with another image of the batch (image i with image i + s, one shift s drawn per batch and
layer from 1..B-1). The source concatenates the two along the channels and its first conv applies one kernel to
each half and adds the results; here the pair is *averaged* and fed to the unit, which a conv (or linear) stem
followed by BatchNorm maps to the same output (the conv is linear; BatchNorm removes the factor 2 and the bias),
and an image paired with itself is then the image itself: the trained model's plain forward is the positive
pass. With ``pair_units='all'`` (the source's 3-layer CIFAR configuration, ``concat`` on at every layer) each
later unit pairs the previous unit's positive output again; with ``'first'`` only the input is paired and the
negative stream flows through the units on its own. Each unit sees positives and negatives in one batch (BatchNorm
statistics over both, as the ``ff`` objective's ``passes='joint'``). Per unit, with ``y`` the mean over channels of
``relu(h) ** 2`` at each position of the unit's output (one value for an MLP unit)::

    loss = mean_pos softplus(a * (th_pos - y_pos)) + mean_pos softplus(b * (y_neg - th_neg)) + lam * ||y_pos||_2

(means over positions, then over the batch; the norm over positions). No label reaches a unit's weights.

The source measures accuracy with a linear classifier fitted afterwards on the frozen features. Here each unit's
class head is fitted *during* training, by its own cross-entropy on the unit's detached positive output (the
model's head, e.g. ``head='pred'``: pooled features and one linear map, as the source's avg-pooled features and
linear layer), and the fusion weights on the detached head logits: a label-using readout beside the label-free
loss, added to each unit's loss but reaching its head alone. The accuracy a run reports is that of these online
readouts, fitted on features that were still changing. The source's protocol, a readout fitted on the final
frozen features, is a second run on the checkpoint: ``train_ff.py --initial-checkpoint RUN --linear-probe
--objective dtg`` with the same model and model kwargs.

Kept from the source: the self/other pairing with one random shift, the per-position squared-ReLU goodness, the
threshold loss and its first layer's values (``th_pos`` 0, ``th_neg`` 1, ``lam`` 0.0012, ``a = b = 1``; its
deeper layers use 5 / 9 / 0.0007 and 6 / 10 / 0.0005 for a net without BatchNorm: give lists for one value per
unit). Not the source's: the backbone (its layers standardise their input per sample and have no BatchNorm; here
the model's units), the averaging of the pair, goodness read from what the unit hands on (after a ResNet block's
residual add), every unit trained from the first step (the source trains layer by layer, or in parallel with an
epoch count per layer), augmentation and optimiser (the recipe's), and the readout (per-unit heads and fusion,
online, instead of one classifier on the concatenated features of chosen layers).
"""
from typing import Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, unknown_choice
from ..methods import Method, register_method
from ._base import Objective, register_objective

__all__ = ['SCFFObjective', 'SCFF_PAIR_UNITS']

SCFF_PAIR_UNITS = ('all', 'first')
Value = Union[float, Sequence[float]]


def _energy(h: torch.Tensor) -> torch.Tensor:
    """(B, P) mean over channels of relu(h)^2 at each of the P positions (P = 1 for a (B, C) unit), in fp32."""
    y = h.float().relu().square().mean(1)
    return y.reshape(y.shape[0], -1)


@register_objective('scff')
class SCFFObjective(Objective):
    """Self/other image pairs, a threshold loss on each position's goodness; class heads fitted on detached features."""
    local = True
    label_embed = False

    def __init__(self, threshold_pos: Value = 0.0, threshold_neg: Value = 1.0, a: float = 1.0, b: float = 1.0,
                 lam: Value = 0.0012, pair_units: str = 'all', label_smoothing: float = 0.0):
        """
        Args:
            threshold_pos: th_pos, the goodness a positive pair's positions should exceed (one value, or one per unit).
            threshold_neg: th_neg, the goodness a negative pair's positions should stay below (one, or one per unit).
            a: Scale of the positive term.
            b: Scale of the negative term.
            lam: Weight of the L2 norm of the positive goodness over positions (one, or one per unit).
            pair_units: 'all' (every unit pairs its input again) or 'first' (only the images are paired).
            label_smoothing: Label smoothing of the class heads' cross-entropy (the readout).
        """
        if pair_units not in SCFF_PAIR_UNITS:
            raise unknown_choice('scff pair_units', pair_units, SCFF_PAIR_UNITS)
        self.values = dict(threshold_pos=threshold_pos, threshold_neg=threshold_neg, lam=lam)
        for key, v in self.values.items():
            if not (_is_number(v) or (isinstance(v, (list, tuple)) and v and all(_is_number(x) for x in v))):
                raise ConfigError(f'scff {key} must be a number or a list of numbers (one per unit), got {v!r}')
        self.a, self.b = a, b
        self.pair_units = pair_units
        self.label_smoothing = label_smoothing

    def check_model(self, model: nn.Module):
        super().check_model(model)
        n = len(model.local_units())
        for key, v in self.values.items():
            if isinstance(v, (list, tuple)) and len(v) != n:
                raise ConfigError(f'scff {key} has {len(v)} values, but the model has {n} units; give one number or '
                                  f'a list of {n}')

    def value(self, key: str, u: int) -> float:
        """Unit ``u``'s ``threshold_pos``, ``threshold_neg`` or ``lam``."""
        v = self.values[key]
        return float(v[u] if isinstance(v, (list, tuple)) else v)

    @staticmethod
    def pair(x: torch.Tensor) -> torch.Tensor:
        """Negative inputs: each sample averaged with the sample ``s`` places on in the batch (s drawn in 1..B-1)."""
        b = x.shape[0]
        if b < 2:
            raise ConfigError(f'scff pairs each image with another image of its batch, but a batch holds {b} image; '
                              'allowed: batches of 2 or more (--batch-size)')
        shift = int(torch.randint(1, b, ()))
        return (x + x.roll(-shift, 0)) / 2

    def init_state(self, x, targets, num_classes):
        return dict(pos=x, neg=self.pair(x))

    def unit_forward(self, unit, u, state):
        pos = state['pos']
        neg = self.pair(pos) if u > 0 and self.pair_units == 'all' else state['neg']
        b = pos.shape[0]
        h, logits = unit(torch.cat([pos, neg]), with_logits=True, readout_rows=b)
        hp, hn = h[:b], h[b:]
        return dict(pos=hp, neg=hn), (logits, _energy(hp), _energy(hn))

    def unit_loss(self, u, num_units, out, targets):
        logits, yp, yn = out
        tp, tn, lam = self.value('threshold_pos', u), self.value('threshold_neg', u), self.value('lam', u)
        scff = (F.softplus(self.a * (tp - yp)).mean(1).mean() + F.softplus(self.b * (yn - tn)).mean(1).mean()
                + lam * yp.norm(dim=1).mean())
        return scff + F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)

    def unit_logits(self, out):
        return out[0]


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


register_method(Method(
    'scff', 'scff', paper='Chen et al. 2025 (Nature Communications), Self-Contrastive Forward-Forward Algorithm',
    source='neurophysics-cnrsthales/contrastive-forward-forward, SCFF_CIFAR.py', negatives=True,
    model_kwargs=dict(head='pred', temperature='fixed', t_init=1.0),
    from_source='positive = an image with itself, negative = with another image of the batch (one random shift), '
                'paired again at every unit; the per-position squared-ReLU goodness and threshold loss with the first '
                "layer's th_pos 0, th_neg 1, lam 0.0012; no label reaches a unit's weights; not the source's: the "
                'class heads (pooled features, one linear map) are fitted online on detached features, the source '
                'fits one linear classifier afterwards on frozen ones (a --linear-probe run on the checkpoint)',
    published='80.8%, self-supervised, linear probe (SCFF paper)'))
