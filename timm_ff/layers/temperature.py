"""Dynamic temperature for goodness logits (the 'DT' of DTG-FF).

Our design (the paper's body is not public): a unit's logits are divided by a temperature T read
from two feature-clarity statistics of its goodness, computed over the batch:

* ``cv``: coefficient of variation of each goodness feature across the batch, averaged over
  features (how much the unit's energies separate samples);
* ``snr``: per-sample margin of the top logit over the mean logit, in units of the logit std,
  averaged over the batch (how decisive the unit already is).

A two-layer network maps ``log(stat)`` to T, squashed into ``[t_min, t_max]``. The value used in a
training step is an exponential moving average over steps, kept in the ``t_history`` buffer, so it
is saved in checkpoints, synchronised like any buffer under DDP, and used unchanged in eval (eval
never depends on the batch). The ablation is :class:`FixedTemperature`.
"""
import torch
import torch.nn as nn

__all__ = ['clarity_stats', 'DynamicTemperature', 'FixedTemperature', 'TEMPERATURES', 'create_temperature']

_EPS = 1e-6  # guards log/ratio of statistics of an all-zero or single-sample batch


def clarity_stats(goodness: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Feature-clarity statistics ``[log cv, log snr]`` of one batch (no gradient).

    Args:
        goodness: (B, G) goodness vectors.
        logits: (B, K) untempered logits.

    Returns:
        (2,) tensor; finite for any batch size, including 1.
    """
    g = goodness.detach().float()
    z = logits.detach().float()
    cv = (g.std(0, unbiased=False) / (g.mean(0).abs() + _EPS)).mean()
    margin = z.max(1).values - z.mean(1)
    snr = (margin / (z.std(1, unbiased=False) + _EPS)).mean()
    return torch.stack([cv, snr]).clamp_min(_EPS).log()


class DynamicTemperature(nn.Module):
    """Temperature from clarity statistics, bounded and smoothed by a history buffer."""

    def __init__(self, t_min: float = 0.5, t_max: float = 4.0, t_init: float = 1.0, momentum: float = 0.9,
                 hidden: int = 8):
        """
        Args:
            t_min: Lower bound of T.
            t_max: Upper bound of T.
            t_init: Value of the history before the first training step (and the net's start value).
            momentum: EMA momentum of the history; 0 uses each batch's T as is.
            hidden: Width of the statistics -> T network.
        """
        super().__init__()
        if not 0 < t_min <= t_init <= t_max:
            raise ValueError(f'need 0 < t_min <= t_init <= t_max, got {t_min}, {t_init}, {t_max}')
        if not 0 <= momentum < 1:
            raise ValueError(f'temperature momentum must be in [0, 1), got {momentum}')
        self.t_min, self.t_max, self.momentum = t_min, t_max, momentum
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[2].weight)
        # start the squashed output at t_init: sigmoid(b) = (t_init - t_min) / (t_max - t_min)
        frac = (t_init - t_min) / (t_max - t_min) if t_max > t_min else 0.5
        frac = min(max(frac, 1e-3), 1 - 1e-3)
        nn.init.constant_(self.net[2].bias, float(torch.logit(torch.tensor(frac))))
        self.register_buffer('t_history', torch.tensor(float(t_init)))

    def raw(self, goodness: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """This batch's bounded temperature (scalar, differentiable w.r.t. the net)."""
        s = clarity_stats(goodness, logits).to(self.net[0].weight.dtype)
        return self.t_min + (self.t_max - self.t_min) * torch.sigmoid(self.net(s)).squeeze()

    def forward(self, goodness: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """T for this batch: EMA-smoothed while training (history updated), the history in eval."""
        if not self.training:
            return self.t_history.float()
        t = self.momentum * self.t_history.float() + (1 - self.momentum) * self.raw(goodness, logits)
        with torch.no_grad():
            self.t_history.copy_(t.detach())
        return t.float()


class FixedTemperature(nn.Module):
    """Constant temperature: the 'no dynamic temperature' ablation."""

    def __init__(self, t_init: float = 1.0, **_ignored):
        super().__init__()
        if t_init <= 0:
            raise ValueError(f'temperature must be > 0, got {t_init}')
        self.register_buffer('t_history', torch.tensor(float(t_init)))

    def forward(self, goodness: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return self.t_history.float()


TEMPERATURES = {'dynamic': DynamicTemperature, 'fixed': FixedTemperature}


def create_temperature(kind: str, **kwargs) -> nn.Module:
    """Build a temperature module by name ('dynamic' or 'fixed')."""
    from ..errors import unknown_choice
    if kind not in TEMPERATURES:
        raise unknown_choice('temperature', kind, TEMPERATURES)
    return TEMPERATURES[kind](**kwargs)
