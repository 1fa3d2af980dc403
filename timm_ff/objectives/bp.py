"""End-to-end backprop baseline on the same backbone: only the last unit's head has a loss."""
import torch.nn.functional as F

from ._base import Objective, register_objective


@register_objective('bp')
class BPObjective(Objective):
    """CE on the last unit's logits, gradients flow through every unit."""
    local = False
    label_embed = False
    find_unused_parameters = True  # the heads of units 0..N-2 get no gradient

    def __init__(self, label_smoothing: float = 0.0):
        """
        Args:
            label_smoothing: Label smoothing of the cross-entropy.
        """
        self.label_smoothing = label_smoothing

    def unit_loss(self, u, num_units, out, targets):
        if u != num_units - 1:
            return None
        return F.cross_entropy(out.float(), targets, label_smoothing=self.label_smoothing)
