"""torchrun worker: under FSDP every process scores and saves with process 0's buffers (BatchNorm statistics, the
dynamic temperature's history), as under DDP; without the broadcast the two processes' buffers drift apart.

Runs :class:`timm_ff.trainer.LocalTrainer` with ``fsdp=True`` (the path ``train_ff.py --fsdp`` takes) twice on a
2-process gloo group: as it is, and with the broadcast switched off (the control that shows the check can fail).
"""
import sys
import tempfile

import timm
import torch
import torch.distributed as dist
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset

import timm_ff
from timm_ff import trainer as trainer_module


def buffers_agree(model) -> bool:
    same = True
    for _, b in model.named_buffers():
        seen = [torch.empty_like(b) for _ in range(dist.get_world_size())]
        dist.all_gather(seen, b.contiguous())
        same &= all(torch.equal(seen[0], s) for s in seen[1:])
    return same


def train(accelerator, out) -> bool:
    torch.manual_seed(0)
    model = timm.create_model('dtgff_cnn_s')  # BatchNorm in every unit, dynamic temperature in every head
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g))
    trainer = trainer_module.LocalTrainer(
        accelerator=accelerator, model=model, objective=timm_ff.create_objective('dtg'),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05), scheduler=None,
        train_loader=DataLoader(data, batch_size=8, shuffle=True), eval_loader=DataLoader(data, batch_size=8),
        epochs=1, output_dir=out, local_backward='per_unit', max_train_steps=3, progress=False, fsdp=True)
    trainer.fit()
    return buffers_agree(model)


def main():
    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == 2, accelerator.distributed_type
    with tempfile.TemporaryDirectory() as tmp:
        synced = train(accelerator, f'{tmp}/synced')
        trainer_module.sync_buffers = lambda modules: None  # the control: no broadcast
        drifted = train(accelerator, f'{tmp}/unsynced')
    if accelerator.is_main_process:
        assert synced, 'FSDP processes ended with different buffers'
        assert not drifted, 'without the broadcast the buffers should differ: the check cannot fail'
        print('FSDP buffers OK', flush=True)
    accelerator.wait_for_everyone()
    return 0


if __name__ == '__main__':
    sys.exit(main())
