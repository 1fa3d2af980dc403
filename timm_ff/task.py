"""Running the units of a model under an objective: the only place locality lives.

For a local objective every unit receives its predecessor's output *detached*, so no gradient
crosses a unit boundary (an objective says where it detaches: :meth:`Objective.detach_input`, e.g.
Trifecta's overlapping updates, which let a unit's loss reach the unit before it). Two schedules give
the same gradients:

* ``summed``: all unit losses (and the fusion loss) are added and one backward runs. Every unit's
  graph is alive at the same time, so peak activation memory is about that of BP-DeepSup.
* ``per_unit``: forward unit u, its loss, its backward, drop its graph, then unit u+1. Peak
  activation memory is one unit's.

The units (and the fusion module) are passed in as a list, so the trainer can hand over each one
wrapped on its own by Accelerate (DDP/FSDP): every call goes through the wrapper's ``forward`` and
every backward synchronises.

Nothing here reads a value back to the host: the losses stay device tensors in :class:`StepResult`,
so the host can queue unit u+1 while the device still runs unit u. Whoever reads them (the trainer,
once per optimiser step) decides when to pay for that synchronisation.
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .errors import ConfigError, unknown_choice
from .objectives import Objective

__all__ = ['LOCAL_BACKWARD_MODES', 'StepResult', 'HostLosses', 'LocalTask', 'detach_state', 'check_micro_batches',
           'check_micro_batch_size', 'split_state', 'cat_states', 'map_state']

LOCAL_BACKWARD_MODES = ('summed', 'per_unit')


def map_state(fn: Callable[[torch.Tensor], torch.Tensor], state: Any) -> Any:
    """Apply ``fn`` to every tensor in a state (tensor, dict, list or tuple), keeping its structure."""
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, dict):
        return {k: map_state(fn, v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(map_state(fn, v) for v in state)
    return state


def detach_state(state: Any) -> Any:
    """Detach every tensor in a state (tensor, dict, list or tuple)."""
    return map_state(torch.Tensor.detach, state)


@dataclass
class StepResult:
    """Losses of one step, detached and still on the device (reading them synchronises the host).

    Attributes:
        unit_losses: One 0-dim fp32 tensor per unit that has a loss, in unit order.
        fusion_loss: The fusion weights' loss (0-dim fp32), or None when the fusion is not trained.
    """
    unit_losses: List[torch.Tensor] = field(default_factory=list)
    fusion_loss: Optional[torch.Tensor] = None

    def losses(self) -> torch.Tensor:
        """All losses as one (L,) fp32 device tensor: the units' in order, then the fusion's."""
        parts = self.unit_losses + ([self.fusion_loss] if self.fusion_loss is not None else [])
        return torch.stack(parts) if parts else torch.zeros(0)

    @property
    def loss(self) -> torch.Tensor:
        """The step's total loss (0-dim device tensor)."""
        return self.losses().sum()

    def read(self) -> 'HostLosses':
        """Copy every loss to the host in one transfer (one synchronisation)."""
        values = self.losses().tolist()
        n = len(self.unit_losses)
        return HostLosses(unit_losses=values[:n], fusion_loss=values[n] if len(values) > n else None)


@dataclass
class HostLosses:
    """A :class:`StepResult` read back to the host (Python floats)."""
    unit_losses: List[float]
    fusion_loss: Optional[float] = None

    @property
    def loss(self) -> float:
        return sum(self.unit_losses) + (self.fusion_loss or 0.0)


class LocalTask:
    """Runs ``units`` in order under ``objective`` and backpropagates their losses."""

    def __init__(
            self,
            units: Sequence[nn.Module],
            objective: Objective,
            num_classes: int,
            fusion: Optional[nn.Module] = None,
            mode: str = 'summed',
            first_unit: int = 0,
            num_units: Optional[int] = None,
            micro_batches: Optional[Dict[int, int]] = None,
            collect_logits: Optional[bool] = None,
    ):
        """
        Args:
            units: The model's local units in order (possibly each wrapped by Accelerate).
            objective: What each unit computes and its loss.
            num_classes: K.
            fusion: Fusion module whose weights are fitted on detached unit logits; skipped when it
                has no trainable parameters.
            mode: 'summed' or 'per_unit'.
            first_unit: Index of ``units[0]`` in the model (a pipeline stage runs a slice of the units).
            num_units: Units in the whole model (default: ``len(units)``).
            micro_batches: ``{unit index: m}``: that unit processes each batch in m equal chunks, one
                forward/backward per chunk, its gradients accumulated (each chunk's loss weighted by its
                share of the batch), and hands on the concatenated output. ``per_unit`` mode only.
            collect_logits: Return every unit's detached logits (default: when ``fusion`` is trained).
        """
        if mode not in LOCAL_BACKWARD_MODES:
            raise unknown_choice('local backward mode', mode, LOCAL_BACKWARD_MODES)
        if mode == 'per_unit' and not objective.per_unit_backward:
            raise unknown_choice(f"local backward mode for the end-to-end objective {objective.name!r}",
                                 mode, ['summed'])
        self.units = list(units)
        self.objective = objective
        self.num_classes = num_classes
        self.fusion = fusion if fusion is not None and any(
            p.requires_grad for p in fusion.parameters()) else None
        self.mode = mode
        self.first = first_unit
        self.total = len(self.units) + first_unit if num_units is None else num_units
        self.micro_batches = check_micro_batches(micro_batches or {}, self.total, mode)
        if any(m > 1 for m in self.micro_batches.values()) and not objective.local:
            raise ConfigError(f'--unit-micro-batches backpropagates each chunk of a unit before the next unit runs, but '
                              f'objective {objective.name!r} with {objective.nonlocal_setting} is not layer-local; '
                              f'allowed: {objective.name!r} without it, or no --unit-micro-batches')
        self.collect_logits = self.fusion is not None if collect_logits is None else collect_logits

    def step(self, x: torch.Tensor, targets: torch.Tensor, backward: Callable[[torch.Tensor], None],
             autocast: Optional[Callable] = None) -> StepResult:
        """One forward/backward over all units (no optimiser step).

        Args:
            x: Input batch.
            targets: Class indices (B,).
            backward: Called on each loss to backpropagate (e.g. ``accelerator.backward``).
            autocast: Context-manager factory for mixed precision (e.g. ``accelerator.autocast``).
        """
        state = self.objective.init_state(x, targets, self.num_classes)
        return self.run(state, targets, backward, autocast)[1]

    def run(self, state: Any, targets: torch.Tensor, backward: Callable[[torch.Tensor], None],
            autocast: Optional[Callable] = None, logits: Sequence[torch.Tensor] = ()
            ) -> Tuple[Any, StepResult, List[torch.Tensor]]:
        """Forward/backward of this task's units on ``state``, the input of unit ``first_unit``.

        Args:
            state: What unit ``first_unit`` receives (from ``objective.init_state`` for unit 0).
            targets: Class indices (B,).
            backward: Called on each loss to backpropagate.
            autocast: Context-manager factory for mixed precision.
            logits: Detached logits of the units before ``first_unit`` (the fusion needs every unit's).

        Returns:
            (the last unit's output state, the losses, the detached logits of every unit so far when
            collected, else ``[]``).
        """
        obj = self.objective
        result = StepResult()
        pending, logits = [], list(logits)
        for i, unit in enumerate(self.units):
            u = self.first + i
            if u > 0 and obj.detach_input(u):
                state = detach_state(state)
            if self.micro_batches.get(u, 1) > 1:
                state, loss, z = self._micro_unit(unit, u, state, targets, backward, autocast)
            else:
                with autocast() if autocast is not None else _null():
                    state, out = obj.unit_forward(unit, u, state)
                    loss = obj.unit_loss(u, self.total, out, targets)
                z = obj.unit_logits(out)
                del out
                if loss is not None and loss.requires_grad and self.mode == 'per_unit':
                    backward(loss)
                elif loss is not None and loss.requires_grad:
                    pending.append(loss)
            if z is not None and self.collect_logits:
                logits.append(z.detach())
            if loss is not None:
                result.unit_losses.append(loss.detach().float())
            del loss, z
        if self.fusion is not None and logits:
            fused = self.fusion(logits)
            fusion_loss = obj.fusion_loss(fused, targets)
            result.fusion_loss = fusion_loss.detach().float()
            if self.mode == 'per_unit':
                backward(fusion_loss)
            else:
                pending.append(fusion_loss)
        if pending:
            backward(torch.stack([p.float() for p in pending]).sum())
        return state, result, logits if self.collect_logits else []

    def _micro_unit(self, unit, u, state, targets, backward, autocast):
        """Unit ``u`` over its batch in equal chunks: forward, loss and backward per chunk."""
        m = self.micro_batches[u]
        states, losses, zs = [], [], []
        for part, t in zip(split_state(state, m), targets.chunk(m)):
            with autocast() if autocast is not None else _null():
                out_state, out = self.objective.unit_forward(unit, u, part)
                loss = self.objective.unit_loss(u, self.total, out, t)
            z = self.objective.unit_logits(out)
            del out
            if loss is not None:
                loss = loss * (t.shape[0] / targets.shape[0])  # mean-reduced losses: the chunks sum to the batch's
                if loss.requires_grad:
                    backward(loss)
                losses.append(loss.detach().float())
            states.append(detach_state(out_state))
            zs.append(None if z is None else z.detach())
        z = None if zs[0] is None else torch.cat(zs)
        return cat_states(states), (torch.stack(losses).sum() if losses else None), z


def check_micro_batches(micro_batches: Dict, num_units: int, mode: str) -> Dict[int, int]:
    """Validate ``{unit index: chunks}`` (keys may be strings, as JSON gives them)."""
    out = {}
    for key, m in micro_batches.items():
        try:
            u = int(key)
        except (TypeError, ValueError):
            raise ConfigError(f'--unit-micro-batches: unit index {key!r} is not an integer; '
                              f'allowed: 0..{num_units - 1}') from None
        if not 0 <= u < num_units:
            raise ConfigError(f'--unit-micro-batches: unit index {u} is out of range; this model has units '
                              f'0..{num_units - 1}')
        if not isinstance(m, int) or isinstance(m, bool) or m < 1:
            raise ConfigError(f'--unit-micro-batches: unit {u} has {m!r} chunks; it must be a positive integer')
        out[u] = m
    if any(m > 1 for m in out.values()) and mode != 'per_unit':
        raise ConfigError("--unit-micro-batches needs --local-backward per_unit (in 'summed' mode every unit's "
                          'graph is alive at once, so chunking one unit saves nothing)')
    return out


def check_micro_batch_size(micro_batches: Dict[int, int], batch_size: int) -> None:
    """Each chunk count must divide the batch: chunks of equal size give the whole batch's gradient."""
    for u, m in micro_batches.items():
        if batch_size % m:
            raise ConfigError(f'--unit-micro-batches: unit {u} splits each batch into {m} chunks, which does not '
                              f'divide the batch size {batch_size}; pick a divisor of {batch_size}')


def split_state(state: Any, m: int) -> List[Any]:
    """Split every tensor of a state along the batch dimension into ``m`` chunks."""
    if isinstance(state, torch.Tensor):
        return list(state.chunk(m))
    if isinstance(state, dict):
        parts = {k: split_state(v, m) for k, v in state.items()}
        return [{k: v[i] for k, v in parts.items()} for i in range(m)]
    if isinstance(state, (list, tuple)):
        parts = [split_state(v, m) for v in state]
        return [type(state)(v[i] for v in parts) for i in range(m)]
    return [state] * m


def cat_states(states: List[Any]) -> Any:
    """Inverse of :func:`split_state`."""
    first = states[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(states)
    if isinstance(first, dict):
        return {k: cat_states([s[k] for s in states]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(cat_states(list(v)) for v in zip(*states))
    return first


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
