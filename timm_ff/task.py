"""Running the units of a model under an objective: the only place locality lives.

For a local objective every unit receives its predecessor's output *detached*, so no gradient
crosses a unit boundary. Two schedules give the same gradients:

* ``summed``: all unit losses (and the fusion loss) are added and one backward runs. Every unit's
  graph is alive at the same time, so peak activation memory is about that of BP-DeepSup.
* ``per_unit``: forward unit u, its loss, its backward, drop its graph, then unit u+1. Peak
  activation memory is one unit's.

The units (and the fusion module) are passed in as a list, so the trainer can hand over each one
wrapped on its own by Accelerate (DDP/FSDP): every call goes through the wrapper's ``forward`` and
every backward synchronises.
"""
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence

import torch
import torch.nn as nn

from .errors import unknown_choice
from .objectives import Objective

__all__ = ['LOCAL_BACKWARD_MODES', 'StepResult', 'LocalTask', 'detach_state']

LOCAL_BACKWARD_MODES = ('summed', 'per_unit')


def detach_state(state: Any) -> Any:
    """Detach every tensor in a state (tensor, dict, list or tuple)."""
    if isinstance(state, torch.Tensor):
        return state.detach()
    if isinstance(state, dict):
        return {k: detach_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(detach_state(v) for v in state)
    return state


@dataclass
class StepResult:
    """Losses of one step (Python floats, already detached)."""
    loss: float = 0.0
    unit_losses: List[float] = field(default_factory=list)
    fusion_loss: Optional[float] = None


class LocalTask:
    """Runs ``units`` in order under ``objective`` and backpropagates their losses."""

    def __init__(
            self,
            units: Sequence[nn.Module],
            objective: Objective,
            num_classes: int,
            fusion: Optional[nn.Module] = None,
            mode: str = 'summed',
    ):
        """
        Args:
            units: The model's local units in order (possibly each wrapped by Accelerate).
            objective: What each unit computes and its loss.
            num_classes: K.
            fusion: Fusion module whose weights are fitted on detached unit logits; skipped when it
                has no trainable parameters.
            mode: 'summed' or 'per_unit'.
        """
        if mode not in LOCAL_BACKWARD_MODES:
            raise unknown_choice('local backward mode', mode, LOCAL_BACKWARD_MODES)
        if mode == 'per_unit' and not objective.local:
            raise unknown_choice(f"local backward mode for the end-to-end objective {objective.name!r}",
                                 mode, ['summed'])
        self.units = list(units)
        self.objective = objective
        self.num_classes = num_classes
        self.fusion = fusion if fusion is not None and any(
            p.requires_grad for p in fusion.parameters()) else None
        self.mode = mode

    def step(self, x: torch.Tensor, targets: torch.Tensor, backward: Callable[[torch.Tensor], None],
             autocast: Optional[Callable] = None) -> StepResult:
        """One forward/backward over all units (no optimiser step).

        Args:
            x: Input batch.
            targets: Class indices (B,).
            backward: Called on each loss to backpropagate (e.g. ``accelerator.backward``).
            autocast: Context-manager factory for mixed precision (e.g. ``accelerator.autocast``).
        """
        obj = self.objective
        n = len(self.units)
        state = obj.init_state(x, targets, self.num_classes)
        result = StepResult()
        pending, logits = [], []
        for u, unit in enumerate(self.units):
            if obj.local and u > 0:
                state = detach_state(state)
            with autocast() if autocast is not None else _null():
                state, out = obj.unit_forward(unit, u, state)
                loss = obj.unit_loss(u, n, out, targets)
            z = obj.unit_logits(out)
            if z is not None and self.fusion is not None:
                logits.append(z.detach())
            if loss is None:
                continue
            result.unit_losses.append(float(loss.detach()))
            if self.mode == 'per_unit':
                backward(loss)
            else:
                pending.append(loss)
            del out, loss
        if self.fusion is not None and logits:
            fused = self.fusion(logits)
            fusion_loss = obj.fusion_loss(fused, targets)
            result.fusion_loss = float(fusion_loss.detach())
            if self.mode == 'per_unit':
                backward(fusion_loss)
            else:
                pending.append(fusion_loss)
        if pending:
            backward(torch.stack([p.float() for p in pending]).sum())
        result.loss = sum(result.unit_losses) + (result.fusion_loss or 0.0)
        return result


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
