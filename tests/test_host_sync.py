"""The hot loop reads from the device at most once per optimiser step, for every objective and mode.

:class:`_sync_counter.SyncCounter` counts every host synchronisation a GPU would make (device reads,
data-dependent shapes, blocking copies, CUDA ``synchronize``) on the CPU. The checks cover the step
(``LocalTrainer._train_step``), the epoch around it (loader included), evaluation and the fusion check.
"""
import pytest
import timm
import torch
from accelerate import Accelerator
from timm.scheduler import create_scheduler_v2

import timm_ff
from timm_ff.data.tensor import BatchAugment, DecodedSplit, TensorLoader
from timm_ff.trainer import LocalTrainer

from _sync_counter import SyncCounter

CASES = [('dtg', 'summed', 'dtgff_cnn_s'), ('dtg', 'per_unit', 'dtgff_cnn_s'), ('ff', 'summed', 'ff_cnn_s'),
         ('ff', 'per_unit', 'ff_cnn_s'), ('bp', 'summed', 'dtgff_cnn_s'), ('bp_deepsup', 'summed', 'dtgff_cnn_s')]
SMALL = dict(channels=(8, 8, 16, 16))
CIFAR = dict(mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))


def test_the_counter_sees_each_kind_of_sync():
    x = torch.randn(8)
    for fn, n in [(lambda: x.sum().item(), 1), (lambda: float(x[0]), 1), (lambda: bool(x.sum() > 0), 1),
                  (lambda: x.tolist(), 1), (lambda: x[x > 0], 1), (lambda: (x > 0).nonzero(), 1),
                  (lambda: x.numpy(), 1), (lambda: torch.isfinite(x).all(), 0), (lambda: x * 2 + 1, 0)]:
        with SyncCounter() as c:
            fn()
        assert c.count == n, (c.count, n, c.where)


def _loader(n: int, batch: int, train: bool):
    g = torch.Generator().manual_seed(0)
    split = DecodedSplit(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                         torch.randint(0, 10, (n,), generator=g))
    tf = BatchAugment((32, 32), **CIFAR, train=train, aug='crop_flip')
    return TensorLoader(split, batch, tf, shuffle=train, drop_last=train, seed=0)


def _trainer(tmp_path, objective, mode, model_name, log_every, accum=1, data='tensor', fusion_check=False):
    model = timm.create_model(model_name, **SMALL)
    if data == 'tensor':
        train, evalset = _loader(64, 8, True), _loader(36, 8, False)  # eval: a padded last batch
    else:
        ds = torch.utils.data.TensorDataset(torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,)))
        train = evalset = torch.utils.data.DataLoader(ds, batch_size=8)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = create_scheduler_v2(opt, sched='cosine', num_epochs=2, warmup_epochs=0,
                                updates_per_epoch=len(train) // accum)[0]
    return LocalTrainer(accelerator=Accelerator(cpu=True, gradient_accumulation_steps=accum), model=model,
                        objective=timm_ff.create_objective(objective), optimizer=opt, scheduler=sched,
                        train_loader=train, eval_loader=evalset, epochs=1, output_dir=tmp_path,
                        local_backward=mode, clip_grad=1.0, log_every=log_every, progress=True,
                        fusion_check_loader=evalset if fusion_check else None)


def _count_steps(trainer):
    """Run one epoch counting syncs per ``_train_step`` call and over the whole epoch."""
    per_step, step = [], trainer._train_step
    counter = SyncCounter()

    def counted(*a, **k):
        before = counter.count
        out = step(*a, **k)
        per_step.append((counter.count - before, trainer.acc.sync_gradients, counter.where[before:]))
        return out
    trainer._train_step = counted
    with counter:
        stats = trainer.train_epoch(0)
    return per_step, counter, stats


@pytest.mark.timeout(300)
@pytest.mark.parametrize('log_every', [1, 1000], ids=['log every step', 'no logging'])
@pytest.mark.parametrize('objective,mode,model_name', CASES, ids=[f'{o}-{m}' for o, m, _ in CASES])
def test_at_most_one_sync_per_optimiser_step(tmp_path, objective, mode, model_name, log_every):
    trainer = _trainer(tmp_path, objective, mode, model_name, log_every)
    per_step, counter, stats = _count_steps(trainer)
    assert len(per_step) == 8
    for n, _, where in per_step:
        assert n <= 1, where
    # the whole epoch, loader batches and augmentation included: one per step, one for the epoch's last loss
    assert counter.count <= len(per_step) + 1, counter.where
    assert stats['train_loss'] == stats['train_loss']  # the epoch's loss was read (finite)


@pytest.mark.timeout(300)
@pytest.mark.parametrize('mode', ['summed', 'per_unit'])
def test_gradient_accumulation_reads_only_at_the_optimiser_step(tmp_path, mode):
    trainer = _trainer(tmp_path, 'dtg', mode, 'dtgff_cnn_s', log_every=1, accum=4)
    per_step, _, _ = _count_steps(trainer)
    for n, boundary, where in per_step:
        assert n <= (1 if boundary else 0), where
    assert sum(b for _, b, _ in per_step) == 2


@pytest.mark.timeout(300)
def test_dataloader_path_also_one_sync_per_step(tmp_path):
    trainer = _trainer(tmp_path, 'dtg', 'per_unit', 'dtgff_cnn_s', log_every=1000, data='loader')
    per_step, counter, _ = _count_steps(trainer)
    assert all(n <= 1 for n, _, _ in per_step) and counter.count <= len(per_step) + 1, counter.where


@pytest.mark.timeout(300)
@pytest.mark.parametrize('objective,model_name', [('dtg', 'dtgff_cnn_s'), ('ff', 'ff_cnn_s')])
def test_evaluation_and_fusion_check_read_once_not_per_batch(tmp_path, objective, model_name):
    trainer = _trainer(tmp_path, objective, 'summed', model_name, log_every=1000, fusion_check=True)
    with SyncCounter() as c:
        metrics = trainer.evaluate()
    assert c.count <= 1, c.where  # 5 batches, one read at the end
    assert metrics['eval_images'] == 36 and len(metrics['unit_accuracy']) == 4
    with SyncCounter() as c:
        info = trainer.check_fusion()
    assert info['images'] == 36
    assert c.count <= 1, c.where  # the scores of every candidate in one read


@pytest.mark.timeout(120)
def test_a_non_finite_loss_is_still_caught_with_one_read(tmp_path):
    trainer = _trainer(tmp_path, 'dtg', 'per_unit', 'dtgff_cnn_s', log_every=1000)
    trainer.max_train_steps = 2
    trainer.train_epoch(0)
    trainer.max_train_steps = 0
    with torch.no_grad():
        trainer.model.units[3].body[-1].conv.weight.fill_(float('inf'))
    before = {k: p.detach().clone() for k, p in trainer.model.named_parameters()}
    with pytest.raises(timm_ff.TrainingError, match=r'loss of unit 3 became nan at epoch 0, step 3 '
                                                     r'\(last finite loss: \d'):
        trainer.train_epoch(0)
    assert all(torch.equal(before[k].nan_to_num(), p.detach().nan_to_num()) for k, p in trainer.model.named_parameters())
