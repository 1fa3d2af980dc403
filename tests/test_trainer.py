"""LocalTrainer pieces: per-unit gradient clipping, gradient accumulation, bf16 autocast."""
import pytest
import timm
import torch
from accelerate import Accelerator

import timm_ff
from timm_ff.trainer import LocalTrainer, fusion_candidates

from _cli import assert_ok, max_abs_diff, run_train, weights


def _trainer(tmp_path, model, clip, fusion_check_loader=None, eval_loader=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 3, 32, 32),
                                                                        torch.zeros(4, dtype=torch.long)), batch_size=2)
    return LocalTrainer(accelerator=Accelerator(cpu=True), model=model, objective=timm_ff.create_objective('dtg'),
                        optimizer=opt, scheduler=None, train_loader=loader, eval_loader=eval_loader or loader, epochs=1,
                        output_dir=tmp_path, clip_grad=clip, progress=False, fusion_check_loader=fusion_check_loader)


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


# imported by train_ff.py --import: counts the output dtypes of every conv that runs in a training step
# (training mode, grad on) and writes them to $DTYPE_PROBE_OUT when the process ends
DTYPE_PROBE = """
import atexit, json, os
import torch

seen = {}


def _record(module, args, output):
    if isinstance(module, torch.nn.Conv2d) and module.training and torch.is_grad_enabled():
        seen[str(output.dtype)] = seen.get(str(output.dtype), 0) + 1


torch.nn.modules.module.register_module_forward_hook(_record)
atexit.register(lambda: open(os.environ['DTYPE_PROBE_OUT'], 'w').write(json.dumps(seen)))
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize('precision,dtype', [('bf16', 'torch.bfloat16'), ('no', 'torch.float32')])
def test_mixed_precision_runs_the_units_in_bf16_on_cpu(tmp_path, precision, dtype):
    """--mixed-precision bf16: every conv of every unit computes in bf16 during the training steps (seen by a
    forward hook), while the master weights stay fp32; without the flag the same convs compute in fp32."""
    import json
    (tmp_path / 'dtype_probe.py').write_text(DTYPE_PROBE)
    out, seen = tmp_path / 'run', tmp_path / 'dtypes.json'
    proc = run_train('--model', 'dtgff_cnn_s', '--epochs', '1', '--max-train-steps', '2', '--mixed-precision', precision,
                     '--import', 'dtype_probe', '--output', out, PYTHONPATH=str(tmp_path), DTYPE_PROBE_OUT=str(seen))
    assert_ok(proc)
    counts = json.loads(seen.read_text())
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in timm.create_model('dtgff_cnn_s').modules())
    assert counts.get(dtype, 0) >= 2 * n_convs and set(counts) == {dtype}, counts  # 2 steps, every conv
    w = weights(out)
    assert all(torch.isfinite(v).all() for v in w.values())
    assert all(v.dtype == torch.float32 for v in w.values() if v.is_floating_point())  # master weights stay fp32


@pytest.mark.parametrize('model_name', ['dtgff_cnn_s', 'ff_mlp'])
def test_fusion_check_never_leaves_the_fusion_below_a_unit(tmp_path, model_name):
    torch.manual_seed(0)
    model = timm.create_model(model_name)
    shape = (64, 3, 32, 32) if model_name.endswith('cnn_s') else (64, 1, 28, 28)
    x, y = torch.randn(*shape), torch.randint(0, 10, (64,))
    check = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    trainer = _trainer(tmp_path, model, clip=None, fusion_check_loader=check)
    before = trainer.evaluate(check)
    worst = min(range(4), key=lambda u: before['unit_accuracy'][u])
    model.fusion.select_units([worst])  # a fusion that trails every better unit
    assert trainer.evaluate(check)['accuracy'] < max(before['unit_accuracy'])
    info = trainer.check_fusion()
    after = trainer.evaluate(check)
    assert info['chosen'] != 'as trained' and info['accuracy'][info['chosen']] == after['accuracy']
    assert after['accuracy'] >= max(after['unit_accuracy'])
    # the choice is part of the weights: a reloaded model predicts the same
    clone = timm.create_model(model_name)
    clone.load_state_dict(model.state_dict())
    assert torch.equal(clone.eval()(x[:8]), model.eval()(x[:8]))
    with pytest.raises(ValueError, match='cannot select units'):
        model.fusion.select_units([9])


def _labelled_loader(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = torch.utils.data.TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=16)


def test_eval_counts_every_fusion_the_check_can_choose_as_a_fresh_eval_scores_it(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('dtgff_cnn_s')
    with torch.no_grad():
        model.fusion.logit_weights.normal_()  # 'as trained' differs from the plain mean
    trainer = _trainer(tmp_path, model, clip=None, fusion_check_loader=_labelled_loader(seed=1),
                       eval_loader=_labelled_loader())
    metrics = trainer.evaluate(count_candidates=True)
    counted = dict(trainer._eval_candidates)
    candidates, _ = fusion_candidates(model.fusion, 'cpu')
    assert list(counted) == list(candidates) and counted['as trained'] == metrics['accuracy']
    assert len(set(counted.values())) > 2  # the candidates score differently, so a mix-up of names would show
    trained = {k: v.clone() for k, v in model.fusion.state_dict().items()}
    for name, units in candidates.items():
        model.fusion.load_state_dict(trained)
        if units is not None:
            model.fusion.select_units(units)
        assert trainer.evaluate()['accuracy'] == counted[name], name
    assert trainer.evaluate() and trainer._eval_candidates == {}  # an eval not before the check counts none


def test_fit_takes_the_chosen_fusions_accuracy_from_the_last_eval_not_a_second_pass(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('dtgff_cnn_s')
    trainer = _trainer(tmp_path, model, clip=None, fusion_check_loader=_labelled_loader(seed=1),
                       eval_loader=_labelled_loader())
    passes, evaluate = [], trainer.evaluate
    trainer.evaluate = lambda loader=None, **kw: passes.append((loader, kw)) or evaluate(loader, **kw)
    result = trainer.fit()
    assert result['fusion_check']['chosen'] != 'as trained' and passes == [(None, dict(count_candidates=True))]
    assert result['accuracy'] == evaluate()['accuracy']  # the selected fusion, scored afresh


def test_fusion_check_considers_runs_of_units_that_do_not_end_at_the_last(tmp_path):
    # units 0 and 1 are each right on 60 of 100 images and right together on all of them; units 2, 3 always
    # say class 3 (wrong), so every combination containing them loses: only the mean of units 0-1 wins
    n, y = 100, torch.zeros(100, dtype=torch.long)
    logits = [torch.zeros(n, 10) for _ in range(4)]
    logits[0][:60, 0], logits[0][60:, 1] = 2.0, 1.0
    logits[1][40:, 0], logits[1][:40, 2] = 2.0, 1.0
    logits[2][:, 3] = logits[3][:, 3] = 5.0
    model = timm.create_model('dtgff_cnn_s')
    model.forward_unit_logits = lambda idx: [z[idx] for z in logits]  # the "images" are row indices
    check = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(n), y), batch_size=32)
    info = _trainer(tmp_path, model, clip=None, fusion_check_loader=check).check_fusion()
    assert info['accuracy']['unit 0'] == pytest.approx(60.0) and info['accuracy']['unit 1'] == pytest.approx(60.0)
    assert info['chosen'] == 'mean of units 0-1' and info['accuracy']['mean of units 0-1'] == pytest.approx(100.0)
    assert model.fusion.unit_mask.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_non_finite_loss_stops_at_once_naming_unit_and_step(tmp_path):
    model = timm.create_model('dtgff_cnn_s')
    trainer = _trainer(tmp_path, model, clip=None)
    trainer.save_checkpoint()  # the last good state
    good = sorted((tmp_path / 'checkpoints').glob('step_*'))
    trainer.train_epoch(0)  # one finite epoch: last finite losses are known
    trainer.state.step_in_epoch = 0
    with torch.no_grad():
        model.units[2].body[1].conv.weight.fill_(float('nan'))
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    with pytest.raises(timm_ff.TrainingError, match=r'loss of unit 2 became nan at epoch 1, step 3 \(last finite loss: '
                                                     r'\d.*last good checkpoint: .*step_00000000'):
        trainer.train_epoch(1)
    # the optimiser never applied the NaN step, and no checkpoint was written after it
    assert all(torch.equal(before[k].nan_to_num(), p.detach().nan_to_num()) for k, p in model.named_parameters())
    assert sorted((tmp_path / 'checkpoints').glob('step_*')) == good


@pytest.mark.timeout(400)
@pytest.mark.parametrize('mode', ['summed', 'per_unit'])
def test_compile_and_channels_last_match_eager(mode):
    from timm_ff.task import LocalTask
    from timm_ff.trainer import compile_units, to_channels_last
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    grads = []
    for fast in (False, True):
        torch.manual_seed(1)
        model = timm.create_model('dtgff_cnn_s', temperature='fixed', channels=(8, 16, 16, 32))
        xx = x
        if fast:
            to_channels_last(model)
            assert all(v.is_contiguous() for v in model.state_dict().values())  # safetensors can save it
            xx = x.contiguous(memory_format=torch.channels_last)
            assert compile_units(model.local_units()) == ''
        task = LocalTask(model.local_units(), timm_ff.create_objective('dtg'), 10, fusion=model.fusion, mode=mode)
        res = task.step(xx, y, lambda loss: loss.backward())
        grads.append(([p.grad.clone() for p in model.parameters() if p.grad is not None], res.read().unit_losses))
        if fast:
            with torch.no_grad():
                assert torch.allclose(model.eval()(xx), eager_model.eval()(x), atol=1e-4)
        eager_model = model
    (g_eager, l_eager), (g_fast, l_fast) = grads
    assert l_fast == pytest.approx(l_eager, rel=1e-4)
    assert len(g_eager) == len(g_fast) and all(torch.allclose(a, b, atol=1e-4) for a, b in zip(g_eager, g_fast))


def test_fusion_check_breaks_a_tie_between_units_for_the_deepest(tmp_path):
    # a saturated check (every unit right on every image, as MNIST training images are) says nothing about
    # which unit generalises best: keep the deepest, the network's usual prediction
    n, y = 40, torch.zeros(40, dtype=torch.long)
    logits = [torch.zeros(n, 10) for _ in range(4)]
    for z in logits:
        z[:, 0] = 1.0
    model = timm.create_model('dtgff_cnn_s')
    model.forward_unit_logits = lambda idx: [z[idx] for z in logits]
    check = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(n), y), batch_size=16)
    info = _trainer(tmp_path, model, clip=None, fusion_check_loader=check).check_fusion()
    assert info['chosen'] == 'unit 3' and model.fusion.unit_mask.tolist() == [0.0, 0.0, 0.0, 1.0]


def test_fusion_check_line_names_the_unit_it_uses_on_a_tie(tmp_path, capsys):
    # units 1 and 2 tie as the best (right on 30 of 40 images); units 0 and 3 are always wrong and outweigh
    # them in every combination, so the check keeps the deepest of the tied units and its line must name it
    n, y = 40, torch.zeros(40, dtype=torch.long)
    logits = [torch.zeros(n, 10) for _ in range(4)]
    for u in (1, 2):
        logits[u][:30, 0], logits[u][30:, 5] = 1.0, 1.0
    for u in (0, 3):
        logits[u][:, 5] = 5.0
    model = timm.create_model('dtgff_cnn_s')
    model.forward_unit_logits = lambda idx: [z[idx] for z in logits]
    check = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(n), y), batch_size=16)
    trainer = _trainer(tmp_path, model, clip=None, fusion_check_loader=check)
    capsys.readouterr()
    info = trainer.check_fusion()
    assert info['accuracy']['unit 1'] == info['accuracy']['unit 2'] == pytest.approx(75.0)
    assert info['chosen'] == 'unit 2' and model.fusion.unit_mask.tolist() == [0.0, 0.0, 1.0, 0.0]
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith('fusion check'))
    assert line.endswith('best unit 2 75.00% -> using unit 2 (75.00%)'), line


def test_epoch_loss_is_the_mean_of_the_epochs_steps_not_the_last(tmp_path):
    model = timm.create_model('dtgff_cnn_s')
    trainer = _trainer(tmp_path, model, clip=None)
    step_losses, logged, step, log = [], [], trainer._train_step, trainer.acc.log

    def recorded_step(*args, **kwargs):
        result = step(*args, **kwargs)
        step_losses.append(result.read().loss)
        return result
    trainer._train_step = recorded_step
    trainer.acc.log = lambda values, **kw: logged.append(values) or log(values, **kw)
    result = trainer.fit()
    assert len(step_losses) == 2 and step_losses[0] != pytest.approx(step_losses[1], rel=1e-3)
    mean = sum(step_losses) / len(step_losses)
    epoch_loss = [v['train/epoch_loss'] for v in logged if 'train/epoch_loss' in v]
    assert epoch_loss == [pytest.approx(mean, rel=1e-6)]
    assert result['history'][0]['train_loss'] == epoch_loss[0]
