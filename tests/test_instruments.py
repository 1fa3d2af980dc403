"""The research instruments end to end at a tiny scale: K-sweep, coarse-vs-fine probe, systems audit."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from timm_ff.data import SAMPLE_DIR

from _cli import REPO, env

BENCH = REPO / 'benchmarks'
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import bench_audit  # noqa: E402
import bench_coarse_fine  # noqa: E402
import bench_ksweep  # noqa: E402


def _run(script: str, *args, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(BENCH / script), *map(str, args)], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f'exit {proc.returncode}\nSTDOUT\n{proc.stdout[-3000:]}\nSTDERR\n{proc.stderr[-3000:]}'
    return proc


def _result(out: Path, name: str) -> dict:
    text = (out / f'{name}.json').read_text()
    assert str(REPO) not in text  # write_result keeps local paths out
    result = json.loads(text)
    for key in ('command', 'git_commit', 'machine', 'seed', 'date_utc'):
        assert key in result, key
    assert (out / f'{name}.png').stat().st_size > 1000
    return result


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ksweep_tiny(tmp_path):
    _run('bench_ksweep.py', '--task', 'synthetic:2,3', '--task', 'cifar10:2', '--epochs', 1, '--per-class', 8,
         '--test-per-class', 4, '--batch-size', 8, '--cifar10-dir', SAMPLE_DIR, '--runs-dir', tmp_path / 'runs',
         '--out-dir', tmp_path, '--name', 'ks')
    result = _result(tmp_path, 'ks')
    assert set(result['tasks']) == {'synthetic', 'cifar10'}
    assert set(result['tasks']['synthetic']) == {'2', '3'} and set(result['tasks']['cifar10']) == {'2'}
    for name, rows in result['tasks'].items():
        for k, row in rows.items():
            runs = row['runs']
            assert set(runs) == {'dtg', 'bp', 'bp_deepsup'}
            assert row['dtg_minus_bp_pp'] == runs['dtg']['accuracy'] - runs['bp']['accuracy']
            assert row['dtg_minus_bp_deepsup_pp'] == runs['dtg']['accuracy'] - runs['bp_deepsup']['accuracy']
            assert row['chance_pct'] == 100 / int(k)
            assert all(f'--objective {o} --seed 0' in r['command'] for o, r in runs.items())
    info = json.loads((tmp_path / 'runs/cifar10-k2/dtg/run_info.json').read_text())
    assert info['data']['num_classes'] == 2 and info['data']['train_rows'] == 16  # 2 classes x 8 images
    synth = json.loads((tmp_path / 'runs/synthetic-k3/bp/run_info.json').read_text())
    assert synth['data']['num_classes'] == 3 and synth['data']['eval_rows'] == 12
    assert synth['data']['kind'] == 'generated (timm_ff.synthetic)'


@pytest.mark.parametrize('tasks,match', [
    (['cifar10:'], r"empty K list for task 'cifar10'"),
    (['cifar10:2,11'], r"K 11 for task 'cifar10' is more than the 10 classes of .*cifar10-tiny; pick K from 2 to 10"),
    (['synthetic:1,4'], r"K 1 for task 'synthetic' is not possible"),
    (['mnist:2'], r"unknown K-sweep task 'mnist'; allowed: cifar10, omniglot, synthetic, synthetic_vector"),
])
def test_ksweep_bad_input(tmp_path, capsys, tasks, match):
    argv = [a for t in tasks for a in ('--task', t)] + ['--cifar10-dir', str(SAMPLE_DIR), '--out-dir', str(tmp_path)]
    assert bench_ksweep.main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and re.search(match, errors[0]), errors
    assert not list(tmp_path.iterdir())  # nothing ran, nothing written


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_coarse_fine_tiny(tmp_path):
    _run('bench_coarse_fine.py', '--probes', 'cifar10', '--objectives', 'dtg', 'bp', '--epochs', 1, '--per-class', 8,
         '--batch-size', 8, '--cifar10-dir', SAMPLE_DIR, '--runs-dir', tmp_path / 'runs', '--out-dir', tmp_path,
         '--name', 'cf')
    probe = _result(tmp_path, 'cf')['probes']['cifar10']
    coarse, fine = probe['data']['coarse'], probe['data']['fine']
    assert (coarse['num_classes'], fine['num_classes']) == (2, 10)
    assert coarse['train_images'] == fine['train_images'] == 80  # the same images, labelled twice
    assert probe['coarse']['chance_pct'] == 50 and probe['fine']['chance_pct'] == 10
    assert probe['fine_minus_coarse_dtg_minus_bp_pp'] == probe['fine']['dtg_minus_bp_pp'] - probe['coarse']['dtg_minus_bp_pp']
    info = json.loads((tmp_path / 'runs/cifar10-coarse/bp/run_info.json').read_text())
    assert info['data']['num_classes'] == 2


def test_coarse_fine_bad_label_column(tmp_path, capsys):
    argv = ['--probes', 'cifar100', '--cifar100-dir', str(SAMPLE_DIR), '--out-dir', str(tmp_path)]
    assert bench_coarse_fine.main(argv) == 2
    err = capsys.readouterr().err
    assert "label column 'coarse_label' not found; label columns: label" in err
    assert bench_coarse_fine.main(['--probes', 'cifar1000', '--out-dir', str(tmp_path)]) == 2
    assert "unknown probe 'cifar1000'; allowed: cifar10, cifar100" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_audit_tiny_reports_a_crashed_configuration_and_runs_the_others(tmp_path, capsys):
    # micro-batches of 1 image: BatchNorm1d cannot train on them, so bp_accum crashes inside its process
    proc = _run('bench_audit.py', '--model', 'dtgff_mlp', '--batch-size', 4, '--accum-steps', 4, '--warmup', 1,
                '--steps', 1, '--data-dir', '', '--configs', 'bp', 'bp_accum', 'dtg_per_unit', '--out-dir', tmp_path,
                '--name', 'audit')
    result = _result(tmp_path, 'audit')
    rows = result['configs']
    assert list(rows) == ['bp', 'bp_accum', 'dtg_per_unit']
    assert rows['bp_accum']['failed'] and 'Expected more than 1 value per channel' in rows['bp_accum']['error']
    assert 'FAILED' in proc.stdout
    for name in ('bp', 'dtg_per_unit'):
        r = rows[name]
        assert r['img_per_s'] > 0 and r['micro_batch'] == 4 and r['input_shape'] == [1, 28, 28]
        # the tracker sees the whole model: parameters at 4 bytes each, then gradients, optimiser state, activations
        assert abs(r['tracker_breakdown_mib']['Parameter'] - r['params_m'] * 1e6 * 4 / 2 ** 20) < 0.01
        assert r['tracker_breakdown_mib']['Optstate'] > 0 and r['peak_memory_mib'] >= r['tracker_breakdown_mib']['Parameter']
        assert 'MemTracker' in r['memory_method']
    assert rows['dtg_per_unit']['peak_phase'] in {f'unit {u} {p}' for u in range(4) for p in ('forward', 'loss and backward')} | {
        'optimiser step'}
    ratios = result['ratios']
    assert ratios['dtg_per_unit_memory_over_bp'] == rows['dtg_per_unit']['peak_memory_mib'] / rows['bp']['peak_memory_mib']
    assert ratios['dtg_per_unit_memory_over_bp_accum'] is None and ratios['aims']['per_unit_memory_at_most_bp_accum'] is None
    assert bench_audit.main(['--report', 'audit', '--out-dir', str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert '| `dtgff_mlp`, 28x28, 4 | `bp_accum` | failed: ValueError' in table
    assert f"/ `bp` {ratios['dtg_per_unit_memory_over_bp']:.2f} (aim <= 0.5), / `bp_accum` n/a" in table


@pytest.mark.parametrize('argv,match', [
    (['--configs', 'bp', 'bp_offload'], "unknown audit configuration 'bp_offload'; allowed: bp, bp_accum, bp_ckpt"),
    (['--model', 'ff_cnn_s', '--configs', 'dtg_per_unit', 'bp'],
     "audit configuration 'dtg_per_unit' cannot run on ff_cnn_s: objective 'dtg' needs a model with class heads"),
    (['--batch-size', '6', '--accum-steps', '4'], 'bp_accum needs --accum-steps >= 2 dividing --batch-size 6, got 4'),
    (['--model', 'resnet18'], "unknown model 'resnet18'; timm_ff models:"),
])
def test_audit_bad_input(tmp_path, capsys, argv, match):
    assert bench_audit.main(argv + ['--out-dir', str(tmp_path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and match in errors[0], errors
    assert not list(tmp_path.iterdir())


def test_peak_phase_names_the_segment_where_the_peak_was_reached():
    fwd = [(('start', None), 10)] + [((k, u), 10 + 5 * u + (k == 'after')) for u in range(3) for k in ('forward', 'after')]
    # summed / bp: the peak rises after the last forward (the backward through all units), then the optimiser step
    events = fwd + [(('optimizer', None), 50), (('end', None), 50)]
    assert bench_audit._phase(events, 'summed', 3) == ('loss and backward through all units', None)
    # per_unit: the peak is reached while unit 1's loss and backward run, nothing later exceeds it
    events = [(('start', None), 10), (('forward', 0), 10), (('after', 0), 20), (('forward', 1), 30), (('after', 1), 31),
              (('forward', 2), 40), (('after', 2), 40), (('optimizer', None), 40), (('end', None), 40)]
    assert bench_audit._phase(events, 'per_unit', 3) == ('unit 1 loss and backward', 1)
    events = events[:-1] + [(('end', None), 45)]
    assert bench_audit._phase(events, 'per_unit', 3) == ('optimiser step', None)
