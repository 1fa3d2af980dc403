"""README.md and docs/*.md: what they show must stay true as the code moves.

The README is a front page (at most 250 lines) whose set-up commands are the ones CI and the first-command
benchmark run; every relative link resolves; every ``train_ff.py`` flag shown exists in its parser; every model
named in an example is registered; the model table's parameter counts and heads are the registry's; the Python
quickstart and the "own rules" example run as written; and measured figures are linked, not typed, outside the
blocks allowed to hold them.
"""
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from _cli import env

import timm_ff
from timm_ff.layers.heads import HEADS
from timm_ff.models._hub_org import RELEASED_TAGS

REPO = Path(__file__).resolve().parent.parent
README = REPO / 'README.md'
# written by benchmarks/report.py from benchmarks/results/ (checked by tests/test_report.py), so not checked here;
# it may be missing before the script first runs
GENERATED = {(REPO / 'docs' / 'results.md').resolve()}
DOCS = [p for p in sorted((REPO / 'docs').glob('*.md')) if p.resolve() not in GENERATED]
PAGES = [README, *DOCS]
HEADLINE = ('<!-- report:headline:begin -->', '<!-- report:headline:end -->')
README_SECTIONS = ('## Set up', '## Quickstart in Python', '## Quickstart on the command line', '## Results',
                   '## Local learning rules under one recipe', '## Models', '## Documentation')
METHODS_BLOCK = ('<!-- report:methods:begin -->', '<!-- report:methods:end -->')
FENCE = re.compile(r'^```([\w-]*)\n(.*?)^```', re.DOTALL | re.MULTILINE)
INLINE_CODE = re.compile(r'`([^`\n]+)`')
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')
REPO_PATH = re.compile(r'^(benchmarks|hub_configs|release|timm_ff|tests|docs|\.ci)/[\w./-]+$')


def text(page: Path) -> str:
    return page.read_text()


def code_blocks(page: Path, lang: str | None = None):
    """(language, body) of every fenced block of ``page``, optionally only those of one language."""
    return [(lg, body) for lg, body in FENCE.findall(text(page)) if lang is None or lg == lang]


def prose(page: Path) -> str:
    """The page without its fenced blocks."""
    return FENCE.sub('', text(page))


def slug(heading: str) -> str:
    """A forge's anchor for a heading: lower case, punctuation but '-' and '_' dropped, spaces to hyphens."""
    h = re.sub(r'[`*]', '', heading.strip().lower())
    return re.sub(r'[^\w\- ]', '', h).replace(' ', '-')


def anchors(page: Path) -> set:
    return {slug(h) for h in re.findall(r'^#+ (.+)$', prose(page), re.MULTILINE)}


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_readme_is_a_front_page_in_the_agreed_order():
    lines = text(README).splitlines()
    assert len(lines) <= 250, f'README.md has {len(lines)} lines; move detail into docs/'
    positions = [text(README).find(f'\n{s}\n') for s in README_SECTIONS]
    assert all(p > 0 for p in positions), dict(zip(README_SECTIONS, positions))
    assert positions == sorted(positions), 'README sections out of order'
    begin, end = (text(README).count(m) for m in HEADLINE)
    assert begin == end == 1, 'the headline block needs exactly one begin and one end marker'
    block = text(README).split(HEADLINE[0])[1].split(HEADLINE[1])[0]
    assert text(README).index(HEADLINE[0]) > positions[README_SECTIONS.index('## Results')]
    assert block.strip().startswith('|'), 'the headline block holds one table'
    assert [text(README).count(m) for m in METHODS_BLOCK] == [1, 1], 'the methods block needs one pair of markers'
    section = README_SECTIONS.index('## Local learning rules under one recipe')
    assert positions[section] < text(README).index(METHODS_BLOCK[0]) < positions[section + 1]


def test_every_docs_page_is_reachable_from_the_readme():
    linked = {(README.parent / t.split('#')[0]).resolve() for t in LINK.findall(prose(README))}
    linked |= {(REPO / 'docs' / t.split('#')[0]).resolve() for t in LINK.findall(prose(REPO / 'docs' / 'index.md'))}
    missing = [rel(p) for p in DOCS if p.resolve() not in linked]
    assert not missing, f'docs pages linked from neither README.md nor docs/index.md: {missing}'


@pytest.mark.parametrize('page', PAGES, ids=rel)
def test_relative_links_and_anchors_resolve(page):
    bad = []
    for target in LINK.findall(prose(page)):
        if re.match(r'^[a-z]+:', target):  # http(s):, mailto:
            continue
        path, _, anchor = target.partition('#')
        dest = (page.parent / path).resolve() if path else page.resolve()
        if dest in GENERATED and not dest.exists():
            assert not anchor, f'{target}: no anchors into a generated page that does not exist yet'
            continue
        if not dest.exists():
            bad.append(f'{target}: no such file')
        elif anchor and dest.suffix == '.md' and anchor not in anchors(dest):
            bad.append(f'{target}: no heading with anchor #{anchor} in {rel(dest)}')
    assert not bad, f'{rel(page)}: {bad}'


@pytest.mark.parametrize('page', PAGES, ids=rel)
def test_repository_paths_named_in_inline_code_exist(page):
    """`benchmarks/results/x.json`-style references in the prose name files that are committed."""
    bad = []
    for span in INLINE_CODE.findall(prose(page)):
        if REPO_PATH.match(span) and not re.search(r'[<>{}*]|RUN|NAME|ORG', span):
            dest = (REPO / span).resolve()
            if dest not in GENERATED and not dest.exists():
                bad.append(span)
    assert not bad, f'{rel(page)} names paths that do not exist: {bad}'


def _commands(page: Path):
    """Every train_ff.py command shown on a page (continuation lines joined): code blocks and inline code."""
    found = []
    for _, body in code_blocks(page):
        for line in body.replace('\\\n', ' ').splitlines():
            if 'train_ff.py' in line:
                found.append(line)
    found += [span for span in INLINE_CODE.findall(prose(page)) if 'train_ff.py ' in span]
    return found


def _flags(command: str):
    """(flag, value or None) of the part of ``command`` after train_ff.py (launcher flags before it don't count)."""
    tokens = shlex.split(command.split('train_ff.py', 1)[1], comments=True)
    out = []
    for i, tok in enumerate(tokens):
        if tok.startswith('-') and not tok.startswith('['):
            flag, _, value = tok.partition('=')
            nxt = tokens[i + 1] if i + 1 < len(tokens) else None
            out.append((flag, value or (nxt if nxt is not None and not nxt.startswith('-') else None)))
    return out


def _train_ff():
    spec = importlib.util.spec_from_file_location('train_ff_for_docs', REPO / 'train_ff.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_train_ff_flag_shown_exists_and_its_json_parses():
    parser = _train_ff().build_parser()
    options = {s: a for a in parser._actions for s in a.option_strings}
    bad, seen = [], 0
    for page in PAGES:
        for command in _commands(page):
            for flag, value in _flags(command):
                seen += 1
                action = options.get(flag)
                if action is None:
                    bad.append(f'{rel(page)}: {flag} (in: {command.strip()})')
                elif action.type is json.loads and value is not None and not re.fullmatch(r'[A-Z]+', value):
                    try:
                        json.loads(value)
                    except json.JSONDecodeError:
                        bad.append(f'{rel(page)}: {flag} {value!r} is not JSON')
                if flag == '-c' and value and not value.startswith('hf-hub:') and '<' not in value \
                        and not (REPO / value).exists():
                    bad.append(f'{rel(page)}: recipe {value} does not exist')
                if flag == '--model' and value:
                    arch = timm.models.split_model_name_tag(value)[0]
                    if arch not in timm.list_models():
                        bad.append(f'{rel(page)}: --model {value} is not registered')
    assert seen > 50, 'the flag scan found too few flags: has the page format changed?'
    assert not bad, '\n'.join(bad)


def test_every_model_named_in_an_example_is_registered():
    bad = []
    for page in PAGES:
        for _, body in code_blocks(page, 'python'):
            for name in re.findall(r"create_model\(\s*'([^']+)'", body):
                if name.startswith('hf-hub:'):
                    continue
                if name.startswith('local-dir:'):
                    path = name.split(':', 1)[1]
                    if 'RUN' not in path and not (REPO / path / 'config.json').exists():
                        bad.append(f'{rel(page)}: {name}: no such folder')
                    continue
                arch, tag = timm.models.split_model_name_tag(name)
                if arch not in timm.list_models() or (tag and name not in timm.list_pretrained()):
                    bad.append(f'{rel(page)}: {name}')
    assert not bad, bad


def _bash_blocks_after(heading: str):
    section = text(README)[text(README).index(heading):]
    return [body.strip() for lang, body in FENCE.findall(section) if lang == 'bash']


def _bench_first_command():
    spec = importlib.util.spec_from_file_location('bench_first_command', REPO / 'benchmarks' / 'bench_first_command.py')
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_setup_commands_are_the_ones_ci_and_the_first_command_benchmark_run():
    first, tests = _bash_blocks_after('## Set up')[:2]
    ci = (REPO / '.ci' / 'run').read_text().splitlines()
    marker = ci.index('# --- README test command (keep identical) ---')
    venv = 'python3 -m venv .venv && . .venv/bin/activate && '
    assert 'python3 -m venv .venv' in ci and '. .venv/bin/activate' in ci, '.ci/run makes and enters the venv'
    assert tests == venv + ci[marker + 1], ".ci/run's test command differs from the README's"
    assert "README's test command" in ci[1], ".ci/run's comment line says what it runs"
    bench = _bench_first_command()
    assert bench.first_command(text(README)) == first and bench.setup_command(text(README), 1) == tests
    assert first.startswith('python3 -m venv .venv && ') and 'accelerate launch train_ff.py' in first
    assert tests.startswith('python3 -m venv .venv && ') and tests.endswith('python -m pytest -q')


def test_first_command_benchmark_reads_pytests_summary_and_slowest_tests(tmp_path):
    """bench_first_command.py parses what pytest prints: the summary line and the ``--durations`` lines that
    pyproject's addopts asks for (the slowest tests of a fresh-clone run land in test_command_cpu.json)."""
    bench = _bench_first_command()
    assert '--durations=' in (REPO / 'pyproject.toml').read_text()
    (tmp_path / 'test_tiny.py').write_text(
        'import time, pytest\n'
        '@pytest.mark.parametrize("x", ["a b", "c"])\n'
        'def test_slow(x):\n    time.sleep(0.3 if x == "a b" else 0.05)\n'
        'def test_fails():\n    assert False\n')
    proc = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '--durations=2',
                           'test_tiny.py'], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert bench.PYTEST_SUMMARY.findall(out)[-1].startswith('1 failed, 2 passed in '), out
    slowest = bench.DURATION_LINE.findall(out)
    assert len(slowest) == 2, out
    seconds, phase, test = slowest[0]
    assert float(seconds) >= 0.3 and phase == 'call' and test == 'test_tiny.py::test_slow[a b]', slowest


def _model_table():
    section = text(README).split('\n## Models\n')[1].split('\n## ')[0]
    rows = [r for r in section.splitlines() if r.startswith('| `')]
    return [[c.strip() for c in r.strip('|').split('|')] for r in rows]


# tiny shapes of each family, so every head can be built quickly (head compatibility depends on the family)
TINY = {'resnet': {'layers': (1, 1, 1, 1), 'channels': (8, 16, 32, 64)}, 'cnn': {'channels': (8, 16, 32, 64)},
        'mlp': {'widths': (16, 16, 16, 16)}}


def test_model_table_is_the_registry():
    rows = _model_table()
    names = [r[0].strip('`') for r in rows]
    assert sorted(names) == sorted(timm.list_models(['dtgff_*', 'ff_*'])), 'the table must list every model once'
    for name, units, params, objective, heads in rows:
        name = name.strip('`')
        model = timm.create_model(name)
        count = sum(p.numel() for p in model.parameters()) / 1e6
        assert params == f'{count:.2f}M', f'{name}: README says {params}, the model has {count:.2f}M parameters'
        assert int(units.split()[0]) == len(model.local_units()), name
        assert objective.strip('`') == ('ff' if model.label_embed_enabled else 'dtg'), name
        listed = [h.strip(' `') for h in heads.split(',')]
        family = TINY[next(k for k in TINY if k in name)]
        builds = []
        for head in HEADS:
            try:
                timm.create_model(name, head=head, **family)
                builds.append(head)
            except timm_ff.ConfigError:
                pass
        assert listed == builds, f'{name}: README lists heads {listed}, the model builds {builds}'


def test_readme_python_quickstart_runs(monkeypatch):
    """The quickstart as written; a released tag loads its committed weights (release/<tag>/) instead of the Hub."""
    real = timm.create_model

    def create_model(name, pretrained=False, **kwargs):
        if pretrained and name in RELEASED_TAGS:
            kwargs['pretrained_cfg_overlay'] = {'file': str(REPO / 'release' / name / 'model.safetensors')}
        return real(name, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(timm, 'create_model', create_model)
    monkeypatch.chdir(REPO)
    (_, code), = [b for b in code_blocks(README, 'python')][:1]
    scope = {}
    exec(compile(code, 'README.md', 'exec'), scope)  # noqa: S102  (the README's own example)
    x, logits, per_unit, feats = (scope[k] for k in ('x', 'logits', 'per_unit', 'feats'))
    assert logits.shape == (x.shape[0], 10) and torch.isfinite(logits).all()
    assert len(per_unit) == 8 and all(z.shape == logits.shape for z in per_unit)
    assert feats.ndim == 4
    loaded = scope['model']
    assert type(loaded).__name__ == 'FFResNet' and loaded.num_classes == 10


@pytest.mark.timeout(300)
def test_own_rules_example_runs_as_written(tmp_path):
    """docs/objectives.md's my_rules.py: the goodness mode, objective and head register and train a step."""
    (_, code), = [b for b in code_blocks(REPO / 'docs' / 'objectives.md', 'python') if b[1].startswith('# my_rules.py')]
    (tmp_path / 'my_rules.py').write_text(code)
    probe = '''
import timm, torch, timm_ff, my_rules
from timm_ff.task import LocalTask
x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
for kw in (dict(goodness='peak'), dict(head='mean_mlp', head_kwargs={'hidden': 128})):
    m = timm.create_model('dtgff_cnn_s', **kw)
    task = LocalTask(m.local_units(), timm_ff.create_objective('margin_ce', margin=0.3), 10, fusion=m.fusion)
    res = task.step(x, y, lambda loss: loss.backward())
    assert len(res.unit_losses) == 4 and all(torch.isfinite(l) for l in res.unit_losses)
print('ok')
'''
    proc = subprocess.run([sys.executable, '-c', probe], cwd=tmp_path, env=env(), capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == 'ok', proc.stderr[-2000:]


FIGURE = re.compile(r'\d+(?:\.\d+)?\s?(?:%|pp\b|img/s|MiB\b|GB\b)')


def _allowed_figures_removed(page: Path) -> str:
    """The page's prose without the blocks allowed to hold typed figures: the README's blocks rendered by
    benchmarks/report.py (headline, methods) and the classic-FF comparison with published results (each figure names
    its source)."""
    t = prose(page)
    if page == README:
        t = re.sub(r'<!-- report:(\w+):begin -->.*?<!-- report:\1:end -->', '', t, flags=re.S)
        start = t.index('**What classic FF is for here.**')
        t = t[:start] + t[t.index('\n\n', start):]
    if page.name == 'objectives.md':
        start = t.index('### What classic FF reaches')
        t = t[:start] + t[t.index('\n## ', start):]
    return t


@pytest.mark.parametrize('page', PAGES, ids=rel)
def test_measured_figures_are_linked_not_typed(page):
    typed = FIGURE.findall(_allowed_figures_removed(page))
    assert not typed, f'{rel(page)} types measured figures {typed}: link docs/results.md or the results file instead'
