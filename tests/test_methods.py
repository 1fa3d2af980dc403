"""Named methods: the registry, --list-methods, --method presets under the command line's flags, locality recorded."""
import json
import subprocess
import sys

import pytest

import timm_ff
from timm_ff import ConfigError
from timm_ff.methods import Method, get_method, list_methods, method_table

from _cli import REPO, TRAIN, assert_ok, env, run_train


def test_builtin_methods_and_their_table():
    names = list_methods()
    assert names[:6] == ['dtg', 'ff', 'bp', 'bp_deepsup', 'dgl', 'infopro']
    table = method_table().splitlines()
    assert table[0].split()[:3] == ['method', 'objective', 'local'] and len(table) == len(names) + 1
    assert [line.split()[2] for line in table[1:5]] == ['yes', 'yes', 'NO', 'NO']  # bp and bp_deepsup are not local
    for name in names:  # every method names a registered objective and a paper
        m = get_method(name)
        assert m.objective in timm_ff.list_objectives() and m.paper


def test_unknown_method_and_duplicate_registration():
    with pytest.raises(ConfigError, match=f"unknown method 'nope'; allowed: {', '.join(sorted(list_methods()))}$"):
        get_method('nope')
    with pytest.raises(ValueError, match="'dgl' is already registered"):
        timm_ff.register_method(Method('dgl', 'dtg', paper='x'))


def test_list_methods_cli_and_bad_method_is_one_line():
    out = subprocess.run([sys.executable, TRAIN, '--list-methods'], cwd=REPO, env=env(), capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.splitlines()[0].startswith('method') and 'infopro' in out.stdout
    bad = subprocess.run([sys.executable, TRAIN, '--method', 'nope'], cwd=REPO, env=env(), capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"error: unknown method 'nope'; allowed: {', '.join(sorted(list_methods()))}"]


@pytest.mark.timeout(300)
def test_method_preset_under_command_line_flags(tmp_path):
    """--method infopro sets its head, fixed temperature and recon; a flag given on the command line wins."""
    out = tmp_path / 'run'
    proc = run_train('--method', 'infopro', '--model', 'dtgff_cnn_s', '--model-kwargs', '{"head": "pred"}',
                     '--epochs', '1', '--max-train-steps', '2', '--output', out)
    assert_ok(proc)
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['model_args']['head'] == 'pred' and cfg['model_args']['temperature'] == 'fixed'
    recipe = cfg['timm_ff']['recipe']
    assert recipe['method'] == 'infopro' and recipe['objective'] == 'dtg' and recipe['objective_kwargs'] == {'recon': [5.0, 0.0]}
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['local'] is True and metrics['method'] == 'infopro'


def test_bench_methods_plans_each_method_on_the_right_model():
    """bench_methods.py: label-in-input methods train the classic-FF twin; channel-group methods widen to multiples of K."""
    sys.path.insert(0, str(REPO / 'benchmarks'))
    import bench_methods
    assert bench_methods.run_plan(get_method('dtg'), 'dtgff_cnn_s', 10) == ('dtgff_cnn_s', {})
    assert bench_methods.run_plan(get_method('ff'), 'dtgff_resnet18', 10) == ('ff_resnet18', {})
    model, extra = bench_methods.run_plan(get_method('cwcomp'), 'dtgff_cnn_s', 10)
    assert model == 'dtgff_cnn_s' and extra == {'channels': [40, 70, 130, 260]}
    # classic FF's evaluation scores every label: on ResNet-18 its methods are evaluated after the last epoch only
    assert bench_methods.evaluated_once(get_method('ff'), 'dtgff_resnet18')
    assert bench_methods.evaluated_once(get_method('trifecta_olu'), 'dtgff_resnet18.cifar10')
    assert not bench_methods.evaluated_once(get_method('dtg'), 'dtgff_resnet18')
    assert not bench_methods.evaluated_once(get_method('ff'), 'dtgff_cnn_s')
    summary = bench_methods.summarise([
        dict(accuracy=50.0, unit_accuracy=[40.0, 50.0], train_images_per_s=10.0, peak_memory_mb=100, memory_kind='rss'),
        dict(accuracy=54.0, unit_accuracy=[42.0, 54.0], train_images_per_s=12.0, peak_memory_mb=120, memory_kind='rss')])
    assert summary['accuracy_mean'] == 52.0 and summary['accuracy_spread'] == 4.0
    assert summary['unit_accuracy_mean'] == [41.0, 52.0] and summary['peak_memory_mb_max'] == 120
    bad = subprocess.run([sys.executable, str(REPO / 'benchmarks/bench_methods.py'), '--budget', 'huge'], cwd=REPO,
                         env=env(), capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip() == "error: unknown --budget 'huge'; allowed: cnn, resnet18"


def test_bench_methods_reuses_recorded_runs_only_when_trained_the_same_way(tmp_path):
    """A fresh clone has the methods results file but not its run folders: runs recorded with the same recipe text,
    data folder and extra flags are reused (adding a seed re-trains nothing else); any difference reuses nothing."""
    sys.path.insert(0, str(REPO / 'benchmarks'))
    import bench_methods
    recipe = 'model: dtgff_cnn_s\nepochs: 5\n'
    cmd = 'train_ff.py -c r.yaml --method {m} --model dtgff_cnn_s --data-dir ../d --seed {s} --output o --no-progress'
    runs = {m: dict(runs=[dict(seed=s, accuracy=1.0, train_command=cmd.format(m=m, s=s) + suffix)
                          for s, suffix in ((0, ''), (1, ' --resume o'))]) for m in ('dtg', 'bp')}
    runs['cwcomp'] = dict(runs=[dict(seed=0, train_command=cmd.format(m='cwcomp', s=0) + ' --model-kwargs {"a": 1}')])
    path = tmp_path / 'methods_cnn_cpu.json'
    path.write_text(json.dumps(dict(recipe=recipe, methods=runs)))
    got = bench_methods.recorded_runs(path, recipe, '../d', [])
    assert sorted(got) == [('bp', 0), ('bp', 1), ('cwcomp', 0), ('dtg', 0), ('dtg', 1)]
    assert got['dtg', 1]['train_command'].endswith('--resume o')
    assert bench_methods.recorded_runs(path, recipe + 'lr: 0.1\n', '../d', []) == {}
    assert bench_methods.recorded_runs(path, recipe, '../other', []) == {}
    assert bench_methods.recorded_runs(path, recipe, '', []) == {}
    assert bench_methods.recorded_runs(path, recipe, '../d', ['--epochs', '1']) == {}
    assert bench_methods.recorded_runs(tmp_path / 'none.json', recipe, '../d', []) == {}
