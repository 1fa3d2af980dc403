"""torchrun worker: FSDP2 ``fully_shard`` on every local unit (CPU, gloo) trains like the unsharded model.

Each rank holds half of every unit's parameters and sees half of the global batch. After a few
per-unit steps (one backward per unit, as ``--local-backward per_unit``) the gathered full state
dict must match a single-process reference trained on the whole batch.
"""
import copy
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import timm
import timm_ff
from timm_ff.task import LocalTask

STEPS, BATCH = 3, 16


def train(model, units, x, y, steps):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    task = LocalTask(units, timm_ff.create_objective('dtg'), model.num_classes, fusion=model.fusion, mode='per_unit')
    for s in range(steps):
        task.step(x[s], y[s], lambda loss: loss.backward())
        opt.step()
        opt.zero_grad()


def main():
    dist.init_process_group('gloo')
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = timm.create_model('dtgff_cnn_s', norm='none', temperature='fixed')
    reference = copy.deepcopy(model)
    init = {k: v.clone() for k, v in reference.state_dict().items()}
    x = torch.randn(STEPS, BATCH, 3, 32, 32)
    y = torch.randint(0, 10, (STEPS, BATCH))
    mesh = init_device_mesh('cpu', (world,))
    for unit in model.local_units():
        fully_shard(unit, mesh=mesh)
    fully_shard(model.fusion, mesh=mesh)
    fully_shard(model, mesh=mesh)
    shard = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    # FSDP averages gradients over ranks, so each rank's mean loss on its half gives the full-batch gradient
    train(model, model.local_units(), x[:, shard], y[:, shard], STEPS)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        train(reference, reference.local_units(), x, y, STEPS)
        ref = reference.state_dict()
        worst = max((full[k].float() - ref[k].float()).abs().max().item() for k in ref)
        moved = max((ref[k].float() - init[k].float()).abs().max().item() for k in ref)
        assert moved > 1e-4, 'the reference did not train'
        assert worst < 1e-5, f'FSDP2 per-unit training diverged from the reference: max diff {worst}'
        print(f'FSDP2 per-unit OK (world {world}, max diff {worst:.2e})', flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == '__main__':
    main()
