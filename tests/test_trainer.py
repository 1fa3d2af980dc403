"""LocalTrainer pieces: per-unit gradient clipping, gradient accumulation, bf16 autocast."""
import pytest
import timm
import torch
from accelerate import Accelerator

import timm_ff
from timm_ff.trainer import LocalTrainer

from _cli import assert_ok, max_abs_diff, run_train, weights


def _trainer(tmp_path, model, clip):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 3, 32, 32),
                                                                        torch.zeros(4, dtype=torch.long)), batch_size=2)
    return LocalTrainer(accelerator=Accelerator(cpu=True), model=model, objective=timm_ff.create_objective('dtg'),
                        optimizer=opt, scheduler=None, train_loader=loader, eval_loader=loader, epochs=1,
                        output_dir=tmp_path, clip_grad=clip, progress=False)


def test_gradient_clipping_is_per_unit_never_a_global_norm(tmp_path):
    model = timm.create_model('dtgff_cnn_s')
    trainer = _trainer(tmp_path, model, clip=1.0)
    units = model.local_units()
    for u, unit in enumerate(units):
        for p in unit.parameters():
            p.grad = torch.full_like(p, 10.0 if u == 0 else 1e-4)  # unit 0 huge, the rest tiny
    small_before = [p.grad.clone() for p in units[1].parameters()]
    trainer._clip()
    norm0 = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in units[0].parameters()]))
    assert norm0 == pytest.approx(1.0, rel=1e-4)
    # a global norm would have scaled these by the same tiny factor as unit 0
    for before, p in zip(small_before, units[1].parameters()):
        assert torch.equal(before, p.grad)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    common = ('--model', 'dtgff_cnn_s', '--model-kwargs', '{"norm": "none", "temperature": "fixed"}',
              '--epochs', '1', '--max-train-steps', '3', '--sched', 'none', '--opt', 'sgd', '--lr', '0.05',
              '--weight-decay', '0', '--local-backward', 'per_unit')
    assert_ok(run_train(*common, '--batch-size', '32', '--output', tmp_path / 'big'))
    assert_ok(run_train(*common, '--batch-size', '16', '--grad-accum-steps', '2', '--output', tmp_path / 'acc'))
    assert max_abs_diff(weights(tmp_path / 'big'), weights(tmp_path / 'acc')) < 1e-5


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bf16_autocast_run_on_cpu(tmp_path):
    out = tmp_path / 'bf16'
    proc = run_train('--model', 'dtgff_cnn_s', '--epochs', '1', '--max-train-steps', '2', '--mixed-precision', 'bf16',
                     '--output', out)
    assert_ok(proc)
    w = weights(out)
    assert all(torch.isfinite(v).all() for v in w.values())
    assert w['units.0.head.proj.weight'].dtype == torch.float32  # master weights stay fp32
