"""CwComp: channel-wise competitive learning, the Forward-Forward loss without negatives (objective ``cwcomp``).

Papachristodoulou et al. 2024, "Convolutional Channel-wise Competitive Learning for the Forward-Forward
Algorithm" (AAAI), following their code (``andreaspapac/CwComp``, ``src/Layer_cnn.py``: ``goodness_factorCW``
and the ``CwC_CE`` criterion; ``src/configure.py`` for the defaults). A unit's C channels are split into K
consecutive groups of C / K, one per class; class k's goodness is the mean square of group k over its channels
and positions, and it is used directly as class k's logit in a cross-entropy::

    g_k = mean over c in group k, (i, j) of h[c, i, j] ** 2
    loss_u = CE(g, y)

No negative samples and no label in the input: the groups compete through the softmax. The logits come from the
model's goodness head with ``goodness='channel'``, ``head_proj='class_groups'`` (the parameter-free group mean of
:class:`~timm_ff.layers.goodness.ClassGroupMean`), ``goodness_reduce='mean'``, ``head_norm='none'`` and a fixed
temperature of 1, which ``--method cwcomp`` sets; this objective refuses a model whose logits are anything else.
Prediction is the argmax of those logits, so a saved model predicts as CwComp's without any learned map.

The source's hyperparameters kept here: the contiguous channel split, the mean (not sum) of squares and the plain
cross-entropy on the energies (``CwC_CE``, the default of ``configure.py``; its ``CwC`` criterion is the same
softmax cross-entropy with the logits clamped to [-50, 50]). Deviations: the backbone is the model's (CwComp's
CFSE blocks, with a grouped conv of K groups in every second layer, and its order conv -> ReLU -> max-pool ->
BatchNorm, with goodness read after the BatchNorm, are architecture, not loss); every unit trains at every step
(the source's interleaved schedule, ``ILT``, starts and stops layers by epoch); prediction fuses the units (the
source predicts from the last layer's energies: ``fusion='last'``); the ``PvN`` and ``CWG`` criteria are not
ported; optimiser and learning rate are the recipe's (the source: Adam, 0.01 per layer).
"""
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..methods import Method, register_method
from ._base import Objective, register_objective

__all__ = ['CwCompObjective', 'CWCOMP_MODEL_KWARGS']

# the model kwargs under which a unit's logits are CwComp's class-group energies
CWCOMP_MODEL_KWARGS = dict(head='goodness', goodness='channel', goodness_reduce='mean', head_proj='class_groups',
                           head_norm='none', temperature='fixed', t_init=1.0)


@register_objective('cwcomp')
class CwCompObjective(Objective):
    """Each unit minimises CE(class-group energies, y)."""
    local = True
    label_embed = False

    def __init__(self, label_smoothing: float = 0.0):
        """
        Args:
            label_smoothing: Label smoothing of every unit's cross-entropy (source: none).
        """
        self.label_smoothing = label_smoothing

    def check_model(self, model: nn.Module):
        super().check_model(model)
        cfg = getattr(model, 'ff_cfg', {})
        for key, want in CWCOMP_MODEL_KWARGS.items():
            have = cfg.get(key)
            if have != want:
                raise ConfigError(f"objective 'cwcomp' reads each class's logit as the energy of its own channel group; "
                                  f"the model has {key}={have!r}, allowed: {key}={want!r} (--method cwcomp sets it)")

    def unit_loss(self, u, num_units, out, targets):
        return F.cross_entropy(out.float(), targets, label_smoothing=self.label_smoothing)


register_method(Method(
    'cwcomp', 'cwcomp',
    paper='Papachristodoulou et al. 2024, Convolutional Channel-wise Competitive Learning for the Forward-Forward '
          'Algorithm',
    source='andreaspapac/CwComp, src/Layer_cnn.py', model_kwargs=dict(CWCOMP_MODEL_KWARGS),
    from_source='the contiguous split of each unit\'s channels into K class groups, the mean square per group as '
                'the logit, plain CE (CwC_CE); units need a multiple of K channels (CwComp\'s CIFAR-10 widths: '
                '20, 80, 240, 480)',
    published='78.1% (CwComp paper; its widths 20, 80, 240, 480)'))
