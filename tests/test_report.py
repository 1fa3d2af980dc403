"""benchmarks/report.py: the committed docs/results.md (and README's headline block, once it has its markers) match
the results files; and on small synthetic results: stale and uncommitted-tree marks, the renderers, the generic
fallback, and the headline's choice of numbers."""
import json
import subprocess
import sys

import pytest

from _cli import REPO

BENCH = REPO / 'benchmarks'
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import _report_tables as tables  # noqa: E402
import report  # noqa: E402

RECIPE = 'benchmarks/recipes/test_recipe.yaml'
COMMIT = 'a' * 40


class FakeRepo(report.Repo):
    """Recipes and model kwargs from dicts instead of git and timm."""

    def __init__(self, recipes_then=None, recipes_now=None, args_then=None, args_now=None, added=None):
        super().__init__()
        self.recipes_then, self.recipes_now = recipes_then or {}, recipes_now or {}
        self.args_then, self.args_now, self.added = args_then or {}, args_now or {}, added or {}

    def text_now(self, path):
        return self.recipes_now.get(path)

    def text_at(self, commit, path):
        return self.recipes_then.get(path)

    def tree(self, commit):
        return 'tree'

    def model_args(self, commit, arch):
        return (self.args_now if commit is None else self.args_then).get(arch)

    def added_default(self, commit, arch, key):
        return self.added.get(key, report.NOT_FOUND)


def run(acc, objective='dtg', extra='', **kw):
    return dict(accuracy=acc, unit_accuracy=[acc - 10.04, acc - 2.0, acc], epochs_run=5, global_step=3710,
                train_images_per_s=123.456, wall_time_s=1000.0, peak_memory_mb=1500.4,
                fusion_check={'chosen': 'unit 2'},
                train_command=f'train_ff.py -c {RECIPE} --objective {objective} --seed 0{extra}', **kw)


def gap_result(runs=None, **kw):
    """A results file of bench_cifar10_gap.py's shape."""
    result = dict(command=f'python benchmarks/bench_cifar10_gap.py --recipe {RECIPE} --jobs 2', git_commit=COMMIT,
                  git_dirty=False, machine=dict(cpu='Test CPU', cores=2, torch_threads=1, torch='2.0', timm='1.0'),
                  seed=0, date_utc='2026-01-02T03:04:05Z', jobs=2, threads_per_run=1,
                  recipe='# the test recipe\nmodel: dtgff_cnn_s\nbatch_size: 64\nepochs: 5\n',
                  runs=runs or {'dtg': run(78.5), 'bp_deepsup': run(80.0, 'bp_deepsup')})
    result.update(kw)
    return result


ARGS = {'dtgff_cnn_s': {'head_norm': 'none', 'goodness': 'grid', 'input_size': [3, 32, 32]}}


def status(result, **repo_kw):
    repo_kw.setdefault('recipes_now', {RECIPE: result['recipe']})
    repo_kw.setdefault('args_then', ARGS)
    repo_kw.setdefault('args_now', ARGS)
    return report.status(result, FakeRepo(**repo_kw), {'dtgff_cnn_s', 'ff_cnn_s'})


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_committed_results_page_matches_the_results_files():
    proc = subprocess.run([sys.executable, str(BENCH / 'report.py'), '--check'], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (f'docs/results.md or the README headline block drifted from benchmarks/results: '
                                  f'run python benchmarks/report.py\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}')


def test_every_committed_results_file_has_a_renderer_that_works():
    for name, result in report.load_results().items():
        family, rendered = tables.render(name, result)
        assert 'renderer failed' not in rendered.description, (name, rendered.description)
        assert rendered.body and all(isinstance(line, str) for line in rendered.body), name


def test_a_current_result_is_not_marked():
    st = status(gap_result())
    assert st.stale == [] and st.dirty == []


def test_a_changed_recipe_is_marked_stale_with_the_changed_keys():
    result = gap_result()
    st = status(result, recipes_now={RECIPE: result['recipe'].replace('batch_size: 64', 'batch_size: 32')})
    assert st.stale == [f'recipe `{RECIPE}` changed since `aaaaaaa`: batch_size 64 -> 32']
    comment_only = result['recipe'].replace('# the test recipe', '# reworded comment')
    assert status(result, recipes_now={RECIPE: comment_only}).stale == []
    assert status(result, recipes_now={}).stale == [f'recipe `{RECIPE}` removed since `aaaaaaa`']


def test_a_recipe_key_every_run_set_by_its_own_flag_does_not_make_it_stale():
    now = {RECIPE: gap_result()['recipe'].replace('batch_size: 64', 'batch_size: 32').replace('epochs: 5', 'epochs: 9')}
    both = gap_result(runs={'dtg': run(78.5, extra=' --batch-size 128'),
                            'bp_deepsup': run(80.0, 'bp_deepsup', extra=' --batch-size=128')},
                      command=f'python benchmarks/bench_cifar10_gap.py --recipe {RECIPE} --extra --batch-size 128')
    assert status(both, recipes_now=now).stale == [f'recipe `{RECIPE}` changed since `aaaaaaa`: epochs 5 -> 9']
    one = gap_result(runs={'dtg': run(78.5, extra=' --batch-size 128'), 'bp_deepsup': run(80.0, 'bp_deepsup')})
    assert status(one, recipes_now=now).stale == [
        f'recipe `{RECIPE}` changed since `aaaaaaa`: batch_size 64 -> 32, epochs 5 -> 9']
    prefix = gap_result(runs={'dtg': run(78.5, extra=' --batch-size-per-unit 128')})
    assert 'batch_size 64 -> 32' in status(prefix, recipes_now=now).stale[0]
    assert status(both, recipes_now={RECIPE: now[RECIPE].replace('epochs: 9', 'epochs: 5')}).stale == []


def test_a_recipe_without_recorded_text_is_read_at_the_commit():
    result = gap_result()
    old = result.pop('recipe')
    st = report.status(result, FakeRepo(recipes_then={RECIPE: old}, recipes_now={RECIPE: old + 'lr: 0.1\n'},
                                        args_then=ARGS, args_now=ARGS), {'dtgff_cnn_s'})
    assert st.stale == [f'recipe `{RECIPE}` changed since `aaaaaaa`: lr added (0.1)']


def test_changed_model_defaults_are_marked_stale_unless_the_run_set_them():
    now = {'dtgff_cnn_s': dict(ARGS['dtgff_cnn_s'], head_norm='batchnorm')}
    assert status(gap_result(), args_now=now).stale == [
        'model defaults changed since `aaaaaaa`: `dtgff_cnn_s` head_norm none -> batchnorm']
    own = ' --model-kwargs {"head_norm": "batchnorm"}'
    result = gap_result(runs={'dtg': run(78.5, extra=own), 'bp_deepsup': run(80.0, 'bp_deepsup', extra=own)})
    assert status(result, args_now=now).stale == []


def test_a_kwarg_added_since_counts_only_when_its_default_changed_after():
    now = {'dtgff_cnn_s': dict(ARGS['dtgff_cnn_s'], head='goodness', unit_norm='batchnorm')}
    st = status(gap_result(), args_now=now, added={'head': 'goodness', 'unit_norm': 'layernorm'})
    assert st.stale == [('model defaults changed since `aaaaaaa`: `dtgff_cnn_s` unit_norm layernorm -> batchnorm '
                         '(kwarg added since)')]
    assert status(gap_result(), args_now=now).stale == []  # where each was added is unknown: not counted


def test_models_are_found_in_commands_fields_and_names():
    recipes = {RECIPE: 'model: dtgff_cnn_s.cifar10\nmodel_kwargs: {goodness: channel}\n'}
    result = {'runs': {'a': {'train_command': f'train_ff.py -c {RECIPE} --model-kwargs {{"head_norm": "x"}}'},
                       'b': {'train_command': f'train_ff.py -c {RECIPE} --model ff_cnn_s'}},
              'rows': [{'model': 'dtgff_mlp', 'model_kwargs': {'head': 'pred'}}], 'dtgff_resnet18': {'x': 1},
              'note': 'prose naming ff_mlp is not a model run'}
    found = report.trained_models(result, recipes, {'dtgff_cnn_s', 'ff_cnn_s', 'dtgff_mlp', 'dtgff_resnet18',
                                                    'ff_mlp'})
    assert found == {('dtgff_cnn_s', '{"goodness": "channel", "head_norm": "x"}'),
                     ('ff_cnn_s', '{"goodness": "channel"}'), ('dtgff_mlp', '{"head": "pred"}'),
                     ('dtgff_resnet18', '{}')}


def test_an_uncommitted_tree_is_marked():
    st = status(gap_result(git_dirty=True, dirty_files=['timm_ff/models/cnn.py']))
    assert st.dirty == ['measured on an uncommitted tree (changes on top of `aaaaaaa`: `timm_ff/models/cnn.py`)']
    # other results files written earlier in the same batch: the committed code was measured
    assert status(gap_result(git_dirty=True, dirty_files=['benchmarks/results/a_cpu.json'])).dirty == []
    both = ['benchmarks/results/a_cpu.json', 'benchmarks/recipes/r.yaml']
    assert status(gap_result(git_dirty=True, dirty_files=both)).dirty[0].startswith('measured on an uncommitted tree')
    runs = {'dtg': run(78.5, run_commit=COMMIT + '-dirty'), 'bp_deepsup': run(80.0, run_commit=COMMIT)}
    assert status(gap_result(runs=runs)).dirty == ['1 run trained on an uncommitted tree: `dtg`']


def test_the_page_shows_marks_provenance_and_plot(tmp_path, monkeypatch):
    monkeypatch.setattr(report, 'RESULTS', tmp_path)
    (tmp_path / 'cifar10_test_cpu.png').write_bytes(b'png')
    results = {'cifar10_test_cpu.json': gap_result(git_dirty=True, gap_pp=1.5, unit_gap_pp=[-1.0, 1.0, 1.5],
                                                   new_field_pp=0.25)}
    stats = {'cifar10_test_cpu.json': report.Status(stale=['recipe changed'], dirty=['uncommitted'])}
    page = report.render_doc(results, stats)
    assert page.startswith('# Measured results\n\nGenerated by `python benchmarks/report.py`')
    assert ('| [`cifar10_test_cpu.json`](#cifar10_test_cpu) | Accuracy: one recipe, several objectives | `aaaaaaa` | '
            '2026-01-02 | **stale**, uncommitted tree |') in page
    assert '> **Stale**: recipe changed.' in page and '> **Uncommitted tree**: uncommitted.' in page
    assert '| `dtg` | 78.50% | unit 2 | 68.5 / 76.5 / 78.5 | 5 | 123 | 1500 | 1000 |' in page
    assert '- gap `bp_deepsup` - `dtg`: **1.50 pp**' in page and '- per-unit gap' in page
    assert '- `new_field_pp`: 0.25' in page  # an optional field the renderer does not know is still shown
    assert ('Measured at `aaaaaaa` (uncommitted tree) on 2026-01-02, Test CPU (2 cores, 1 torch thread; torch 2.0, '
            'timm 1.0), seed 0.') in page
    assert f'Reproduce: `python benchmarks/bench_cifar10_gap.py --recipe {RECIPE} --jobs 2`' in page
    assert 'plot [`cifar10_test_cpu.png`](../benchmarks/results/cifar10_test_cpu.png)' in page


def test_a_recorded_command_is_shell_quoted_and_its_note_is_not_repeated(monkeypatch):
    """Commands are recorded with shlex.join, so a note or a JSON flag survives a copy into a shell; the page shows
    the note once, above the command, whichever way the command quoted it."""
    import shlex
    import _provenance
    argv = ['benchmarks/bench_methods.py', '--note', "ff's eval: 10 passes", '--extra', '--model-kwargs', '{"a": 1}']
    monkeypatch.setattr(sys, 'argv', argv)
    command = _provenance.provenance(0)['command']
    assert shlex.split(command)[1:] == argv
    for recorded in (command, ' '.join(['python', *argv])):  # shlex.join now, a plain join in older files
        lines = report.provenance('x.json', dict(command=recorded, note=argv[2], git_commit=COMMIT), '')
        shown = next(line for line in lines if line.startswith('Reproduce: '))
        assert argv[2] not in shown and '"<the note above>"' in shown and '--model-kwargs' in shown, shown


def test_the_generic_fallback_renders_an_unknown_file():
    result = dict(command='python benchmarks/bench_new.py', git_commit=COMMIT, seed=0, speedup=1.2345,
                  nested={'a': {'b': 2}}, long_text='x' * 500, rows=[{'model': 'm', 'img_per_s': 10.0}])
    family, rendered = tables.render('brand_new_cpu.json', result)
    assert family is tables.GENERIC
    text = '\n'.join(rendered.body)
    assert '| `speedup` | 1.23 |' in text and '| `nested.a.b` | 2 |' in text and 'long_text' not in text
    assert '| model | img_per_s |' in text and '| m | 10.00 |' in text
    family, rendered = tables.render('cifar10_broken_cpu.json', dict(result, runs='not a dict'))
    assert family is tables.GENERIC and 'render_runs renderer failed' in rendered.description


def test_throughput_head_ratios_are_rendered():
    result = dict(command='python benchmarks/bench_throughput.py --heads pred', batch_size=64, mixed_precision='no',
                  rows=[{'model': 'dtgff_resnet18', 'kind': 'head', 'objective': 'dtg', 'img_per_s': 10.0}],
                  head_ratios={'dtgff_resnet18': {'pred': {'dtg': dict(img_per_s=40.0, rounds=3, peak_memory_mb=900.0,
                                                                        head_params=330000,
                                                                        step_time_over_goodness=1.25)}}})
    family, rendered = tables.render('throughput_heads_cpu.json', result)
    assert family.render is tables.render_throughput
    assert '| `dtgff_resnet18` | `pred` | `dtg` | 40.0 | 1.25x | 900 | 330k | 3 |' in rendered.body
    skipped = dict(result, ratios={'dtgff_resnet18': {'dtg_over_bp': None, 'trainer_overhead_pct': None}})
    assert 'Ratios of img/s:' not in tables.render('throughput_heads_cpu.json', skipped)[1].body  # --skip-trainer


def test_the_headline_picks_the_best_current_number(monkeypatch):
    monkeypatch.setattr(report, 'HEADLINE', {
        'dtgff_cnn_s': {'objective': 'dtg', 'gap_to': ('dtgff_cnn_s', 'bp_deepsup'),
                        'files': {'a.json': None, 'b.json': None, 'c.json': None}},
        'ff_cnn_s': {'objective': 'ff', 'gap_to': ('dtgff_cnn_s', 'dtg'), 'files': {'r.json': {'ff_5ep': 'ff'}}}})
    results = {
        'a.json': gap_result(runs={'dtg': run(78.0), 'bp_deepsup': run(81.0, 'bp_deepsup')}),
        'b.json': gap_result(runs={'dtg': run(79.0)}),  # better, but stale
        'c.json': gap_result(runs={'dtg': run(78.5), 'ff': run(30.0, 'ff', extra=' --model ff_cnn_s')}),
        'r.json': {'runs': {'ff_5ep': {'accuracy': 38.2, 'epochs_run': 5, 'data': {'train_rows': 50000},
                                       'train_command': 'train_ff.py --model ff_cnn_s'},
                            'ff_2ep': {'accuracy': 40.0, 'epochs_run': 2}}},
    }
    stats = {name: report.Status() for name in results}
    stats['b.json'] = report.Status(stale=['recipe changed'])
    repo = FakeRepo(recipes_then={RECIPE: results['a.json']['recipe']})
    cells = report.headline_cells(results, stats, repo)
    assert cells[('dtgff_cnn_s', 'dtg')].file == 'c.json' and cells[('dtgff_cnn_s', 'dtg')].accuracy == 78.5
    assert ('dtgff_cnn_s', 'ff') not in cells  # c.json's ff run trained ff_cnn_s, not this model
    assert cells[('ff_cnn_s', 'ff')].accuracy == 38.2  # only the mapped run counts
    block = report.render_headline(results, stats, repo)
    assert block.startswith(report.BEGIN) and block.endswith(report.END)
    assert ('| `dtgff_cnn_s` | **78.50%** | 81.00% |  |  | 2.50 (vs `bp_deepsup`) | 47.5k x 5 | '
            '[`a.json`](benchmarks/results/a.json), [`c.json`](benchmarks/results/c.json) |') in block
    assert '| `ff_cnn_s` |  |  |  | **38.20%** | 40.30 (vs `dtgff_cnn_s` `dtg`) | 50.0k x 5 |' in block
    stats['c.json'] = report.Status(stale=['model defaults changed'])
    stats['b.json'] = report.Status()
    assert report.headline_cells(results, stats, repo)[('dtgff_cnn_s', 'dtg')].file == 'b.json'


def test_only_the_block_between_the_markers_is_replaced():
    text = f'# Title\n\nbefore\n{report.BEGIN}\nold table\n{report.END}\nafter\n'
    new = report.replace_block(text, f'{report.BEGIN}\nnew table\n{report.END}')
    assert new == f'# Title\n\nbefore\n{report.BEGIN}\nnew table\n{report.END}\nafter\n'
    assert report.replace_block('# no markers\n', 'x') is None
    assert report.replace_block(f'{report.END}\n{report.BEGIN}\n', 'x') is None


def test_check_reports_drift_and_write_fills_the_block(tmp_path, monkeypatch, capsys):
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO, capture_output=True, text=True).stdout.strip()
    results = tmp_path / 'results'
    results.mkdir()
    (results / 'ksweep_tiny_cpu.json').write_text(json.dumps(dict(
        command='python benchmarks/bench_ksweep.py', git_commit=head, git_dirty=False, seed=0, models={'t': 'm'},
        tasks={'t': {'2': {'runs': {'dtg': {'accuracy': 90.0}, 'bp_deepsup': {'accuracy': 91.0}}}}})))
    readme = tmp_path / 'README.md'
    monkeypatch.setattr(report, 'RESULTS', results)
    monkeypatch.setattr(report, 'DOC', tmp_path / 'docs/results.md')
    monkeypatch.setattr(report, 'README', readme)
    readme.write_text('# No markers yet\n')
    assert report.main([]) == 0
    assert 'has no <!-- report:headline:begin --> ... <!-- report:headline:end --> markers' in capsys.readouterr().err
    assert readme.read_text() == '# No markers yet\n'
    assert '### ksweep_tiny_cpu' in (tmp_path / 'docs/results.md').read_text()
    assert report.main(['--check']) == 0
    readme.write_text(f'# Title\n{report.BEGIN}\nhand-typed\n{report.END}\nrest\n')
    capsys.readouterr()
    assert report.main(['--check']) == 1
    assert '-hand-typed' in capsys.readouterr().out
    assert report.main([]) == 0
    assert report.main(['--check']) == 0
    text = readme.read_text()
    assert text.startswith(f'# Title\n{report.BEGIN}\n| model |') and text.endswith(f'{report.END}\nrest\n')
    (tmp_path / 'docs/results.md').write_text('edited by hand\n')
    capsys.readouterr()
    assert report.main(['--check']) == 1
    assert '-edited by hand' in capsys.readouterr().out


def methods_result(**methods):
    """A results file of bench_methods.py's shape: {name: (local, [accuracy per seed])}."""
    def method(local, accs, **kw):
        runs = [dict(accuracy=a, unit_accuracy=[a - 10.0, a], epochs_run=5, global_step=7420, seed=s,
                     train_images_per_s=500.0 + s, peak_memory_mb=1200.0 + s, model_kwargs_added={})
                for s, a in enumerate(accs)]
        return dict(objective='dtg', local=local, label_in_input=False, negatives=False, paper='Someone et al. 2020, A',
                    source='owner/repo, train.py', published='90.00%: a bigger net, 400 epochs', runs=runs,
                    summary=dict(accuracy_mean=sum(accs) / len(accs), accuracy_spread=max(accs) - min(accs),
                                 seeds=len(accs), unit_accuracy_mean=[sum(accs) / len(accs) - 10.0,
                                                                      sum(accs) / len(accs)],
                                 train_images_per_s_mean=500.5, peak_memory_mb_max=1201.0), **kw)
    return dict(command='python benchmarks/bench_methods.py --budget cnn', git_commit=COMMIT, git_dirty=False,
                seed=0, date_utc='2026-01-02T03:04:05Z', budget='cnn', base_model='dtgff_cnn_s',
                recipe_path='benchmarks/recipes/cifar10_cnn_s_cpu.yaml', recipe='model: dtgff_cnn_s\nbatch_size: 32\n',
                jobs=2, threads_per_run=1, best='x', best_local='y',
                methods={name: method(local, accs) for name, (local, accs) in methods.items()})


def test_the_methods_table_ranks_methods_and_says_where_dtg_stands():
    result = methods_result(dtg=(True, [78.0, 79.0]), predsim=(True, [75.0, 76.0]),
                            bp_deepsup=(False, [81.0, 82.0]))
    family, rendered = tables.render('methods_cnn_cpu.json', result)
    assert family.render is tables.render_methods
    text = '\n'.join(rendered.body)
    rows = [line for line in rendered.body if line.startswith('| `')]
    assert [r.split(' | ')[0] for r in rows] == ['| `bp_deepsup`', '| `dtg`', '| `predsim`']  # best first
    assert '| `dtg` | `dtg` | yes | no | no | 78.50% | 1.00 | 78.00% / 79.00% | 68.5 / 78.5 | 500 | 1201 |' in text
    assert '| `bp_deepsup` | `dtg` | **no** |' in text
    assert '- best: `bp_deepsup` 81.50% (not layer-local)' in text
    assert '- best strictly-local: DTG-FF (`dtg`) 78.50%, 3.00 pp ahead of the next one, `predsim` 75.50%' in text
    assert '- `dtg` minus `bp_deepsup`: -3.00 pp' in text
    assert '47.5k x 5 images x epochs' in rendered.description
    better = methods_result(dtg=(True, [70.0]), dgl=(True, [72.5]))
    text = '\n'.join(tables.render('methods_cnn_cpu.json', better)[1].body)
    assert '- best strictly-local: `dgl` 72.50%, 2.50 pp ahead of DTG-FF (`dtg`, 70.00%)' in text


def test_the_readme_methods_block_renders_each_budget_or_says_it_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(report, 'RESULTS', tmp_path)  # no plot beside the file
    results = {'methods_cnn_cpu.json': methods_result(dtg=(True, [78.0, 79.0]), bp=(False, [80.0, 80.0]))}
    stats = {'methods_cnn_cpu.json': report.Status(stale=['recipe changed'])}
    block = report.render_methods_block(results, stats)
    assert block.startswith(report.METHODS_BEGIN) and block.endswith(report.METHODS_END)
    assert ("**A 4-unit CNN** (`dtgff_cnn_s`'s recipe `benchmarks/recipes/cifar10_cnn_s_cpu.yaml`: 47.5k x 5 images "
            'x epochs, 2 seeds per method; [`methods_cnn_cpu.json`](benchmarks/results/methods_cnn_cpu.json); '
            '[stale](docs/results.md#methods_cnn_cpu)):') in block
    assert ('| `dtg` | yes | no | no | 78.50% ± 0.50 | 2 | 68.5 / 78.5 | 500 | 1201 | 90.00%: a bigger net, '
            '400 epochs | Someone et al. 2020; [owner/repo](https://github.com/owner/repo) |') in block
    assert '| `bp` | **no** |' in block and '- `dtg` minus `bp`: -1.50 pp' in block
    assert '- not finished' not in block
    results['methods_cnn_cpu.json']['missing_runs'] = ['bp seed 1']
    assert '- not finished when the table was written: bp seed 1' in report.render_methods_block(results, stats)
    results['methods_cnn_cpu.json']['note'] = 'bp seed 1 was stopped: it would not end in time.'
    assert ('- not finished when the table was written: bp seed 1\n- bp seed 1 was stopped: it would not end in '
            'time.\n') in report.render_methods_block(results, stats)
    assert '- bp seed 1 was stopped' in '\n'.join(tables.render('methods_cnn_cpu.json',
                                                                  results['methods_cnn_cpu.json'])[1].body)
    del results['methods_cnn_cpu.json']['note']
    (tmp_path / 'methods_cnn_cpu.png').write_bytes(b'png')
    assert ('; [`methods_cnn_cpu.json`](benchmarks/results/methods_cnn_cpu.json), per-unit curves '
            '[`methods_cnn_cpu.png`](benchmarks/results/methods_cnn_cpu.png); [stale]') in report.render_methods_block(
                results, stats)
    assert '**ResNet-18**: not measured yet (`python benchmarks/reproduce.py methods` writes' in block
    text = f'a\n{report.BEGIN}\nx\n{report.END}\n{report.METHODS_BEGIN}\nold\n{report.METHODS_END}\nb\n'
    new = report.replace_block(text, block, report.METHODS_BEGIN, report.METHODS_END)
    assert new == f'a\n{report.BEGIN}\nx\n{report.END}\n{block}\nb\n'


def test_the_depth_block_averages_the_fall_per_seed_and_gives_both_gaps(tmp_path, monkeypatch):
    monkeypatch.setattr(report, 'RESULTS', tmp_path)
    spec = dict(model='dtgff_cnn_s', budget='1k x 2', png='depth.png', dtg=('d0.json', 'd1.json'),
                bp_deepsup=('b.json',))
    monkeypatch.setattr(report, 'DEPTH', (spec, dict(spec, budget='9k x 9', dtg=('gone.json',))))
    results = {
        'd0.json': gap_result(runs={'dtg': dict(run(60.0), unit_accuracy=[58.0, 62.0, 57.0])}),
        'd1.json': gap_result(runs={'dtg': dict(run(61.0), unit_accuracy=[59.0, 60.0, 59.0])}),
        'b.json': gap_result(runs={'bp_deepsup': dict(run(64.0, 'bp_deepsup'), unit_accuracy=[57.0, 63.0, 62.0]),
                                   'dtg': dict(run(1.0), unit_accuracy=[1.0, 1.0, 1.0])}),
    }
    stats = {name: report.Status() for name in results}
    stats['b.json'] = report.Status(stale=['recipe changed'])
    block = report.render_depth_block(results, stats)
    assert block.startswith(report.DEPTH_BEGIN) and block.endswith(report.DEPTH_END)
    # dtg: falls 5 and 1 (mean 3), last units 57 and 59 (mean 58), best of the mean curve unit 1; bp_deepsup falls 1
    assert ('| `dtgff_cnn_s` | 1k x 2 | 2 / 1 | 60.50% / 64.00% | 3.50 | 1 / 1 of 3 | 3.00 / 1.00 | 2.00 | 4.00 | '
            '[`d0.json`](benchmarks/results/d0.json), [`d1.json`](benchmarks/results/d1.json), '
            '[`b.json`](benchmarks/results/b.json) (stale) |') in block
    assert '| `dtgff_cnn_s` | 9k x 9 | not measured |' in block
    (tmp_path / 'depth.png').write_bytes(b'png')
    assert '; plot [`depth.png`](benchmarks/results/depth.png) (stale) |' in report.render_depth_block(results, stats)
    text = f'a\n{report.DEPTH_BEGIN}\nold\n{report.DEPTH_END}\nb\n'
    assert report.replace_block(text, block, report.DEPTH_BEGIN, report.DEPTH_END) == f'a\n{block}\nb\n'


def test_the_headline_reads_a_methods_file_by_method_name(monkeypatch):
    monkeypatch.setattr(report, 'HEADLINE', {
        'dtgff_cnn_s': {'objective': 'dtg', 'gap_to': ('dtgff_cnn_s', 'bp_deepsup'),
                        'files': {'methods_cnn_cpu.json': {'dtg': 'dtg', 'bp_deepsup': 'bp_deepsup'}}}})
    result = methods_result(dtg=(True, [78.0, 79.0]), bp_deepsup=(False, [81.0, 80.0]), dgl=(True, [90.0]))
    for m in result['methods'].values():
        for r in m['runs']:
            r['train_command'] = 'train_ff.py -c benchmarks/recipes/cifar10_cnn_s_cpu.yaml --model dtgff_cnn_s'
    result['methods']['dtg']['runs'][1]['run_commit'] = COMMIT + '-dirty'
    results, stats = {'methods_cnn_cpu.json': result}, {'methods_cnn_cpu.json': report.Status()}
    cells = report.headline_cells(results, stats, FakeRepo())
    assert cells[('dtgff_cnn_s', 'dtg')].accuracy == 79.0 and cells[('dtgff_cnn_s', 'bp_deepsup')].accuracy == 81.0
    assert ('dtgff_cnn_s', 'dgl') not in cells  # only the mapped methods count
    assert cells[('dtgff_cnn_s', 'dtg')].budget == '47.5k x 5'
    assert status(result).dirty == ['1 run trained on an uncommitted tree: `dtg`']


def test_the_test_command_file_shows_pytest_summary_not_an_empty_epoch_table():
    result = dict(block='tests', readme_command='python -m pytest -q', returncode=0, wall_time_s=812.3, epochs=[],
                  final_accuracy=None, pytest_summary='718 passed in 800.12s (0:13:20)')
    family, out = tables.render('test_command_cpu.json', result)
    body = '\n'.join(out.body)
    assert '`718 passed in 800.12s (0:13:20)`' in body and '812 s' in body and 'exit code 0' in body
    assert '| epoch |' not in body and 'test command' in out.description
    assert family.render is tables.render_first_command
    main = tables.render_first_command(dict(readme_command='x', returncode=0, wall_time_s=130.0, final_accuracy=46.6,
                                            epochs=[dict(epoch=0, loss=1.0, accuracy=46.6, unit_accuracy=[40.0])]))
    assert '| epoch |' in '\n'.join(main.body) and '**46.60%**' in '\n'.join(main.body)
