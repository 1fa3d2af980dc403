"""Synchronised BatchNorm for data-parallel training, including CPU processes (gloo).

``torch.nn.SyncBatchNorm`` computes batch statistics over every process, but only on GPU-like devices:
on CPU its forward raises "SyncBatchNorm expected input tensor to be on GPU ...", and DDP refuses a CPU
module that holds one. :func:`convert_sync_batchnorm` therefore uses torch's class on those devices
and, elsewhere, :class:`SyncBatchNorm` here: two differentiable all-reduces (sum, then sum of squared
deviations) give the statistics, gradients and running-stat updates of BatchNorm over the
concatenated global batch.
"""
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ['SyncBatchNorm', 'convert_sync_batchnorm']

_TORCH_SYNC_DEVICES = ('cuda', 'hpu', 'xpu')


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the backward sums the gradients (every process's loss depends on the sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def _torch_sync_devices() -> tuple:
    return _TORCH_SYNC_DEVICES + (torch._C._get_privateuse1_backend_name(),)


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch of all processes, for devices ``torch.nn.SyncBatchNorm`` rejects (CPU)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group: Optional[object] = None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, x: torch.Tensor):
        if x.ndim < 2:
            raise ValueError(f'expected at least 2D input (got {x.ndim}D input)')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        group = self.process_group or (dist.group.WORLD if dist.is_available() and dist.is_initialized() else None)
        if not self.training or group is None or dist.get_world_size(group) < 2:
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0] + list(range(2, x.ndim))
        shape = [1, -1] + [1] * (x.ndim - 2)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64, device=x.device)
        dist.all_reduce(count, group=group)
        n = count.item()
        xf = x.float()
        mean = _AllReduceSum.apply(xf.sum(dims), group) / n
        var = _AllReduceSum.apply((xf - mean.reshape(shape)).square().sum(dims), group) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                unbiased = var.detach() * n / max(n - 1, 1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        y = (xf - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device, process_group: Optional[object] = None) -> nn.Module:
    """Replace every BatchNorm layer in ``module`` by a synchronised one (parameters and buffers kept).

    On GPU-like devices this is ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` (timm's train.py);
    elsewhere (CPU) the layers become :class:`SyncBatchNorm`. Either way the returned module shares
    the original parameters, so an optimiser built before the conversion still updates them.

    Args:
        module: Model (or layer) to convert.
        device: Device the model trains on.
        process_group: Group to synchronise over (default: all processes).
    """
    if torch.device(device).type in _torch_sync_devices():
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    return _convert(module, process_group)


def _convert(module: nn.Module, process_group: Optional[object]) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, process_group)
        if module.affine:
            out.weight = module.weight
            out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert(child, process_group))
    return out
