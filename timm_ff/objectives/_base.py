"""The objective interface and its name registry.

An objective says what one unit computes on its input state and what that unit's loss is. It
knows nothing about detaching, backward passes or optimisers: :mod:`timm_ff.task` runs the units
and decides where gradients stop (``local``), the trainer does the rest.
"""
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, unknown_choice

__all__ = ['Objective', 'register_objective', 'create_objective', 'list_objectives']

_OBJECTIVES: Dict[str, Callable[..., 'Objective']] = {}


class Objective:
    """Base class: one unit's forward on the running state, and its loss.

    Attributes:
        name: Registry name.
        local: True if gradients must stop at unit boundaries (FF family); False for end-to-end BP.
        label_embed: True if the objective needs a classic-FF model (label in the input), False if
            it needs per-unit class heads, None if either works.
        find_unused_parameters: Whether some unit parameters get no gradient in a step (DDP must know).
        nonlocal_setting: For an objective that is layer-local but for one of its settings, that setting (e.g.
            ``ff``'s ``overlap=true``), so that errors about locality can name it; '' otherwise.
        stateful: Whether the objective keeps state across steps that a resumed run needs
            (``state_dict`` / ``load_state_dict``; the trainer saves it with every checkpoint).
    """
    name = ''
    local = True
    label_embed: Optional[bool] = False
    find_unused_parameters = False
    nonlocal_setting = ''
    stateful = False

    def check_model(self, model: nn.Module):
        """Raise a clear error if ``model`` cannot be trained with this objective."""
        want = self.label_embed
        have = bool(getattr(model, 'label_embed_enabled', False))
        if want is not None and want != have:
            kind = 'a classic FF model (label_embed=True, e.g. ff_resnet18)' if want else \
                'a model with class heads (label_embed=False, e.g. dtgff_resnet18)'
            raise ConfigError(f"objective {self.name!r} needs {kind}; pass --model-kwargs "
                              f"'{{\"label_embed\": {str(want).lower()}}}' or pick a matching model")
        if getattr(model, 'num_classes', 0) <= 0:
            raise ConfigError(f'objective {self.name!r} needs a model with num_classes > 0')

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Add what training (not inference) needs to ``model``, before the optimiser is built (a no-op here)."""
        return model

    def init_state(self, x: torch.Tensor, targets: torch.Tensor, num_classes: int) -> Any:
        """The state unit 0 receives (the input batch, or a positive/negative pair)."""
        return x

    def unit_forward(self, unit: nn.Module, u: int, state: Any) -> Tuple[Any, Any]:
        """Run ``unit`` (index ``u``) on ``state``; return (next state, what the loss needs)."""
        return unit(state, with_logits=True)

    def unit_loss(self, u: int, num_units: int, out: Any, targets: torch.Tensor) -> Optional[torch.Tensor]:
        """Loss of unit ``u`` (None if the unit has no loss of its own).

        A loss returned detached is recorded (and logged) but not backpropagated in this step.
        """
        raise NotImplementedError

    def detach_input(self, u: int) -> bool:
        """Whether unit ``u`` (> 0) receives its predecessor's output detached in this step.

        Every unit does for a layer-local objective, none for an end-to-end one.
        """
        return self.local

    @property
    def per_unit_backward(self) -> bool:
        """Whether each unit's loss can be backpropagated as soon as it is computed (``per_unit`` mode): no loss
        may reach a unit whose graph an earlier loss of the step has already been backpropagated through."""
        return self.local

    def unit_logits(self, out: Any) -> Optional[torch.Tensor]:
        """(B, K) logits of the unit for fusion training, or None if the objective has none per pass."""
        return out

    def fusion_loss(self, fused: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Loss that fits learned fusion weights on detached per-unit logits."""
        return F.cross_entropy(fused, targets)


def register_objective(name: str):
    """Class decorator adding an objective to the registry under ``name``."""
    def wrap(cls):
        cls.name = name
        _OBJECTIVES[name] = cls
        return cls
    return wrap


def list_objectives() -> List[str]:
    """Names of the registered objectives."""
    return sorted(_OBJECTIVES)


def create_objective(name: str, **kwargs) -> Objective:
    """Build an objective by name; unknown names and kwargs name the bad value and the allowed ones.

    ``recon=[a, b]`` adds InfoPro's reconstruction term to a head-based objective
    (:class:`~timm_ff.objectives.recon.ReconObjective`).
    """
    if name not in _OBJECTIVES:
        raise unknown_choice('objective', name, _OBJECTIVES)
    cls = _OBJECTIVES[name]
    import inspect
    recon = kwargs.pop('recon', None)
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != 'self']
    for k in kwargs:
        if k not in allowed:
            raise unknown_choice(f'kwarg for objective {name!r}', k, (allowed or []) + ['recon'])
    objective = cls(**kwargs)
    if recon is None:
        return objective
    if objective.label_embed is not False:
        raise ConfigError(f"recon (InfoPro's reconstruction term) is for objectives with class heads; {name!r} is not "
                          'one: use it with dtg, bp_deepsup or bp')
    from .recon import ReconObjective
    return ReconObjective(objective, recon)
