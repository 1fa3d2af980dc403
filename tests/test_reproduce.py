"""benchmarks/reproduce.py: every table's commands name real scripts and recipes, pass their scripts' own
argument parsers, write the file the registry names, and (CPU) are the commands the committed files record.
benchmarks/gpu_day.py: its one-line refusal without CUDA, its deadline, and its CPU smoke run end to end."""
import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / 'benchmarks'
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))
import reproduce  # noqa: E402

CASES = [(t, b) for t in reproduce.TABLES for b in reproduce.BUDGETS]
PARSE_ARGS = argparse.ArgumentParser.parse_args
_PARSERS = {}


class _Parser(Exception):
    def __init__(self, parser):
        super().__init__()
        self.parser = parser


def script_parser(script: str) -> argparse.ArgumentParser:
    """The parser the script's ``main`` builds, caught as it is about to parse."""
    if script not in _PARSERS:
        if script == 'train_ff.py':
            import train_ff
            _PARSERS[script] = train_ff.build_parser()
        else:
            spec = importlib.util.spec_from_file_location(Path(script).stem, REPO / script)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)

            def caught(self, args=None, namespace=None):
                raise _Parser(self)
            with mock.patch.object(argparse.ArgumentParser, 'parse_args', caught), \
                    mock.patch.object(sys, 'argv', [script]), pytest.raises(_Parser) as got:
                module.main()
            _PARSERS[script] = got.value.parser
    return _PARSERS[script]


def parse(script: str, args: list) -> argparse.Namespace:
    parser = script_parser(script)
    try:
        return PARSE_ARGS(parser, args)
    except SystemExit:
        pytest.fail(f'{script} rejects {shlex.join(args)}')


def dry_run(capsys, *argv) -> list:
    """``(command tokens, results name or None)`` for each command ``--dry-run`` prints."""
    assert reproduce.main([*argv, '--dry-run']) == 0
    lines = capsys.readouterr().out.splitlines()
    out, commands = None, []
    for line in lines:
        if line.startswith('# writes benchmarks/results/'):
            out = line.split('benchmarks/results/')[1].split('.json')[0]
        elif line.startswith('python '):
            commands.append((shlex.split(line)[1:], out))
            out = None
    return commands


def train_ff_runs(script: str, ns: argparse.Namespace) -> list:
    """The train_ff.py arguments the gap, ablation and methods benchmarks build from ``ns``, one list per objective
    (per method)."""
    if script.endswith('bench_cifar10_gap.py'):
        runs = []
        for entry in ns.objectives:
            obj, _, model = entry.partition('@')
            model_args = ['--model', model] if model else []
            runs.append(['-c', ns.recipe, '--objective', obj, *model_args, *ns.extra])
        return runs
    if script.endswith('bench_ablation.py'):
        return [['-c', ns.recipe, '--objective', 'dtg', *ns.extra]]
    if script.endswith('bench_methods.py'):
        import bench_methods

        from timm_ff.methods import get_method, list_methods
        recipe = ns.recipe or str(bench_methods.BUDGETS[ns.budget])
        base_model = bench_methods.recipe_model(REPO / recipe)
        return [['-c', recipe, '--method', m, '--model', bench_methods.run_plan(get_method(m), base_model, 10)[0],
                 *ns.extra] for m in ns.methods or list_methods()]
    return []


@pytest.mark.timeout(300)
@pytest.mark.parametrize('table,budget', CASES, ids=[f'{t}-{b}' for t, b in CASES])
def test_dry_run_commands_are_accepted_by_their_scripts(capsys, tmp_path, table, budget):
    import timm_ff
    import train_ff
    runs = reproduce.TABLES[table][1][budget]
    if isinstance(runs, str):
        assert reproduce.main([table, '--budget', budget, '--dry-run']) == 0
        out = capsys.readouterr().out.strip()
        assert out.startswith(f'{table} has no GPU form: ') and '\n' not in out
        return
    commands = dry_run(capsys, table, '--budget', budget)
    assert len(commands) == len(runs) and commands
    for args, out in commands:
        script, *rest = args
        assert (REPO / script).is_file(), script
        for flag in ('--recipe', '-c'):
            if flag in rest:
                assert (REPO / rest[rest.index(flag) + 1]).is_file(), rest
        ns = parse(script, rest)
        if out is None:
            assert script == 'train_ff.py'
            continue
        written = Path(ns.output).stem if script.endswith('bench_models.py') else ns.name
        if script.endswith('bench_methods.py'):
            written = ns.name or f'methods_{ns.budget}_cpu'
        if script.endswith('bench_first_command.py'):  # the default name follows the block
            written = ns.name or {'main': 'first_command_cpu', 'tests': 'test_command_cpu'}[ns.block]
        assert written == out
        if budget == 'cpu':  # the committed file it reproduces
            assert (REPO / 'benchmarks/results' / f'{out}.json').is_file(), out
        else:
            assert out.endswith('_gpu'), out
        for train_args in train_ff_runs(script, ns):
            targs = train_ff.parse_args(train_args)
            train_ff.check_args(targs)
            objective = timm_ff.create_objective(targs.objective)
            assert targs.local_backward == 'summed' or objective.local, (
                f'{shlex.join(train_args)}: the end-to-end objective {targs.objective} cannot run per_unit')


@pytest.mark.timeout(120)
def test_cpu_commands_are_the_ones_the_committed_files_record():
    checked = 0
    for _, budgets in reproduce.TABLES.values():
        for r in budgets['cpu']:
            if r.out is None or r.script.endswith('record_runs.py'):
                continue  # a training run, or a record of runs whose note is new text
            recorded = json.loads((REPO / 'benchmarks/results' / f'{r.out}.json').read_text())['command']
            if r.script.endswith('bench_methods.py'):  # a stopped benchmark's file is written by its --no-train form
                recorded = recorded.partition(' --note ')[0].removesuffix(' --no-train')  # (a note said why)
            as_recorded = r.argv(reproduce.DEFAULT_DATA)[1:len(r.args) + 1]  # without the pinned arguments
            argv = ['python', r.script, *as_recorded]  # files record sys.argv joined, newer ones shell-quoted
            assert recorded in (' '.join(argv), shlex.join(argv))
            checked += 1
    assert checked >= 25


def test_gpu_files_never_overwrite_cpu_files():
    outs = {b: [r.out for _, budgets in reproduce.TABLES.values() if not isinstance(budgets[b], str)
                for r in budgets[b] if r.out] for b in reproduce.BUDGETS}
    assert not set(outs['cpu']) & set(outs['gpu'])
    assert all(o.endswith('_gpu') for o in outs['gpu'])
    assert len(outs['gpu']) == len(set(outs['gpu']))


def test_a_data_dir_reaches_every_command_that_reads_cifar10(capsys, tmp_path):
    for table, budget in (('throughput', 'cpu'), ('ksweep', 'cpu'), ('resnet18_screens', 'cpu'),
                          ('cnn_s_gap', 'gpu')):
        for args, _ in dry_run(capsys, table, '--budget', budget, '--data-dir', str(tmp_path)):
            ns = parse(args[0], args[1:])
            given = [getattr(ns, 'data_dir', None), getattr(ns, 'cifar10_dir', None)]
            # the commands run from the repository root: a folder beside the checkout may come relative to it
            assert tmp_path.resolve() in [(REPO / d).resolve() for d in given if d], args


def run_cli(*argv, timeout=60):
    return subprocess.run([sys.executable, str(BENCH / 'reproduce.py'), *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.mark.timeout(120)
def test_list_names_every_table_budget_and_file():
    proc = run_cli('--list')
    assert proc.returncode == 0, proc.stderr
    for table, (_, budgets) in reproduce.TABLES.items():
        assert f'\n{table} ' in proc.stdout
        for runs in budgets.values():
            for r in [] if isinstance(runs, str) else runs:
                assert r.out is None or f'{r.out}.json' in proc.stdout
    assert 'no GPU form: bench_fsdp.py' in proc.stdout


HEAD_FILES = ('resnet18_head_goodness_cpu', 'resnet18_head_pred_cpu', 'resnet18_head_dgl_cpu',
              'resnet18_head_infopro_cpu', 'resnet18_head_infopro_bp_deepsup_cpu', 'resnet18_recon_cpu',
              'resnet18_recon_late_cpu', 'resnet18_head_mixed_pred_cpu', 'cifar10_resnet18_8ep_cpu',
              'resnet18_head_goodness_seed1_cpu')


@pytest.mark.timeout(120)
def test_list_puts_the_head_screens_in_the_resnet18_heads_table():
    proc = run_cli('--list')
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    unlisted = ' '.join(line for line in lines if 'in no table yet' in line)
    assert not [n for n in HEAD_FILES if f'{n}.json' in unlisted], unlisted
    cpu = lines[lines.index(next(line for line in lines if line.startswith('resnet18_heads '))) + 1]
    assert cpu.split()[0] == 'cpu' and cpu.split()[1:] == [f'{n}.json' for n in HEAD_FILES]


def test_methods_dry_run_prints_both_bench_methods_commands(capsys):
    script, data = 'benchmarks/bench_methods.py', reproduce.DEFAULT_DATA
    assert dry_run(capsys, 'methods') == [
        ([script, '--budget', 'cnn', '--seeds', '0', '1', '--jobs', '2', '--threads', '1', '--data-dir', data],
         'methods_cnn_cpu'),
        ([script, '--budget', 'resnet18', '--seeds', '0', '--jobs', '2', '--threads', '1', '--data-dir', data],
         'methods_resnet18_cpu')]
    gpu = dry_run(capsys, 'methods', '--budget', 'gpu')
    assert [out for _, out in gpu] == ['methods_cnn_gpu', 'methods_resnet18_gpu']
    for (args, _), recipe in zip(gpu, ('hub_configs/dtgff_cnn_s.cifar10.yaml',
                                       'hub_configs/dtgff_resnet18.cifar10.yaml')):
        assert args[0] == 'benchmarks/bench_methods.py' and args[args.index('--recipe') + 1] == recipe
        assert args[args.index('--extra'):][-2:] == ['--mixed-precision', 'bf16']


@pytest.mark.timeout(120)
def test_bench_methods_recipe_is_the_one_used_and_recorded(tmp_path, monkeypatch):
    """``--recipe`` (the methods table's GPU form): its model, with its tag, for every run and the label twin; the
    result records that recipe. The runs are finished ones (reused), so nothing trains."""
    import bench_methods
    runs = tmp_path / 'runs'
    for method in ('dtg', 'ff'):
        folder = runs / f'methods_cnn_gpu-{method}-s0'
        folder.mkdir(parents=True)
        (folder / 'metrics.json').write_text(json.dumps({
            'accuracy': 50.0, 'unit_accuracy': [40.0, 50.0], 'train_images_per_s': 1.0, 'peak_memory_mb': 1.0,
            'memory_kind': 'rss', 'epochs_run': 1, 'global_step': 1, 'wall_time_s': 1.0, 'local': True,
            'history': [{'unit_accuracy': [40.0, 50.0]}]}))
        (folder / 'run_info.json').write_text(json.dumps({'command': 'train_ff.py', 'git_commit': '0' * 40}))
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, 'argv', ['bench_methods.py', '--budget', 'cnn', '--recipe', reproduce.HUB_CNN_S,
                                      '--methods', 'dtg', 'ff', '--seeds', '0', '--data-dir', '', '--runs-dir',
                                      str(runs), '--out-dir', str(tmp_path), '--name', 'methods_cnn_gpu'])
    bench_methods.main()
    result = json.loads((tmp_path / 'methods_cnn_gpu.json').read_text())
    assert result['recipe_path'] == reproduce.HUB_CNN_S
    assert result['recipe'] == (REPO / reproduce.HUB_CNN_S).read_text()
    assert result['base_model'] == 'dtgff_cnn_s.cifar10'
    assert [result['methods'][m]['runs'][0]['model'] for m in ('dtg', 'ff')] == ['dtgff_cnn_s.cifar10',
                                                                                 'ff_cnn_s.cifar10']


@pytest.mark.timeout(120)
def test_bench_methods_no_train_writes_the_finished_runs_and_lists_the_rest(tmp_path, monkeypatch):
    """A stopped benchmark: ``--no-train`` trains nothing, keeps each method's finished seeds, drops a method with
    none and names every unfinished run."""
    import bench_methods
    runs = tmp_path / 'runs'
    for method, seed, acc in (('dtg', 0, 70.0), ('dtg', 1, 72.0), ('ff', 0, 40.0)):
        folder = runs / f'methods_cnn_cpu-{method}-s{seed}'
        folder.mkdir(parents=True)
        (folder / 'metrics.json').write_text(json.dumps({
            'accuracy': acc, 'unit_accuracy': [acc - 5, acc], 'train_images_per_s': 1.0, 'peak_memory_mb': 1.0,
            'memory_kind': 'rss', 'epochs_run': 1, 'global_step': 1, 'wall_time_s': 1.0, 'local': True,
            'history': [{'unit_accuracy': [acc - 5, acc]}]}))
        (folder / 'run_info.json').write_text(json.dumps({'command': f'{REPO}/train_ff.py -c x', 'git_commit': 'c'}))
    (runs / 'methods_cnn_cpu-bp-s0' / 'checkpoints').mkdir(parents=True)  # started, not finished
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, 'argv', ['bench_methods.py', '--budget', 'cnn', '--methods', 'dtg', 'ff', 'bp',
                                      '--seeds', '0', '1', '--data-dir', '', '--runs-dir', str(runs), '--out-dir',
                                      str(tmp_path), '--no-train'])
    bench_methods.main()
    result = json.loads((tmp_path / 'methods_cnn_cpu.json').read_text())
    assert list(result['methods']) == ['dtg', 'ff'] and result['seeds'] == [0, 1]
    assert result['missing_runs'] == ['bp seed 0', 'ff seed 1', 'bp seed 1']
    assert result['methods']['dtg']['summary']['accuracy_mean'] == 71.0
    assert result['methods']['dtg']['summary']['accuracy_spread'] == 2.0
    assert result['methods']['ff']['summary']['seeds'] == 1
    assert result['methods']['dtg']['runs'][0]['train_command'] == 'train_ff.py -c x'  # relative to the repository
    assert not (runs / 'methods_cnn_cpu-bp-s0' / 'metrics.json').exists()


@pytest.mark.timeout(120)
def test_bench_methods_recipe_that_is_not_a_file_is_one_line():
    proc = subprocess.run([sys.executable, str(BENCH / 'bench_methods.py'), '--recipe', 'no/such.yaml',
                           '--data-dir', ''], cwd=REPO, capture_output=True, text=True, timeout=100, check=False)
    assert proc.returncode == 1 and not proc.stdout
    assert proc.stderr.startswith("error: --recipe 'no/such.yaml' is not a file") and proc.stderr.count('\n') == 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize('argv,message', [
    (['nonsense'], "error: unknown table 'nonsense'; allowed: cnn_s_gap, "),
    (['fsdp', '--budget', 'tpu'], "error: unknown budget 'tpu'; allowed: cpu, gpu"),
    ([], 'error: give a table (or --list); allowed: cnn_s_gap, '),
    (['audit', '--data-dir', 'no/such', '--dry-run'], 'error: data folder no/such does not exist; '),
])
def test_bad_input_is_one_line_and_exit_2(argv, message):
    proc = run_cli(*argv)
    assert proc.returncode == 2
    assert proc.stderr.startswith(message) and proc.stderr.count('\n') == 1, proc.stderr
    assert 'Traceback' not in proc.stderr and not proc.stdout


@pytest.mark.timeout(120)
@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA: --budget gpu would run')
def test_gpu_budget_without_cuda_is_refused():
    proc = run_cli('bf16', '--budget', 'gpu')
    assert proc.returncode == 2 and not proc.stdout
    assert proc.stderr.startswith('error: --budget gpu needs CUDA') and proc.stderr.count('\n') == 1


def gpu_day(*argv, timeout):
    env = dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, str(BENCH / 'gpu_day.py'), *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


@pytest.mark.timeout(120)
@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA: gpu_day.py would start its run')
def test_gpu_day_without_cuda_says_so_in_one_line(tmp_path):
    proc = gpu_day('--out', str(tmp_path), timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith('error: gpu_day.py needs CUDA') and '--smoke' in proc.stderr
    assert proc.stderr.count('\n') == 1 and not proc.stdout and not list(tmp_path.iterdir())


STEPS = ['train_bf16', 'audit', 'host_sync', 'pipeline', 'resnet18_dtg', 'resnet18_bp_deepsup']


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_gpu_day_smoke_runs_every_step_and_writes_its_files(tmp_path):
    proc = gpu_day('--smoke', '--out', str(tmp_path), timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / 'gpu_day.json').read_text())
    for key in ('command', 'git_commit', 'machine', 'seed', 'date_utc', 'minutes', 'smoke', 'steps'):
        assert key in summary
    status = {s['name']: s for s in summary['steps']}
    assert list(status) == STEPS
    assert status['pipeline']['status'] == 'skipped' and 'GPU' in status['pipeline']['reason']
    for name in STEPS:
        if name != 'pipeline':
            assert status[name]['status'] == 'ok', status[name]
            result = json.loads((tmp_path / status[name]['results']).read_text())
            for key in ('command', 'git_commit', 'machine', 'seed', 'date_utc'):
                assert key in result, (name, key)
    bf16 = json.loads((tmp_path / 'gpu_day_train_bf16.json').read_text())
    assert bf16['mixed_precision'] == 'bf16'
    assert bf16['metrics']['global_step'] == bf16['budget']['max_train_steps'] == 2
    audit = json.loads((tmp_path / 'gpu_day_audit.json').read_text())
    assert audit['configs']
    assert all(not c.get('failed') and c['peak_memory_mib'] > 0 for c in audit['configs'].values())
    sync = json.loads((tmp_path / 'gpu_day_host_sync.json').read_text())
    assert sync['passed'] and len(sync['cases']) == 10
    assert all(c['max_syncs_per_step'] <= 1 and len(c['syncs_per_step']) == 2 for c in sync['cases'])
    for obj in ('dtg', 'bp_deepsup'):
        r = json.loads((tmp_path / f'gpu_day_resnet18_{obj}.json').read_text())
        assert r['objective'] == obj and len(r['metrics']['unit_accuracy']) == 8
        assert r['recipe_file'] == 'hub_configs/dtgff_resnet18.cifar10.yaml'
    gap = json.loads((tmp_path / 'gpu_day_resnet18_gap.json').read_text())
    assert len(gap['unit_gap_pp']) == 8
    assert not list((REPO / 'benchmarks/results').glob('gpu_day*'))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_gpu_day_keeps_its_deadline(tmp_path):
    """21 s, 10 of them kept back: the first step is killed at its limit, and nothing else starts."""
    proc = gpu_day('--smoke', '--minutes', '0.35', '--out', str(tmp_path), timeout=100)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / 'gpu_day.json').read_text())
    assert [s['name'] for s in summary['steps']] == STEPS
    assert {s['status'] for s in summary['steps']} <= {'ok', 'timed_out', 'skipped'}
    assert any(s['status'] != 'ok' for s in summary['steps'] if s['name'] != 'pipeline')
    assert summary['wall_s'] < 0.35 * 60 + 30  # the deadline, plus slack for killing a child on a loaded machine
    skipped = [s for s in summary['steps'] if s['status'] == 'skipped' and s['name'] != 'pipeline']
    assert all(s['reason'].startswith('not started: it needs ~') for s in skipped)
