"""One small training set-up, built identically by the pipeline worker (each stage) and the one-process reference.

44 training images at batch 8 give 5 full batches and a partial one of 4 each epoch (two epochs: an epoch
boundary with the scheduler's epoch step), 20 eval images give a padded last eval batch.
"""
import timm
import torch
from timm.scheduler import create_scheduler_v2

import timm_ff
from timm_ff.data.tensor import BatchAugment, DecodedSplit, TensorLoader

BATCH, EPOCHS = 8, 2
MODELS = {'dtg': ('dtgff_cnn_s', dict(channels=(8, 8, 16, 16))), 'ff': ('ff_cnn_s', dict(channels=(8, 8, 16, 16)))}
CIFAR = dict(mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))


class PartialLastBatch(TensorLoader):
    """A training loader whose last batch is really smaller (no padding rows)."""

    def iter_from(self, start_step=0):
        for x, y in super().iter_from(start_step):
            n = int((y >= 0).sum())
            yield x[:n], y[:n]


def _split(n: int, seed: int) -> DecodedSplit:
    g = torch.Generator().manual_seed(seed)
    return DecodedSplit(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                        torch.randint(0, 10, (n,), generator=g))


def build(objective: str, device) -> dict:
    """Model, objective, optimiser, scheduler factory and loaders, the same on every call (seeded)."""
    torch.manual_seed(0)
    name, kwargs = MODELS[objective]
    model = timm.create_model(name, **kwargs)
    train = PartialLastBatch(_split(44, 1), BATCH, BatchAugment((32, 32), **CIFAR, train=True), shuffle=True,
                             drop_last=False, seed=0, device=device)
    evalset = TensorLoader(_split(20, 2), BATCH, BatchAugment((32, 32), **CIFAR, train=False), shuffle=False,
                           drop_last=False, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)

    def make_scheduler(opt):
        return create_scheduler_v2(opt, sched='cosine', num_epochs=EPOCHS, warmup_epochs=1, min_lr=1e-5,
                                   updates_per_epoch=len(train), step_on_epochs=False)[0]
    return dict(model=model, objective=timm_ff.create_objective(objective), optimizer=optimizer,
                make_scheduler=make_scheduler, train_loader=train, eval_loader=evalset, fusion_check_loader=evalset)


def capture_losses(trainer, first_unit: int = 0) -> dict:
    """Record every logged unit loss as {'step:unit': value} (the trainer must log every step)."""
    seen = {}
    acc_log = trainer.acc.log

    def log(values, step=None, **kw):
        for key, v in values.items():
            if key.startswith('train/unit'):
                seen[f"{step}:{key[len('train/unit'):-len('_loss')]}"] = v
            elif key == 'train/fusion_loss':
                seen[f'{step}:fusion'] = v
        return acc_log(values, step=step, **kw)
    trainer.acc.log = log
    if hasattr(trainer, '_log_losses'):
        original = trainer._log_losses

        def stage_log(values, n_units):
            for i, v in enumerate(values[:n_units]):
                seen[f'{trainer.state.global_step}:{first_unit + i}'] = v
            if len(values) > n_units:
                seen[f'{trainer.state.global_step}:fusion'] = values[n_units]
            return original(values, n_units)
        trainer._log_losses = stage_log
    return seen
