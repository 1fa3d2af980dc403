"""BP-DeepSup baseline: end-to-end backprop with every unit's head loss summed (no detach)."""
import torch.nn.functional as F

from ._base import Objective, register_objective


@register_objective('bp_deepsup')
class BPDeepSupObjective(Objective):
    """Sum over units of CE(unit logits, y); gradients cross unit boundaries."""
    local = False
    label_embed = False

    def __init__(self, label_smoothing: float = 0.0):
        """
        Args:
            label_smoothing: Label smoothing of every head's cross-entropy.
        """
        self.label_smoothing = label_smoothing

    def unit_loss(self, u, num_units, out, targets):
        return F.cross_entropy(out.float(), targets, label_smoothing=self.label_smoothing)
