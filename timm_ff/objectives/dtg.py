"""DTG-FF local objective: cross-entropy on each unit's tempered goodness logits, gradients local."""
import torch.nn.functional as F

from ._base import Objective, register_objective


@register_objective('dtg')
class DTGObjective(Objective):
    """Each unit minimises CE(goodness logits / T, y) on its detached input."""
    local = True
    label_embed = False

    def __init__(self, label_smoothing: float = 0.0):
        """
        Args:
            label_smoothing: Label smoothing of every unit's cross-entropy.
        """
        self.label_smoothing = label_smoothing

    def unit_loss(self, u, num_units, out, targets):
        return F.cross_entropy(out.float(), targets, label_smoothing=self.label_smoothing)
