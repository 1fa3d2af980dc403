"""Pipelined unit-parallel training (two gloo CPU processes) is the same training as the one-process loop.

One ``accelerate launch`` of ``tests/pipeline_worker.py`` trains several set-ups with
:class:`timm_ff.pipeline.PipelineTrainer`; each is compared bit for bit with
:class:`timm_ff.trainer.LocalTrainer` (``per_unit``) on the same set-up in this process: weights, every
unit's loss at every step, eval accuracy after every epoch, the fusion check. The set-ups cover window
depths 1, 2 and 4, three different splits, classic FF, a partial last batch and an epoch boundary with
the scheduler's epoch step, a run resumed mid-epoch, and a micro-batched unit 0.
"""
import json
import subprocess
import sys

import pytest
import timm
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

import timm_ff
from timm_ff.errors import ConfigError
from timm_ff.pipeline import balanced_split, check_pipeline, parse_split
from timm_ff.trainer import LocalTrainer

from _cli import REPO, accelerate_launch, assert_ok, env, run_train, weights
from _pipeline_case import EPOCHS, build, capture_losses

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group('pipeline')]  # one worker: one 2-process run

CASES = [
    dict(name='dtg_window1', objective='dtg', window=1, split=[[0, 2], [2, 4]]),
    dict(name='dtg_window2', objective='dtg', window=2, split=[[0, 1], [1, 4]]),
    dict(name='dtg_window4', objective='dtg', window=4, split=[[0, 3], [3, 4]]),
    dict(name='ff_window2', objective='ff', window=2, split=[[0, 2], [2, 4]]),
    dict(name='dtg_resumed', objective='dtg', window=2, split=[[0, 2], [2, 4]], resume_at=3),
    dict(name='dtg_micro', objective='dtg', window=2, split=[[0, 2], [2, 4]], micro={'0': 2}),
]


def reference(objective: str, tmp_path, micro=None) -> dict:
    """The one-process per_unit run of the same set-up (1 thread, as each pipeline stage)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        parts = build(objective, torch.device('cpu'))
        make_scheduler = parts.pop('make_scheduler')
        trainer = LocalTrainer(accelerator=Accelerator(cpu=True), **parts, scheduler=make_scheduler(parts['optimizer']),
                               epochs=EPOCHS, output_dir=tmp_path / f'ref_{objective}_{bool(micro)}',
                               local_backward='per_unit', clip_grad=1.0, log_every=1, progress=False,
                               micro_batches=micro)
        losses = capture_losses(trainer)
        metrics = trainer.fit()
        return dict(losses=losses, metrics=metrics, weights={k: v.clone() for k, v in parts['model'].state_dict().items()})
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def pipelined(tmp_path_factory):
    out = tmp_path_factory.mktemp('pipeline')
    cmd = accelerate_launch(2) + [str(REPO / 'tests' / 'pipeline_worker.py'), str(out), json.dumps(CASES)]
    proc = subprocess.run(cmd, cwd=REPO, env=env(ACCELERATE_USE_CPU='1'), capture_output=True, text=True, timeout=900)
    assert_ok(proc)
    return out, json.loads((out / 'results.json').read_text())


@pytest.fixture(scope='module')
def references(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('reference')
    return {'dtg': reference('dtg', tmp), 'ff': reference('ff', tmp), 'dtg_micro': reference('dtg', tmp, {'0': 2})}


@pytest.mark.timeout(900)
@pytest.mark.parametrize('case', CASES, ids=[c['name'] for c in CASES])
def test_pipeline_equals_the_sequential_loop_bit_for_bit(pipelined, references, case):
    out, results = pipelined
    got = results[case['name']]
    ref = references['dtg_micro' if case.get('micro') else case['objective']]
    w = load_file(str(out / f"{case['name']}.safetensors"))
    assert w.keys() == ref['weights'].keys()
    differ = [k for k in w if not torch.equal(w[k], ref['weights'][k])]
    assert not differ, f'weights differ: {differ[:5]}'
    steps = 6 * EPOCHS
    want = ref['losses'] if not case.get('resume_at') else \
        {k: v for k, v in ref['losses'].items() if int(k.split(':')[0]) > case['resume_at']}
    assert got['losses'] == want  # every unit's (and the fusion's) loss at every step, exactly
    assert len({k.split(':')[0] for k in got['losses']}) == steps - case.get('resume_at', 0)
    assert got['global_step'] == steps == ref['metrics']['global_step']
    assert got['accuracy'] == ref['metrics']['accuracy']
    assert got['history'] == [dict(accuracy=h['accuracy'], unit_accuracy=h['unit_accuracy'])
                              for h in ref['metrics']['history']]
    assert (got['fusion_check'] or {}).get('accuracy') == (ref['metrics']['fusion_check'] or {}).get('accuracy')
    # each epoch's loss is the mean over the epoch's steps (those run since a resume) of the step's total loss
    per_epoch = [[] for _ in range(EPOCHS)]
    for s in sorted({int(key.split(':')[0]) for key in got['losses']}):
        per_epoch[(s - 1) // (steps // EPOCHS)].append(sum(v for k, v in got['losses'].items()
                                                            if int(k.split(':')[0]) == s))
    assert got['epoch_loss'] == pytest.approx([sum(t) / len(t) for t in per_epoch], rel=1e-5)
    if not case.get('resume_at'):  # the one-process loop's too
        assert [h['train_loss'] for h in ref['metrics']['history']] == pytest.approx(got['epoch_loss'], rel=1e-5)


@pytest.mark.timeout(900)
def test_each_stage_holds_only_its_units_and_their_optimiser_state(pipelined):
    _, results = pipelined
    for case in CASES:
        if case.get('resume_at'):
            continue
        held = results[case['name']]['held']
        for stage, (a, b) in enumerate(case['split']):
            h = held[stage]
            assert h['units'] == [a, b] and h['real'] == list(range(a, b))
            assert h['meta'] == [u for u in range(4) if not a <= u < b]
            assert h['optimizer_is_own'] and h['optimizer_state_is_own']
        sent = results[case['name']]['pipeline']['per_stage']
        assert sent[0]['bytes_sent'] > 0 and sent[-1]['bytes_sent'] == 0  # nothing travels backward


def test_split_parsing_and_balancing():
    assert parse_split('0-2,3-7', 8, 2) == [(0, 3), (3, 8)]
    assert parse_split('0,1-3', 4, 2) == [(0, 1), (1, 4)]
    for text, message in [('0-2,4-7', 'skips unit 3'), ('0-3,3-7', 'repeats unit 3'), ('0-2,3-6', 'ends at unit 6'),
                          ('0-7', 'has 1 stages but --pipeline-stages is 2'), ('a-b,3-7', "'a-b' is not a unit range")]:
        with pytest.raises(ConfigError, match=message):
            parse_split(text, 8, 2)
    assert balanced_split([1, 1, 1, 1], 2) == [(0, 2), (2, 4)]
    assert balanced_split([4, 1, 1, 1, 1], 2) == [(0, 1), (1, 5)]
    assert balanced_split([1, 2, 3, 4, 5, 6, 7, 8], 4) == [(0, 4), (4, 6), (6, 7), (7, 8)]


@pytest.mark.parametrize('kwargs,message', [
    (dict(stages=2, num_processes=1), '--pipeline-stages 2 needs one process per stage, but this run has 1'),
    (dict(stages=3, num_processes=2), 'needs exactly 3 processes'),
    (dict(stages=5, num_processes=5), 'more than the model has units (4)'),
    (dict(objective='bp'), "objective 'bp' backpropagates end to end"),
    (dict(objective='bp_deepsup'), "objective 'bp_deepsup' backpropagates end to end"),
    (dict(objective='bp', num_processes=1), "objective 'bp' backpropagates end to end"),  # before the launch advice
    (dict(data_pipeline='pil'), 'needs the batch-tensor data path'),
    (dict(grad_accum_steps=2), 'does not support --grad-accum-steps 2'),
])
def test_bad_pipeline_settings_are_one_clear_error(kwargs, message):
    settings = dict(stages=2, num_processes=2, num_units=4, objective='dtg', grad_accum_steps=1,
                    mixed_precision='no', data_pipeline='tensor')
    settings.update(kwargs)
    settings['objective'] = timm_ff.create_objective(settings['objective'])
    with pytest.raises(ConfigError, match=message.replace('(', r'\(').replace(')', r'\)')):
        check_pipeline(**settings)


@pytest.mark.timeout(600)
def test_cli_pipeline_run_writes_one_loadable_model_and_resumes(tmp_path):
    """train_ff.py under accelerate launch: one timm model folder from both stages; resume continues exactly."""
    common = ('--model', 'dtgff_cnn_s', '--local-backward', 'per_unit', '--epochs', '1', '--pipeline-stages', '2',
              '--fusion-check-images', '64', '--data-pipeline', 'tensor')
    full, cut = tmp_path / 'full', tmp_path / 'cut'
    proc = run_train(*common, '--output', full, launcher=accelerate_launch(2), ACCELERATE_USE_CPU='1')
    assert_ok(proc)
    assert 'pipeline: stage 0 units 0-' in proc.stdout  # the split came from the profiling pass
    metrics = json.loads((full / 'metrics.json').read_text())
    assert metrics['pipeline']['stages'] == 2 and len(metrics['unit_accuracy']) == 4
    model = timm.create_model('dtgff_cnn_s', pretrained_cfg_overlay=dict(file=str(full / 'model.safetensors')),
                              pretrained=True)
    saved = weights(full)
    assert model.state_dict().keys() == saved.keys()
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    split = metrics['pipeline']['split']
    assert_ok(run_train(*common, '--pipeline-split', ','.join(split), '--output', cut, '--max-train-steps', '5',
                        '--checkpoint-steps', '5', launcher=accelerate_launch(2), ACCELERATE_USE_CPU='1'))
    assert sorted(p.name for p in (cut / 'checkpoints' / 'step_00000005').iterdir()) == [
        'stage0', 'stage1', 'train_state.json']
    resumed = run_train(*common, '--pipeline-split', ','.join(split), '--output', cut, '--resume', cut,
                        launcher=accelerate_launch(2), ACCELERATE_USE_CPU='1')
    assert_ok(resumed)
    assert 'resumed from' in resumed.stdout
    w_full, w_cut = weights(full), weights(cut)
    assert all(torch.equal(w_full[k], w_cut[k]) for k in w_full), 'the resumed pipeline run diverged'


@pytest.mark.timeout(300)
def test_one_stage_failing_ends_both_naming_the_rank_and_the_cause(tmp_path):
    """Unit 3 (stage 1) starts from infinite weights: its first loss is NaN. Both processes end, fast."""
    model = timm.create_model('dtgff_cnn_s')
    with torch.no_grad():
        model.units[3].body[-1].conv.weight.fill_(float('inf'))
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / 'bad.safetensors'))
    cmd = accelerate_launch(2) + [str(REPO / 'train_ff.py'), '--model', 'dtgff_cnn_s', '--batch-size', '64',
                                  '--no-progress', '--pipeline-stages', '2', '--pipeline-split', '0-1,2-3',
                                  '--local-backward', 'per_unit', '--pipeline-timeout', '30',
                                  '--initial-checkpoint', str(tmp_path / 'bad.safetensors'), '--output', str(tmp_path / 'run')]
    proc = subprocess.run(cmd, cwd=REPO, env=env(ACCELERATE_USE_CPU='1'), capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith('error: pipeline stage')]
    assert any('pipeline stage 1 (rank 1, units 2-3) failed: the loss of unit 3 became nan' in ln for ln in lines), \
        proc.stderr[-3000:]
    assert not (tmp_path / 'run' / 'metrics.json').exists()


def test_micro_batched_unit_gets_the_whole_batch_gradient():
    """Norm-free units (no BatchNorm, fixed temperature): 4 chunks of unit 0 give the whole batch's gradients."""
    from timm_ff.task import LocalTask
    torch.manual_seed(0)
    for name, objective in [('dtgff_cnn_s', 'dtg'), ('ff_cnn_s', 'ff')]:
        base = timm.create_model(name, norm='none', temperature='fixed', channels=(8, 8, 16, 16))
        chunked = timm.create_model(name, norm='none', temperature='fixed', channels=(8, 8, 16, 16))
        chunked.load_state_dict(base.state_dict())
        x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
        results = []
        for model, micro in ((base, None), (chunked, {0: 4})):
            torch.manual_seed(1)  # the same FF negatives
            task = LocalTask(model.local_units(), timm_ff.create_objective(objective), 10, fusion=model.fusion,
                             mode='per_unit', micro_batches=micro)
            results.append(task.step(x, y, lambda loss: loss.backward()).read())
        assert results[0].unit_losses == pytest.approx(results[1].unit_losses, rel=1e-5)
        for (n, p), q in zip(base.named_parameters(), chunked.parameters()):
            assert (p.grad is None) == (q.grad is None), n
            if p.grad is not None:
                assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), n


@pytest.mark.parametrize('micro,mode,message', [
    ({'0': 3}, 'per_unit', 'unit 0 splits each batch into 3 chunks, which does not divide the batch size 16'),
    ({'9': 2}, 'per_unit', 'unit index 9 is out of range; this model has units 0..3'),
    ({'x': 2}, 'per_unit', "unit index 'x' is not an integer"),
    ({'0': 0}, 'per_unit', 'unit 0 has 0 chunks'),
    ({'0': 2}, 'summed', '--unit-micro-batches needs --local-backward per_unit'),
])
def test_bad_micro_batches_are_one_clear_error(tmp_path, micro, mode, message):
    model = timm.create_model('dtgff_cnn_s', channels=(8, 8, 16, 16))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(32, 3, 32, 32),
                                                                        torch.zeros(32, dtype=torch.long)), batch_size=16)
    with pytest.raises(ConfigError, match=message):
        LocalTrainer(accelerator=Accelerator(cpu=True), model=model, objective=timm_ff.create_objective('dtg'),
                     optimizer=torch.optim.SGD(model.parameters(), lr=0.1), scheduler=None, train_loader=loader,
                     eval_loader=loader, epochs=1, output_dir=tmp_path, local_backward=mode, micro_batches=micro,
                     progress=False)
