"""train_ff.py end to end: artefacts, timm loading, exact resume, bad input (subprocesses, like a user)."""
import json
import subprocess

import pytest
import timm

from timm_ff.data import SAMPLE_DIR
from timm_ff.trainer import find_checkpoint

from _cli import QUICK, assert_ok, run_train, same_weights, weights

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_default_run_offline_writes_a_loadable_timm_model(tmp_path):
    out = tmp_path / 'run'
    proc = run_train('--model', 'ff_cnn_s', '--epochs', '1', '--max-train-steps', '3', '--output', out)
    assert_ok(proc)
    first_lines = proc.stdout.splitlines()[:3]
    assert any('bundled CIFAR-10 sample' in line for line in first_lines), first_lines
    for name in ('recipe.yaml', 'run_info.json', 'log.jsonl', 'model.safetensors', 'config.json', 'metrics.json'):
        assert (out / name).is_file(), name
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['global_step'] == 3 and metrics['objective'] == 'ff'
    assert len(metrics['unit_accuracy']) == 4 and 0 <= metrics['accuracy'] <= 100
    assert metrics['train_images_per_s'] > 0 and metrics['peak_memory_mb'] > 0
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['architecture'] == 'ff_cnn_s' and cfg['timm_ff']['recipe']['objective'] == 'ff'
    # plain timm (after import timm_ff) rebuilds the run's model from its folder, weights and buffers
    model = timm.create_model(f'local-dir:{out}', pretrained=True)
    saved = weights(out)
    assert same_weights({k: v for k, v in model.state_dict().items()}, saved)
    logged = [json.loads(line) for line in (out / 'log.jsonl').read_text().splitlines()]
    assert any('train/loss' in row for row in logged) and any('eval/accuracy' in row for row in logged)


@pytest.mark.timeout(600)
def test_eval_every_and_held_out_fusion_check(tmp_path):
    """--eval-every 2 skips epoch 0's eval; the fusion check runs on training images held out of training;
    a run on the bundled sample ends by saying how to train on the full data."""
    out = tmp_path / 'run'
    proc = run_train('--model', 'ff_cnn_s', '--epochs', '2', '--eval-every', '2', '--max-per-class', '10',
                     '--fusion-check-images', '40', '--output', out)
    assert_ok(proc)
    assert 'epoch 0: loss' in proc.stdout and '(no eval: --eval-every 2)' in proc.stdout
    assert 'epoch 1: loss' in proc.stdout and 'fused acc' in proc.stdout.split('epoch 1: loss')[1]
    assert 'for real results train on the full data: add --data-dir' in proc.stdout.strip().splitlines()[-1]
    metrics = json.loads((out / 'metrics.json').read_text())
    assert len(metrics['history']) == 1 and metrics['epochs_run'] == 2
    assert metrics['fusion_check']['images'] == 40
    info = json.loads((out / 'run_info.json').read_text())
    assert info['data']['fusion_check_rows'] == 40 and info['data']['train_rows'] == 100


def _lr_scale_by_name(run_dir, model_name: str, decay: float) -> dict:
    """{parameter name: (lr_scale, lr)} of a finished --layer-decay run's saved optimiser: the saved groups are
    matched to names through the same timm grouping on a fresh model, and each index's saved Adam state to the
    named parameter's shape."""
    import torch
    from timm.optim import create_optimizer_v2
    saved = torch.load(find_checkpoint(str(run_dir)) / 'optimizer.bin', weights_only=False)
    model = timm.create_model(model_name, num_classes=10)
    fresh = create_optimizer_v2(model, opt='adamw', lr=2e-3, weight_decay=5e-4, layer_decay=decay)
    name_of = {id(p): n for n, p in model.named_parameters()}
    params = [p for g in fresh.param_groups for p in g['params']]
    assert len(saved['param_groups']) == len(fresh.param_groups)
    out = {}
    for group, fresh_group in zip(saved['param_groups'], fresh.state_dict()['param_groups']):
        assert group['params'] == fresh_group['params']
        for i in group['params']:
            assert saved['state'][i]['exp_avg'].shape == params[i].shape, name_of[id(params[i])]
            out[name_of[id(params[i])]] = (group['lr_scale'], group['lr'])
    assert sorted(out) == sorted(name_of.values())  # every parameter, once
    return out


@pytest.mark.timeout(600)
def test_layer_decay_gives_each_unit_its_own_learning_rate(tmp_path):
    """--layer-decay d: every parameter of unit u (body, head, and for unit 0 the stem) trains at
    lr * d**(last - u), the fusion with the last unit at lr; with --sched none that holds from the first step on
    (no scheduler rescales the groups)."""
    import torch
    for model, decay, last in (('dtgff_cnn_s', 0.5, 3), ('dtgff_resnet18', 0.9, 7)):
        out = tmp_path / model
        assert_ok(run_train('--model', model, '--objective', 'dtg', '--epochs', '1', '--max-train-steps', '1',
                            '--fusion-check-images', '0', '--sched', 'none', '--layer-decay', str(decay),
                            '--output', out))
        got = _lr_scale_by_name(out, model, decay)
        for name, (scale, lr) in got.items():
            want = 1.0 if name.startswith('fusion.') else decay ** (last - int(name.split('.')[1]))
            assert scale == pytest.approx(want), (model, name, scale, want)
            assert lr == pytest.approx(2e-3 * want), (model, name)
        assert {n.split('.')[2] for n in got if n.startswith('units.0.')} >= {'stem', 'head'}  # the stem is unit 0's
        assert any(n.startswith('fusion.') for n in got)
        assert sorted({round(s, 9) for s, _ in got.values()}) == sorted(round(decay ** k, 9) for k in range(last + 1))
    assert_ok(run_train('--model', 'dtgff_cnn_s', '--objective', 'dtg', '--epochs', '1', '--max-train-steps', '2',
                        '--sched', 'none', '--output', tmp_path / 'plain'))
    plain = torch.load(find_checkpoint(str(tmp_path / 'plain')) / 'optimizer.bin', weights_only=False)
    assert all(g['lr'] == pytest.approx(2e-3) and 'lr_scale' not in g for g in plain['param_groups'])


@pytest.mark.timeout(600)
@pytest.mark.parametrize('model,objective,extra', [
    ('dtgff_cnn_s', 'dtg', ('--data-pipeline', 'tensor')),
    ('ff_cnn_s', 'ff', ('--data-pipeline', 'tensor', '--aug', 'rrc')),
    ('dtgff_cnn_s', 'dtg', ('--data-pipeline', 'pil', '--aug', 'crop_flip')),
    ('dtgff_cnn_s', 'bp', ('--data-pipeline', 'tensor', '--compile', '--channels-last')),
])
def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path, model, objective, extra):
    common = ('--model', model, '--objective', objective, '--epochs', '2', '--warmup-epochs', '1', *extra)
    full, cut = tmp_path / 'full', tmp_path / 'cut'
    assert_ok(run_train(*common, '--output', full))
    # "killed" after step 9 of 14 in epoch 0 (mid-epoch), with periodic checkpoints on the way
    assert_ok(run_train(*common, '--output', cut, '--max-train-steps', '9', '--checkpoint-steps', '4'))
    assert find_checkpoint(str(cut)).name == 'step_00000009'
    assert not same_weights(weights(full), weights(cut))
    resumed = run_train(*common, '--output', cut, '--resume', cut)
    assert_ok(resumed)
    assert 'resumed from' in resumed.stdout
    assert same_weights(weights(full), weights(cut)), 'resumed run diverged from the uninterrupted one'


def test_half_written_checkpoint_is_ignored(tmp_path):
    good = tmp_path / 'checkpoints' / 'step_00000004'
    good.mkdir(parents=True)
    (good / 'train_state.json').write_text('{}')
    (tmp_path / 'checkpoints' / '.tmp_step_00000008').mkdir()  # a save killed before its rename
    (tmp_path / 'checkpoints' / 'step_00000006').mkdir()  # no train_state.json: incomplete
    assert find_checkpoint(str(tmp_path)) == good


@pytest.mark.timeout(300)
def test_resume_with_another_model_is_one_line_and_the_run_stays_as_it_was(tmp_path, capsys):
    import train_ff
    run = tmp_path / 'run'  # not the default --model, so a resume without --model must take the run's
    assert_ok(run_train('--model', 'ff_cnn_s', '--epochs', '1', '--max-train-steps', '2', '--output', run))
    ckpt = find_checkpoint(str(run))
    before = {p: p.read_bytes() for p in sorted(run.rglob('*')) if p.is_file()}
    for resume, flags, named in [
        (run, ['--model', 'dtgff_cnn_s'], ('--model ff_cnn_s', f"{run / 'recipe.yaml'}", '--model dtgff_cnn_s',
                                          'drop --model', '--output')),
        (ckpt, ['--model', 'ff_cnn_m'], ('--model ff_cnn_s', '--model ff_cnn_m')),
        (run, ['--model-kwargs', '{"fusion": "last"}'], ('--model-kwargs {}', '{"fusion": "last"}')),
        (run, ['--model', 'ff_cnn_s', '--in-chans', '1'], ('--in-chans 0 (from the dataset)', '--in-chans 1')),
        (run, ['--classes', '5'], ('trained on 10 classes', 'data with 5', '--output')),
    ]:
        code = train_ff.cli([*QUICK, '--resume', str(resume), *flags])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()  # the class count is known after the data loads (datasets' bars above)
        assert code == 2 and 'Traceback' not in err, (flags, lines[-20:])
        assert [line for line in lines if line.startswith('error:')] == lines[-1:], lines[-20:]
        assert len(lines) == 1 or '--classes' in flags, lines[-20:]  # the model is checked before anything runs
        assert lines[-1].startswith(f'error: --resume {resume}: the run was trained '), lines[-20:]
        assert all(n in lines[-1] for n in named), (named, lines[-1])
    assert {p: p.read_bytes() for p in sorted(run.rglob('*')) if p.is_file()} == before, 'the run was touched'
    # without --model a resume takes the run's model from its recipe.yaml (and, as before, the same one works)
    for flags, steps in (([], 3), (['--model', 'ff_cnn_s'], 4)):
        resumed = run_train('--resume', run, '--max-train-steps', steps, *flags)
        assert_ok(resumed)
        assert 'resumed from' in resumed.stdout
        metrics = json.loads((run / 'metrics.json').read_text())
        assert metrics['model'] == 'ff_cnn_s' and metrics['global_step'] == steps


BAD_INPUTS = [
    (['--model', 'nope_net'], "unknown model 'nope_net'"),
    (['--objective', 'nope'], "unknown objective 'nope'"),
    (['--dataset', 'nope'], "'nope'"),
    (['--data-dir', '/nonexistent/data'], '/nonexistent/data'),
    (['--data-dir', '{sample}', '--dataset', '', '--label-column', 'nope'], "'nope'"),
    (['--batch-size', '0'], '--batch-size must be a positive integer, got 0'),
    (['--lr', '-1'], '--lr must be > 0, got -1.0'),
    (['--epochs', '0'], '--epochs must be a positive integer, got 0'),
    (['--resume', '{tmp}'], 'holds no checkpoint'),
    (['--model', 'dtgff_cnn_s', '--objective', 'ff'], "objective 'ff' needs a classic FF model"),
    (['--model-kwargs', '{"bogus": 1}'], "unknown model kwarg 'bogus'"),
    (['--model-kwargs', '{"fusion": "bad"}'], "unknown value for fusion 'bad'"),
    (['-c', '{recipe}'], "unknown recipe key 'bogus_key'"),
    (['-c', '/nonexistent.yaml'], "recipe '/nonexistent.yaml' does not exist"),
    (['--opt', 'nope'], "unknown --opt 'nope'"),
    (['--model', 'dtgff_cnn_s.cifar10', '--pretrained'], 'local-dir:'),
    (['--push-to-hub', 'not/a/repo id'], "'not/a/repo id'"),
    (['--push-to-hub', 'someone/model--x'], "bad Hub repo id 'someone/model--x': expected ORG/NAME"),
    (['-c', '{aug_recipe}'], "unknown --aug 'cutout'; allowed: crop_flip, rrc, none"),
    (['--crop-padding', '-4'], '--crop-padding must be a non-negative integer number of pixels, got -4'),
    (['--color-jitter', '-0.5'], 'color jitter strength must be a number >= 0 (0: off), got -0.5'),
    (['-c', '{pipe_recipe}'], "unknown --data-pipeline 'gpu'; allowed: auto, tensor, pil"),
    (['--model', 'ff_cnn_s', '--linear-probe'], "--linear-probe trains class heads on frozen features, but objective 'ff'"),
    (['--sync-bn'], '--sync-bn synchronises BatchNorm across processes, but this run has 1 process'),
    (['--pipeline-stages', '2'], '--pipeline-stages 2 needs one process per stage, but this run has 1 process'),
    (['--pipeline-split', '0-1,2-3'], "--pipeline-split '0-1,2-3' needs --pipeline-stages"),
    (['--unit-micro-batches', '{"0": 3}', '--local-backward', 'per_unit'],
     'unit 0 splits each batch into 3 chunks, which does not divide the batch size 64'),
    (['--unit-micro-batches', '{"7": 2}', '--local-backward', 'per_unit'], 'unit index 7 is out of range'),
    (['--data-dir', '{corrupt}', '--dataset', ''], "test-00000-of-00001.parquet' is not readable parquet"),
    (['--eval-every', '0'], '--eval-every must be a positive number of epochs, got 0'),
    (['--layer-decay', '-0.5'], '--layer-decay must be >= 0 (0: off), got -0.5'),
    (['--model', 'ff_resnet18', '--model-kwargs', '{"goodness_at": "pre"}'],
     "unknown goodness_at 'pre'; allowed: branch, output"),
    (['--model', 'ff_cnn_s', '--model-kwargs', '{"label_code": "corner"}'],
     "unknown value for label_code 'corner'; allowed: bias, plane"),
    (['--model', 'ff_cnn_s', '--objective-kwargs', '{"passes": "both"}'],
     "unknown ff passes 'both'; allowed: joint, separate"),
    (['--model', 'ff_cnn_s', '--objective-kwargs', '{"per_location": true}'],
     "ff per_location=true needs a model whose goodness has one value per location"),
]


@pytest.mark.timeout(600)
@pytest.mark.parametrize('flags,expected', BAD_INPUTS, ids=[' '.join(f) for f, _ in BAD_INPUTS])
def test_bad_input_gives_one_clear_line_and_no_finished_run(tmp_path, capsys, flags, expected):
    import train_ff
    recipe = tmp_path / 'bad.yaml'
    recipe.write_text('model: dtgff_cnn_s\nbogus_key: 3\n')
    empty = tmp_path / 'empty'
    empty.mkdir()
    (tmp_path / 'aug.yaml').write_text('aug: cutout\n')
    (tmp_path / 'pipe.yaml').write_text('data_pipeline: gpu\n')
    import shutil
    corrupt = tmp_path / 'corrupt'  # the bundled sample with its test parquet file cut in half
    shutil.copytree(SAMPLE_DIR, corrupt)
    raw = (corrupt / 'test-00000-of-00001.parquet').read_bytes()
    (corrupt / 'test-00000-of-00001.parquet').write_bytes(raw[:len(raw) // 2])
    fill = {'{sample}': str(SAMPLE_DIR), '{tmp}': str(empty), '{recipe}': str(recipe),
            '{aug_recipe}': str(tmp_path / 'aug.yaml'), '{pipe_recipe}': str(tmp_path / 'pipe.yaml'),
            '{corrupt}': str(corrupt)}
    for key, value in fill.items():
        flags = [f.replace(key, value) for f in flags]
    out = tmp_path / 'run'
    code = train_ff.cli([*QUICK, '--max-train-steps', '1', '--output', str(out), *flags])
    err = capsys.readouterr().err
    assert code == 2, (flags, err[-2000:])
    assert expected in err, (flags, expected, err[-2000:])
    assert not (out / 'metrics.json').exists()


@pytest.mark.timeout(300)
def test_push_to_hub_offline_fails_before_training(tmp_path, capsys):
    # conftest sets HF_HUB_OFFLINE=1 for this process: the push could never happen, so nothing may train
    import train_ff
    out = tmp_path / 'run'
    code = train_ff.cli([*QUICK, '--max-train-steps', '1', '--output', str(out), '--push-to-hub', 'someone/model',
                         '--hub-revision', 'dev'])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
    assert code == 2 and len(errors) == 1, errors
    assert errors[0] == ('error: --push-to-hub someone/model: HF_HUB_OFFLINE=1 is set, so the finished run could not '
                         'be uploaded; unset HF_HUB_OFFLINE to push it, or drop --push-to-hub and publish the run '
                         'later with python -m timm_ff.hub push RUN_FOLDER someone/model --revision dev')
    assert not out.exists()  # no checkpoint, no recipe: training never started


@pytest.mark.timeout(120)
def test_bad_input_from_the_real_entry_point_has_no_traceback(tmp_path):
    proc = run_train('--model', 'nope_net', '--output', tmp_path / 'run')
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown model 'nope_net'; timm_ff models: ")
    assert 'Traceback' not in proc.stderr


def test_the_run_commit_is_dirty_for_changed_code_not_for_changed_results_files(tmp_path, monkeypatch):
    import train_ff

    def git(*args):
        subprocess.run(['git', *args], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / 'benchmarks/results').mkdir(parents=True)
    (tmp_path / 'benchmarks/results/table.json').write_text('{}\n')
    (tmp_path / 'code.py').write_text('x = 1\n')
    git('init', '-q')
    git('add', '-A')
    git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'init')
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    monkeypatch.setattr(train_ff, '__file__', str(tmp_path / 'train_ff.py'))
    assert train_ff.git_commit() == head
    (tmp_path / 'benchmarks/results/table.json').write_text('{"written": "by an earlier benchmark"}\n')
    (tmp_path / 'untracked.txt').write_text('ignored\n')
    assert train_ff.git_commit() == head
    (tmp_path / 'code.py').write_text('x = 2\n')
    assert train_ff.git_commit() == f'{head}-dirty'
