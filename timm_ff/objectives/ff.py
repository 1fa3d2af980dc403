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

``overlap=True`` is Trifecta's "overlapping local updates" (Dooms et al. 2023, The Trifecta: Three simple
techniques for training deeper Forward-Forward networks; ``tdooms/trifecta``, ``main.py``, ``olu=True``, on by
default there), and it makes the objective **not layer-local**. In each training batch only the units of one
parity have a loss: the odd units on even batches, the even units on odd batches (the source's
``should_detach``, with the batch count in place of its per-epoch batch index). A unit with a loss hands its
output on detached; a unit without one hands it on attached, so the next unit's loss also updates it: unit u's
loss reaches units u and u-1, never u-2. A unit's loss in a batch where it has none is still computed and
logged, not backpropagated. The source gives each block an Adam optimiser over its own and its predecessor's
parameters (two moment estimates for each block); here the run's one optimiser sees each parameter's gradient
from whichever loss reached it in that batch. The batch count is saved with every checkpoint, so a resumed run
keeps the parity. Off by default; ``--pipeline-stages`` and ``--unit-micro-batches`` refuse it.
"""
import torch
import torch.nn.functional as F

from ..errors import ConfigError, unknown_choice
from ..methods import Method, register_method
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
                 passes: str = 'joint', per_location: bool = False, overlap: bool = False):
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
            overlap: Trifecta's overlapping local updates (not layer-local: a unit's loss also updates the
                unit before it, see the module docstring).
        """
        if loss not in FF_LOSSES:
            raise unknown_choice('ff loss', loss, FF_LOSSES)
        if passes not in FF_PASSES:
            raise unknown_choice('ff passes', passes, FF_PASSES)
        if not isinstance(per_location, bool):
            raise ConfigError(f'ff per_location must be true or false, got {per_location!r}')
        if not isinstance(overlap, bool):
            raise ConfigError(f'ff overlap must be true or false, got {overlap!r}')
        self.overlap = overlap
        if overlap:
            self.local = False
            self.find_unused_parameters = True  # the last unit has no loss in every other batch
            self.stateful = True
            self.nonlocal_setting = ("overlap=true (Trifecta's overlapping local updates: a unit's loss also "
                                     'updates the unit before it)')
        self._batches = 0  # training batches seen; with overlap their parity picks the units that have a loss
        self._odd = False
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

    def trains(self, u: int) -> bool:
        """Whether unit ``u``'s loss is backpropagated in the current batch (always, unless ``overlap``)."""
        return not self.overlap or (u % 2 == 0) == self._odd

    def detach_input(self, u):
        return self.trains(u - 1)

    @property
    def per_unit_backward(self):
        return True  # with overlap a loss reaches the unit before it only when that unit has no loss of its own

    def state_dict(self) -> dict:
        return dict(batches=self._batches)

    def load_state_dict(self, state: dict):
        self._batches = int(state['batches'])

    def init_state(self, x, targets, num_classes):
        if self.overlap:
            self._odd = self._batches % 2 == 1
            self._batches += 1
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
            loss = F.softplus(self.alpha * (gn - gp)).mean()
        else:
            loss = (F.softplus(self.threshold - gp) + self.neg_weight * F.softplus(gn - self.threshold)).mean()
        return loss if self.trains(u) else loss.detach()

    def unit_logits(self, out):
        return None


register_method(Method(
    'trifecta_olu', 'ff',
    paper='Dooms et al. 2023, The Trifecta: Three simple techniques for training deeper Forward-Forward networks',
    source='tdooms/trifecta, main.py', objective_kwargs=dict(overlap=True), model_kwargs=dict(label_code='plane'),
    local=False, label_in_input=True, negatives=True, model_family='label',
    from_source="overlapping local updates (olu=True, which alternates by batch parity), SymBa's alpha=4, the "
                "learned label plane, BatchNorm over one batch of positives and negatives; not the source's: one "
                "optimiser for all units, prediction by the mean of the units and the fusion check (the source scores "
                "the last block only: fusion='last')",
    published='about 84%: 6 blocks of 128-512 channels, 100 epochs, batch 512 (Trifecta abstract and main.py)'))
