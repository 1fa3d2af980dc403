"""Which units each backward of a training step reaches: the locality checks of the objective and head tests."""
from timm_ff.task import LocalTask


def unit_of(name: str):
    """The unit index of a parameter name ('units.3.body...' -> 3), else its top-level module ('fusion')."""
    return int(name.split('.')[1]) if name.startswith('units.') else name.split('.')[0]


def touched_per_backward(model, obj, x, y, num_classes: int, mode: str = 'per_unit') -> list:
    """Run one step; for each backward call, the units (or 'fusion') whose parameter gradients it changed."""
    import torch
    touched = []

    def backward(loss):
        before = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
        loss.backward()
        touched.append({unit_of(n) for n, p in model.named_parameters()
                        if p.grad is not None and (before[n] is None or not torch.equal(before[n], p.grad))})

    LocalTask(model.local_units(), obj, num_classes, fusion=model.fusion, mode=mode).step(x, y, backward=backward)
    return touched
