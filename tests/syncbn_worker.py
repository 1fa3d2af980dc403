"""torchrun worker (2 CPU processes, gloo): what --sync-bn synchronises under DDP, and what it does not.

1. ``SyncBatchNorm`` on half a batch per rank gives the outputs, input and parameter gradients and
   running statistics of BatchNorm over the whole batch.
2. A DTG-FF model trained through Accelerate (each unit prepared as its own DDP module, as the trainer
   does) on different data per rank: BatchNorm running statistics agree across ranks with
   ``convert_sync_batchnorm`` and differ without it.
3. The dynamic-temperature history: DDP broadcasts rank 0's buffers at the start of every training
   forward, so each unit's head sees the same ``t_history`` on every rank, but each rank then updates
   it from its own batch, so after the last step the copies differ.
"""
import copy

import torch
import torch.distributed as dist
from accelerate import Accelerator

import timm
import timm_ff  # noqa: F401
from timm_ff.layers import DynamicTemperature, SyncBatchNorm, convert_sync_batchnorm
from timm_ff.task import LocalTask

STEPS, BATCH = 3, 8


def gather(t: torch.Tensor) -> list:
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return out


def check_exact(rank: int):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2 * BATCH, 6, 5, 5, generator=gen) * 3 + 1
    w = torch.randn(2 * BATCH, 6, 5, 5, generator=gen)
    ref = torch.nn.BatchNorm2d(6)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5, generator=gen)  # the same values on every rank
        ref.bias.uniform_(-0.5, 0.5, generator=gen)
    sync = convert_sync_batchnorm(copy.deepcopy(ref), torch.device('cpu'))
    assert isinstance(sync, SyncBatchNorm)
    xr = x.clone().requires_grad_()
    (ref(xr) * w).sum().backward()
    half = slice(rank * BATCH, (rank + 1) * BATCH)
    xs = x[half].clone().requires_grad_()
    ys = sync(xs)
    (ys * w[half]).sum().backward()
    torch.testing.assert_close(ys.detach(), torch.nn.functional.batch_norm(
        x, None, None, ref.weight, ref.bias, True, 0.0, ref.eps)[half].detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xs.grad, xr.grad[half], rtol=1e-4, atol=1e-5)
    for p_sync, p_ref in ((sync.weight, ref.weight), (sync.bias, ref.bias)):
        g = p_sync.grad.clone()
        dist.all_reduce(g)  # each rank holds its half's share; DDP would reduce them the same way
        torch.testing.assert_close(g, p_ref.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sync.running_mean, ref.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sync.running_var, ref.running_var, rtol=1e-5, atol=1e-6)


def train_ddp(accelerator: Accelerator, sync_bn: bool):
    torch.manual_seed(0)  # same init on every rank
    model = timm.create_model('dtgff_cnn_s', num_classes=4)
    for m in model.modules():
        if isinstance(m, DynamicTemperature):  # at init T equals t_init exactly; move it so the history moves
            torch.nn.init.normal_(m.net[2].weight)
    if sync_bn:
        model = convert_sync_batchnorm(model, accelerator.device)
    units = accelerator.prepare(*model.local_units())
    seen = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append(mod.t_history.detach().clone()))
             for m in model.modules() if isinstance(m, DynamicTemperature)]
    task = LocalTask(list(units), timm_ff.create_objective('dtg'), model.num_classes, mode='per_unit')
    gen = torch.Generator().manual_seed(100 + accelerator.process_index)  # different data on every rank
    for _ in range(STEPS):
        x = torch.randn(BATCH, 3, 16, 16, generator=gen) * (1 + accelerator.process_index)
        y = torch.randint(0, 4, (BATCH,), generator=gen)
        task.step(x, y, accelerator.backward)
    for h in hooks:
        h.remove()
    bn = {n: b for n, b in model.named_buffers() if n.endswith(('running_mean', 'running_var'))}
    t_final = torch.stack([b for n, b in model.named_buffers() if n.endswith('t_history')])
    return bn, torch.stack(seen), t_final


def main():
    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == 2, accelerator.num_processes
    rank = accelerator.process_index
    check_exact(rank)

    for sync_bn in (False, True):
        bn, t_seen, t_final = train_ddp(accelerator, sync_bn)
        assert bn
        diffs = [(a - b).abs().max().item() for a, b in (gather(v) for v in bn.values())]
        if sync_bn:
            assert max(diffs) < 1e-5, f'--sync-bn: BN running stats differ across ranks by {max(diffs)}'
        else:
            assert min(diffs) > 1e-4, f'without --sync-bn every BN layer should differ across ranks: {diffs}'
        seen0, seen1 = gather(t_seen)
        assert torch.equal(seen0, seen1), 't_history differs at the start of a DDP forward'
        final0, final1 = gather(t_final)
        assert (final0 - final1).abs().min() > 0, 't_history should differ after each rank updates it locally'
    accelerator.wait_for_everyone()
    if rank == 0:
        print('SyncBN worker OK', flush=True)
    accelerator.end_training()  # tears down the process group (gloo aborts at exit otherwise)


if __name__ == '__main__':
    main()
