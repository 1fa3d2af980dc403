"""Classic Forward-Forward (Hinton, 2022).

The label is embedded at the input; the positive pass carries the true label, the negative pass a
uniformly drawn wrong one. Each unit separates its scalar goodness on the two passes. The default
loss is SymBa's (Lee & Song 2023), ``softplus(alpha * (g_neg - g_pos))`` on each image's pair; Hinton's
threshold loss ``softplus(-(g_pos - theta)) + softplus(g_neg - theta)`` is ``loss='threshold'``. SymBa
is the default because it learned faster where the two were compared (``benchmarks/results/classic_ff_cpu.json``:
``ff_resnet18`` on the bundled CIFAR-10 sample, 16.00% vs 13.40%).
By default (``passes='joint'``) the positive and negative passes run as one batch of 2B, as in Trifecta
(Dooms et al.): a unit with BatchNorm then normalises over positives and negatives together, so the
difference between the two survives (separate batches would let BatchNorm set each pass's energy on
its own, which is ``passes='separate'``). For a unit without BatchNorm the two are the same computation.
Prediction scores every label (see ``FFNet.forward_unit_logits``).
With ``per_location=True`` the loss is applied to each value of the unit's goodness vector (each cell of
a ``goodness='patch'`` grid, each channel of each cell for ``'grid'``) and averaged, instead of to
their mean: every location must tell the true label from the wrong one on its own, and a location
that already does stops pulling on the weights. Scoring is unchanged (the mean over the same values).
"""
import torch
import torch.nn.functional as F

from ..errors import ConfigError, unknown_choice
from ._base import Objective, register_objective

FF_LOSSES = ('threshold', 'symba')
FF_PASSES = ('joint', 'separate')
PER_LOCATION_GOODNESS = ('patch', 'grid')


@register_objective('ff')
class FFObjective(Objective):
    """Positive/negative goodness loss per unit (SymBa by default, or Hinton's threshold)."""
    local = True
    label_embed = True

    def __init__(self, threshold: float = 1.0, neg_weight: float = 1.0, loss: str = 'symba', alpha: float = 4.0,
                 passes: str = 'joint', per_location: bool = False):
        """
        Args:
            threshold: theta, in units of the model's goodness (mean of squares by default).
            neg_weight: Weight of the negative term ('threshold' loss).
            loss: 'symba' (default; Lee & Song 2023:
                ``softplus(alpha * (g_neg - g_pos))`` on each image's positive/negative pair, which
                balances the two gradients and needs no threshold) or 'threshold' (Hinton: each pass against theta).
            alpha: Scale of the goodness difference in the 'symba' loss.
            passes: 'joint' (positives and negatives in one batch of 2B, so BatchNorm statistics span both)
                or 'separate' (two forward calls).
            per_location: Apply the loss to each value of the goodness vector (each location of a
                model with ``goodness='patch'`` or ``'grid'``) instead of to their mean.
        """
        if loss not in FF_LOSSES:
            raise unknown_choice('ff loss', loss, FF_LOSSES)
        if passes not in FF_PASSES:
            raise unknown_choice('ff passes', passes, FF_PASSES)
        if not isinstance(per_location, bool):
            raise ConfigError(f'ff per_location must be true or false, got {per_location!r}')
        self.passes = passes
        self.per_location = per_location
        self.threshold = threshold
        self.neg_weight = neg_weight
        self.loss = loss
        self.alpha = alpha

    def check_model(self, model):
        super().check_model(model)
        mode = getattr(model, 'ff_cfg', {}).get('goodness')
        if self.per_location and mode not in PER_LOCATION_GOODNESS:
            raise ConfigError(f"ff per_location=true needs a model whose goodness has one value per location "
                              f"(goodness {' or '.join(map(repr, PER_LOCATION_GOODNESS))}), but this model's goodness "
                              f"is {mode!r}; pass e.g. --model-kwargs '{{\"goodness\": \"patch\", "
                              f"\"goodness_patches\": 4}}'")

    def init_state(self, x, targets, num_classes):
        offset = torch.randint(1, num_classes, targets.shape, device=targets.device)
        negatives = (targets + offset) % num_classes
        return dict(pos=x, neg=x, pos_labels=targets, neg_labels=negatives)

    def unit_forward(self, unit, u, state):
        # every unit gets the labels: a unit with a label code of its own embeds them, the others ignore them
        if self.passes == 'joint':
            b = state['pos'].shape[0]
            labels = torch.cat([state['pos_labels'], state['neg_labels']])
            h, g = unit(torch.cat([state['pos'], state['neg']]), labels=labels, with_logits=True,
                        goodness_vector=self.per_location)
            hp, hn, gp, gn = h[:b], h[b:], g[:b], g[b:]
        else:
            hp, gp = unit(state['pos'], labels=state['pos_labels'], with_logits=True, goodness_vector=self.per_location)
            hn, gn = unit(state['neg'], labels=state['neg_labels'], with_logits=True, goodness_vector=self.per_location)
        return dict(pos=hp, neg=hn, pos_labels=state['pos_labels'], neg_labels=state['neg_labels']), (gp, gn)

    def unit_loss(self, u, num_units, out, targets):
        gp, gn = out[0].float(), out[1].float()
        if self.loss == 'symba':
            return F.softplus(self.alpha * (gn - gp)).mean()
        return (F.softplus(self.threshold - gp) + self.neg_weight * F.softplus(gn - self.threshold)).mean()

    def unit_logits(self, out):
        return None
