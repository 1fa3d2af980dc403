"""Render docs/results.md and the README's headline and methods tables from the committed results files.

    python benchmarks/report.py           # write docs/results.md and the blocks between README.md's report markers
    python benchmarks/report.py --check   # write nothing; exit 1 with a unified diff where either differs

Every ``benchmarks/results/*.json`` that git tracks becomes one section of docs/results.md (the renderers are in
``_report_tables.py``): what was measured, the table, and beneath it the commit, date, machine, seeds, the command
that reproduces it and its plot. A section is marked stale when a commit after the one it was measured at changed
its recipe (the recipe's keys: the recipe text the file recorded, or the file at that commit, against today's; a key
that every run naming the recipe set itself by a flag, such as ``--batch-size``, does not count) or a
default kwarg of a model it trained (``timm.create_model(arch).model_args`` and the default input size, built from
``git archive <commit> timm_ff`` in a subprocess, against the working tree's). Kwargs the run set itself do not count;
a kwarg added since counts when today's default differs from the one it was added with. Results measured, or runs
trained, on an uncommitted tree are marked so. Model kwargs are cached per ``timm_ff`` tree and architecture under
``benchmarks/runs/report_cache/`` (gitignored). The output names no current date or time: it changes only when a
results file, a renderer, a recipe or a model default does.
"""
import argparse
import difflib
import hashlib
import io
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report_tables import (  # noqa: E402
    GENERIC,
    RENDERERS,
    code,
    mb,
    method_source,
    methods_budget,
    methods_ranked,
    methods_verdict,
    pct,
    plural,
    pp,
    quote_json,
    rate,
    render,
    table,
    units,
)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / 'benchmarks/results'
DOC = REPO / 'docs/results.md'
README = REPO / 'README.md'
CACHE = REPO / 'benchmarks/runs/report_cache'
BEGIN, END = '<!-- report:headline:begin -->', '<!-- report:headline:end -->'
METHODS_BEGIN, METHODS_END = '<!-- report:methods:begin -->', '<!-- report:methods:end -->'
# The README's methods tables: bench_methods.py's results file per budget, with the words that name the budget.
METHODS = {'methods_cnn_cpu.json': 'A 4-unit CNN', 'methods_resnet18_cpu.json': 'ResNet-18'}

# The README's headline table. Per model of the mission: its own objective, the (model, objective) its gap is taken
# to, and the results files of its full-data recipes. A file whose runs are keyed by objective maps to None; otherwise
# the map names the objective of each run (or, in a bench_methods.py file, each method's runs) that counts. Each cell is the best fused top-1 of that model and objective
# among these files, preferring results that are neither stale nor from an uncommitted tree.
HEADLINE = {
    'dtgff_cnn_s': {'objective': 'dtg', 'gap_to': ('dtgff_cnn_s', 'bp_deepsup'), 'files': {
        'cifar10_gap_cpu.json': None, 'cifar10_gap_seed0_cpu.json': None, 'cifar10_gap_seed1_cpu.json': None,
        'methods_cnn_cpu.json': {'dtg': 'dtg', 'bp_deepsup': 'bp_deepsup', 'bp': 'bp'}}},
    'dtgff_resnet18': {'objective': 'dtg', 'gap_to': ('dtgff_resnet18', 'bp_deepsup'), 'files': {
        'cifar10_resnet18_full_cpu.json': None, 'cifar10_resnet18_full_bp_cpu.json': None}},
    'ff_cnn_s': {'objective': 'ff', 'gap_to': ('dtgff_cnn_s', 'dtg'), 'files': {
        'classic_ff_cpu.json': {'ff_cnn_s_cifar10_5ep': 'ff'}, 'methods_cnn_cpu.json': {'ff': 'ff'}}},
    'ff_resnet18': {'objective': 'ff', 'gap_to': ('dtgff_resnet18', 'dtg'), 'files': {
        'cifar10_resnet18_full_ff_cpu.json': None}},
}
HEADLINE_OBJECTIVES = ('dtg', 'bp_deepsup', 'bp', 'ff')

DEPTH_BEGIN, DEPTH_END = '<!-- report:depth:begin -->', '<!-- report:depth:end -->'
# The README's depth table: per budget, the results files of its `dtg` and `bp_deepsup` runs (same model, heads and
# recipe; runs keyed by objective, one file per seed) and the plot of its per-unit curves.
DEPTH = (
    dict(model='dtgff_resnet18', budget='10k x 3', png='resnet18_heads_cpu.png',
         dtg=('cifar10_resnet18_bf16_seed0_cpu.json', 'cifar10_resnet18_bf16_seed1_cpu.json'),
         bp_deepsup=('resnet18_head_goodness_cpu.json', 'resnet18_head_goodness_seed1_cpu.json')),
    dict(model='dtgff_resnet18', budget='10k x 8', png='cifar10_resnet18_8ep_cpu.png',
         dtg=('cifar10_resnet18_8ep_cpu.json',), bp_deepsup=('cifar10_resnet18_8ep_cpu.json',)),
    dict(model='dtgff_resnet18', budget='47.5k x 5 (all of CIFAR-10)', png='cifar10_resnet18_full_cpu.png',
         dtg=('cifar10_resnet18_full_cpu.json',), bp_deepsup=('cifar10_resnet18_full_cpu.json',)),
    dict(model='dtgff_resnet34', budget='10k x 3', png='cifar10_resnet34_cpu.png',
         dtg=('cifar10_resnet34_cpu.json',), bp_deepsup=('cifar10_resnet34_cpu.json',)),
)

RECIPE_RE = re.compile(r'(?:^|\s)(?:-c|--config|--recipe)[ =](\S+\.ya?ml)(?=\s|$)')
MODEL_RE = re.compile(r'(?:^|\s)--model[ =]([\w.]+)')
KWARGS_RE = re.compile(r'(?:^|\s)--model-kwargs[ =]')
BATCH_RE = re.compile(r'(?:^|\s)--batch-size[ =](\d+)')
NOT_FOUND = object()

# Run in one subprocess: import timm once, then fork once per timm_ff source tree, so every tree is imported into a
# clean copy of the same process; each child writes the requested architectures' default kwargs as JSON files.
_DUMPER = r'''
import json, os, sys
import timm
before = set(timm.list_models())
for src, out, archs in json.load(sys.stdin):
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        continue
    try:
        sys.path.insert(0, src)
        import timm_ff
        os.makedirs(out, exist_ok=True)
        if archs is None:
            archs = sorted(set(timm.list_models()) - before)
            with open(os.path.join(out, '_archs.json'), 'w') as f:
                json.dump(archs, f)
        for arch in archs:
            try:
                model = timm.create_model(arch)
                args = dict(model.model_args, input_size=model.pretrained_cfg.get('input_size'))
                text = json.dumps(args, sort_keys=True, default=repr)
            except Exception as e:
                text = json.dumps({'error': f'{type(e).__name__}: {e}'})
            with open(os.path.join(out, arch + '.json'), 'w') as f:
                f.write(text)
    finally:
        os._exit(0)
'''


class Repo:
    """What staleness reads from git and timm: recipe text and model default kwargs, now and at a commit."""

    def __init__(self, root: Path = REPO, cache: Path = CACHE):
        self.root, self.cache = root, cache / 'model_args'
        self._trees, self._texts, self._later, self._mentions, self._key = {}, {}, {}, {}, None

    def _git(self, *args, text: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(['git', *args], cwd=self.root, capture_output=True, text=text, check=False)

    def text_now(self, path: str) -> str | None:
        file = self.root / path
        return file.read_text() if file.is_file() else None

    def text_at(self, commit: str, path: str) -> str | None:
        if (commit, path) not in self._texts:
            proc = self._git('show', f'{commit}:{path}')
            self._texts[(commit, path)] = proc.stdout if proc.returncode == 0 else None
        return self._texts[(commit, path)]

    def tree(self, commit: str) -> str | None:
        """The git tree of ``timm_ff`` at ``commit`` (None when the commit is not in this clone)."""
        if commit not in self._trees:
            proc = self._git('rev-parse', '--verify', '-q', f'{commit}^{{commit}}:timm_ff')
            self._trees[commit] = proc.stdout.strip() if proc.returncode == 0 else None
        return self._trees[commit]

    def _worktree_key(self) -> str:
        if self._key is None:
            digest = hashlib.sha1()
            for file in sorted((self.root / 'timm_ff').rglob('*.py')):
                digest.update(str(file.relative_to(self.root)).encode() + b'\0' + file.read_bytes() + b'\0')
            self._key = 'worktree-' + digest.hexdigest()
        return self._key

    def _dump(self, jobs: list) -> None:
        """Run the dumper on ``[(commit, or None for the working tree; cache folder; archs, or None for all)]``."""
        with tempfile.TemporaryDirectory(prefix='report_src_') as tmp:
            todo = []
            for commit, out, archs in jobs:
                src = str(self.root)
                if commit is not None:
                    archive = self._git('archive', '--format=tar', commit, 'timm_ff', text=False)
                    if archive.returncode != 0:
                        continue
                    src = os.path.join(tmp, commit)
                    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
                        tar.extractall(src, filter='data')
                todo.append((src, str(out), archs))
            env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH='')
            proc = subprocess.run([sys.executable, '-c', _DUMPER], input=json.dumps(todo), text=True, env=env,
                                  capture_output=True, cwd=tmp, check=False)
        if proc.returncode != 0:
            print(f'warning: the model-kwargs dump failed, staleness may be incomplete:\n{proc.stderr[-2000:]}',
                  file=sys.stderr)

    def archs_now(self) -> list:
        """Every architecture the working tree's timm_ff registers."""
        out = self.cache / self._worktree_key()
        if not (out / '_archs.json').is_file():
            self._dump([(None, out, None)])
        return json.loads((out / '_archs.json').read_text()) if (out / '_archs.json').is_file() else []

    def prefetch(self, needs: dict) -> None:
        """Dump, in one subprocess, the default kwargs of ``{commit: archs}`` that are not cached yet."""
        jobs = {}
        for commit, archs in sorted(needs.items()):
            tree = self.tree(commit)
            if tree is None:
                continue
            missing = {a for a in archs if not (self.cache / tree / f'{a}.json').is_file()}
            if missing:
                jobs.setdefault(tree, (commit, set()))[1].update(missing)
        if jobs:
            self._dump([(commit, self.cache / tree, sorted(archs)) for tree, (commit, archs) in sorted(jobs.items())])

    def model_args(self, commit: str | None, arch: str) -> dict | None:
        """``arch``'s default kwargs at ``commit`` (None: the working tree); None when unknown there."""
        key = self._worktree_key() if commit is None else self.tree(commit)
        file = self.cache / key / f'{arch}.json' if key else None
        if file is None or not file.is_file():
            return None
        args = json.loads(file.read_text())
        return None if 'error' in args else args

    def _after(self, commit: str) -> set:
        """The commits after ``commit`` up to HEAD that touched timm_ff."""
        if commit not in self._later:
            self._later[commit] = set(self._git('rev-list', f'{commit}..HEAD', '--', 'timm_ff').stdout.split())
        return self._later[commit]

    def candidates(self, commit: str, key: str) -> list:
        """The commits after ``commit``, oldest first, whose timm_ff diff has a line assigning or declaring
        ``key``: the one that added the kwarg is among the first."""
        if key not in self._mentions:
            log = self._git('log', '--reverse', '--format=%H', '-G', rf'\b{key} *[:=]', '--', 'timm_ff')
            self._mentions[key] = log.stdout.split()
        after = self._after(commit)
        return [c for c in self._mentions[key] if c in after]

    def added_default(self, commit: str, arch: str, key: str):
        """The default of a kwarg added after ``commit`` for ``arch`` when it was added (NOT_FOUND: unknown)."""
        for candidate in self.candidates(commit, key):
            args = self.model_args(candidate, arch)
            if args is not None and key in args:
                return args[key]
        return NOT_FOUND

    def prefetch_added(self, wanted: set) -> None:
        """Dump the commits that added the kwargs ``{(commit, arch, key)}``: one subprocess per round, each round
        trying every pending kwarg's next candidate (a candidate that only mentions the key passes to the next)."""
        pending = {item: self.candidates(item[0], item[2]) for item in sorted(wanted)}
        pending = {item: cands for item, cands in pending.items() if cands}
        while pending:
            needs = {}
            for (_, arch, _), cands in pending.items():
                needs.setdefault(cands[0], set()).add(arch)
            self.prefetch(needs)
            for (commit, arch, key), cands in list(pending.items()):
                args = self.model_args(cands[0], arch)
                if (args is not None and key in args) or len(cands) == 1:
                    del pending[(commit, arch, key)]
                else:
                    cands.pop(0)


# staleness

def code_dirty(result: dict) -> bool:
    """Whether a result was measured on uncommitted changes. A tree whose only changes were other results files
    (``benchmarks/results/``, written by an earlier benchmark of the same batch) ran the committed code."""
    files = result.get('dirty_files') or []
    return bool(result.get('git_dirty')) and (not files or any(not f.startswith('benchmarks/results/') for f in files))


@dataclass
class Status:
    """Why a result may not describe today's code: stale reasons and uncommitted-tree notes."""
    stale: list = field(default_factory=list)
    dirty: list = field(default_factory=list)


def _strings(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def recipe_paths(result: dict) -> list:
    """The repo-relative recipe files named by any command in the result (``-c``, ``--config``, ``--recipe``)."""
    paths = {p for s in _strings(result) for p in RECIPE_RE.findall(s)}
    return sorted(p for p in paths if not p.startswith(('/', '..')))


def _yaml(text: str | None) -> dict | None:
    try:
        data = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def overridden_keys(result: dict, path: str, keys) -> set:
    """The recipe keys that every command of the result naming recipe ``path`` sets itself with a flag
    (``batch_size`` by ``--batch-size``): a change of such a key did not reach what was measured."""
    commands = [s for s in _strings(result) if path in RECIPE_RE.findall(s)]
    flags = {k: re.compile(rf"(?:^|\s)--{re.escape(str(k).replace('_', '-'))}(?:[ =]|$)") for k in keys}
    return {k for k, flag in flags.items() if commands and all(flag.search(c) for c in commands)}


def recipes_at(result: dict, repo: Repo) -> dict:
    """``{path: text}`` of the result's recipes as they ran: the recipe text it recorded, else the file at its
    commit (None where it is not there)."""
    paths, recorded = recipe_paths(result), result.get('recipe')
    if len(paths) == 1 and _yaml(recorded) is not None:
        return {paths[0]: recorded}
    return {p: repo.text_at(result.get('git_commit', ''), p) for p in paths}


def _value(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))


def dict_changes(old: dict, new: dict) -> list:
    """``key old -> new`` for each key whose value differs, and the keys added or removed."""
    out = []
    for k in sorted(set(old) | set(new), key=str):
        if k in old and k in new:
            if old[k] != new[k]:
                out.append(f'{k} {_value(old[k])} -> {_value(new[k])}')
        else:
            out.append(f'{k} added ({_value(new[k])})' if k in new else f'{k} removed (was {_value(old[k])})')
    return out


def _model_kwargs(command: str) -> dict:
    m = KWARGS_RE.search(command)
    if not m:
        return {}
    try:
        kwargs = json.JSONDecoder().raw_decode(command, m.end())[0]
    except json.JSONDecodeError:
        return {}
    return kwargs if isinstance(kwargs, dict) else {}


def _recipe_of(command: str, recipes: dict) -> dict:
    paths = RECIPE_RE.findall(command)
    return (_yaml(recipes.get(paths[0])) or {}) if paths else {}


def command_model(command: str, recipes: dict) -> str | None:
    """The architecture a train_ff.py command trains: ``--model``, else its recipe's ``model`` (tags dropped)."""
    m = MODEL_RE.search(command)
    name = m.group(1) if m else _recipe_of(command, recipes).get('model')
    return name.split('.')[0] if isinstance(name, str) else None


def trained_models(result: dict, recipes: dict, archs) -> set:
    """``{(arch, kwargs the result set itself, as JSON)}``: each model the result trained or timed.

    Found in train_ff.py commands (``--model`` or the recipe's ``model``; ``--model-kwargs`` over the recipe's
    ``model_kwargs``), in ``model`` + ``model_kwargs`` fields, and as keys or values naming an architecture.
    """
    found = set()

    def visit(value):
        if isinstance(value, dict):
            kwargs = value.get('model_kwargs') if isinstance(value.get('model_kwargs'), dict) else {}
            for k, v in value.items():
                if k in archs:
                    found.add((k, '{}'))
                if k == 'model' and v in archs:
                    found.add((v, json.dumps(kwargs, sort_keys=True)))
                else:
                    visit(v)
        elif isinstance(value, list):
            for v in value:
                visit(v)
        elif isinstance(value, str) and 'train_ff.py' in value:
            arch = command_model(value, recipes)
            if arch in archs:
                kwargs = dict(_recipe_of(value, recipes).get('model_kwargs') or {}, **_model_kwargs(value))
                found.add((arch, json.dumps(kwargs, sort_keys=True)))
        elif isinstance(value, str) and value in archs:
            found.add((value, '{}'))

    visit({k: v for k, v in result.items() if k != 'recipe'})
    return found


def keyed_runs(result: dict) -> list:
    """``(key, run)`` pairs: a ``runs`` dict's items, or every seed's run of a bench_methods.py file keyed by its
    method."""
    if isinstance(result.get('runs'), dict):
        return list(result['runs'].items())
    methods = result.get('methods') if isinstance(result.get('methods'), dict) else {}
    return [(name, r) for name, m in methods.items() if isinstance(m, dict) for r in m.get('runs') or []]


def status(result: dict, repo: Repo, archs) -> Status:
    """The stale and uncommitted-tree marks of one result (its model kwargs must be cached: see :func:`statuses`)."""
    commit, out = result.get('git_commit', ''), Status()
    short = commit[:7]
    if not commit or repo.tree(commit) is None:
        out.stale.append(f"commit `{short or 'none'}` is not in this clone: staleness not checked")
        return out
    recipes = recipes_at(result, repo)
    for path, old in sorted(recipes.items()):
        new = repo.text_now(path)
        if new is None:
            out.stale.append(f'recipe `{path}` removed since `{short}`')
        elif old is not None and _yaml(old) != _yaml(new):
            keep = set(_yaml(old) or {}) | set(_yaml(new) or {})
            keep -= overridden_keys(result, path, keep)
            changes = dict_changes(*({k: v for k, v in (_yaml(t) or {}).items() if k in keep} for t in (old, new)))
            if changes or _yaml(old) is None or _yaml(new) is None:
                out.stale.append(f"recipe `{path}` changed since `{short}`: {', '.join(changes or ['its text'])}")
    per_arch = {}
    for arch, kwargs in sorted(trained_models(result, recipes, archs)):
        old, new = repo.model_args(commit, arch), repo.model_args(None, arch)
        if old is None or new is None:
            continue
        changes = per_arch.setdefault(arch, set())
        for k in sorted(set(new) - set(json.loads(kwargs))):  # a kwarg the run set itself is the same for it now
            if k in old:
                if old[k] != new[k]:
                    changes.add(f'{k} {_value(old[k])} -> {_value(new[k])}')
                continue
            added = repo.added_default(commit, arch, k)
            if added is not NOT_FOUND and added != new[k]:
                changes.add(f'{k} {_value(added)} -> {_value(new[k])} (kwarg added since)')
    changed = [f"`{arch}` {', '.join(sorted(c))}" for arch, c in sorted(per_arch.items()) if c]
    if changed:
        out.stale.append(f"model defaults changed since `{short}`: {'; '.join(changed)}")
    if code_dirty(result):
        files = ': ' + ', '.join(map(code, result['dirty_files'])) if result.get('dirty_files') else ''
        out.dirty.append(f'measured on an uncommitted tree (changes on top of `{short}`{files})')
    dirty_runs = list(dict.fromkeys(
        name for name, r in keyed_runs(result)
        if isinstance(r, dict) and str(r.get('run_commit') or r.get('git_commit') or '').endswith('-dirty')))
    if dirty_runs:
        out.dirty.append(f"{plural(len(dirty_runs), 'run')} trained on an uncommitted tree: "
                         f"{', '.join(map(code, dirty_runs))}")
    return out


def statuses(results: dict, repo: Repo) -> dict:
    """Every result's :class:`Status`; the model kwargs they need are dumped in as few subprocesses as can be."""
    archs = set(repo.archs_now())
    trained = {name: trained_models(r, recipes_at(r, repo), archs) for name, r in results.items()}
    commits = {name: r.get('git_commit') for name, r in results.items()}
    needs = {}
    for name, commit in commits.items():
        if commit:
            needs.setdefault(commit, set()).update(arch for arch, _ in trained[name])
    repo.prefetch(needs)
    added = set()
    for name, commit in commits.items():
        for arch, kwargs in trained[name] if commit else ():
            old, new = repo.model_args(commit, arch), repo.model_args(None, arch)
            if old is not None and new is not None:
                added.update((commit, arch, k) for k in set(new) - set(old) - set(json.loads(kwargs)))
    repo.prefetch_added(added)
    return {name: status(result, repo, archs) for name, result in results.items()}


def results_files(results_dir: Path) -> list:
    """The ``*.json`` files of ``results_dir`` that git tracks (committed or staged; every file outside a checkout),
    so a results file still being written, or not yet added, changes nothing until it is ``git add``-ed."""
    proc = subprocess.run(['git', 'ls-files', '-z', '--', '.'], cwd=results_dir, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        return sorted(results_dir.glob('*.json'))
    names = [n for n in proc.stdout.split('\0') if n.endswith('.json') and '/' not in n]
    return sorted(results_dir / n for n in names if (results_dir / n).is_file())


def load_results(results_dir: Path = RESULTS) -> dict:
    """Every results file by name, sorted; one that is not a JSON object is kept as ``{'error': why}``."""
    results = {}
    for path in results_files(results_dir):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            data = {'error': f'not valid JSON: {e}'}
        results[path.name] = data if isinstance(data, dict) else {'error': 'not a JSON object'}
    return results


# docs/results.md

def machine(info: dict) -> str:
    name = ' + '.join(x for x in (info.get('cpu'), info.get('gpu')) if x) or 'unknown machine'
    parts = [plural(info['cores'], 'core') if info.get('cores') else '',
             plural(info['torch_threads'], 'torch thread') if info.get('torch_threads') else '']
    versions = ', '.join(f'{k} {info[k]}' for k in ('torch', 'timm') if info.get(k))
    return f"{name} ({', '.join(p for p in parts if p)}{'; ' + versions if versions else ''})"


def seeds(result: dict) -> str:
    values = result.get('seeds') or ([result['seed']] if 'seed' in result else [])
    return f"{'seeds' if len(values) > 1 else 'seed'} {', '.join(map(str, values))}" if values else 'no seed recorded'


def provenance(name: str, result: dict, link_prefix: str) -> list:
    """The lines beneath a table: commit, date, machine, seeds; the command; the file and its plot."""
    command = result.get('command', '')
    note = result.get('note')
    for form in ((shlex.quote(note), note) if note else ()):  # record_runs.py: the note is the description above
        if form in command:  # (shell-quoted since the commands are recorded with shlex.join)
            command = command.replace(form, '"<the note above>"')
            break
    files = [f'[`{name}`]({link_prefix}{name})']
    png = RESULTS / name.replace('.json', '.png')
    if png.is_file():
        files.append(f'plot [`{png.name}`]({link_prefix}{png.name})')
    dirty = ' (uncommitted tree)' if code_dirty(result) else ''
    return [(f"Measured at `{result.get('git_commit', '')[:7]}`{dirty} on {result.get('date_utc', '')[:10]}, "
             f"{machine(result.get('machine', {}))}, {seeds(result)}."),
            f'Reproduce: `{quote_json(command)}`',
            f"File: {', '.join(files)}."]


def _anchor(name: str) -> str:
    return Path(name).stem.lower()


def _marks(st: Status) -> str:
    return ', '.join((['**stale**'] if st.stale else []) + (['uncommitted tree'] if st.dirty else [])) or 'current'


INTRO = [
    '# Measured results', '',
    ('Generated by `python benchmarks/report.py` from the committed results files in '
     '[`benchmarks/results/`](../benchmarks/results/): **do not edit this page by hand**. Change a results file, a '
     'renderer (`benchmarks/_report_tables.py`) or a recipe, then run the script again; '
     '`python benchmarks/report.py --check` (run by `tests/test_report.py`) fails while this page and the files '
     'disagree.'), '',
    ("**Stale** marks a table measured before a later commit changed its recipe (the recipe's keys, comments aside, "
     'and keys that every run set itself by a flag, such as `--batch-size`) or '
     'a default kwarg of a model it trained (`timm.create_model(arch).model_args` and the default input size at the '
     "commit it was measured at, against today's; kwargs the run set itself do not count, and a kwarg added since "
     'counts when its default changed after it was added). **Uncommitted tree** marks a result measured, or a run '
     'trained, on code with uncommitted changes.'), '',
]


def render_doc(results: dict, stats: dict) -> str:
    rendered = {name: render(name, result) for name, result in results.items()}
    titles = list(dict.fromkeys(f.title for f in [*RENDERERS, GENERIC]))
    groups = {t: [name for name, (family, _) in rendered.items() if family.title == t] for t in titles}
    out = INTRO + table(['results file', 'section', 'measured at', 'date', 'status'],
                        [[f'[`{n}`](#{_anchor(n)})', t, code(results[n].get('git_commit', '')[:7]),
                          results[n].get('date_utc', '')[:10], _marks(stats[n])] for t in titles for n in groups[t]])
    for title in (t for t in titles if groups[t]):
        out += ['', f'## {title}']
        for name in groups[title]:
            st, section = stats[name], rendered[name][1]
            out += ['', f'### {Path(name).stem}', '', section.description, '']
            out += [f"> **Stale**: {'; '.join(st.stale)}.", ''] if st.stale else []
            out += [f"> **Uncommitted tree**: {'; '.join(st.dirty)}.", ''] if st.dirty else []
            out += section.body + [''] + provenance(name, results[name], '../benchmarks/results/')
    return '\n'.join(out) + '\n'


# the README's headline table

@dataclass
class Cell:
    accuracy: float
    file: str
    budget: str
    stale: bool
    dirty: bool


def run_budget(run: dict, recipes: dict) -> str:
    """Training images x epochs: the recorded training rows, else optimiser steps x batch size / epochs (so to
    within a batch per epoch, shown to 0.1k)."""
    command, epochs = run.get('train_command', ''), run.get('epochs_run')
    images = (run.get('data') or {}).get('train_rows')
    if images is None and run.get('global_step') and epochs:
        m = BATCH_RE.search(command)
        batch = int(m.group(1)) if m else _recipe_of(command, recipes).get('batch_size')
        images = run['global_step'] * batch / epochs if batch else None
    return f'{images / 1000:.1f}k x {epochs}' if images and epochs else 'unknown'


def headline_cells(results: dict, stats: dict, repo: Repo) -> dict:
    """``{(model, objective): Cell}``: the best run of each model and objective among the HEADLINE files."""
    cells = {}
    for model, spec in HEADLINE.items():
        for file, objective_of in spec['files'].items():
            result = results.get(file, {})
            recipes = recipes_at(result, repo)
            for key, run in keyed_runs(result):
                objective = key if objective_of is None else objective_of.get(key)
                if objective is None or not isinstance(run, dict) or run.get('accuracy') is None:
                    continue
                if command_model(run.get('train_command', ''), recipes) not in (None, model):
                    continue
                cell = Cell(run['accuracy'], file, run_budget(run, recipes), bool(stats[file].stale),
                            bool(stats[file].dirty))
                best = cells.get((model, objective))
                if best is None or (cell.stale, cell.dirty, -cell.accuracy) < (best.stale, best.dirty, -best.accuracy):
                    cells[(model, objective)] = cell
    return cells


def render_headline(results: dict, stats: dict, repo: Repo) -> str:
    cells, rows = headline_cells(results, stats, repo), []
    for model, spec in HEADLINE.items():
        row = [code(model)]
        for objective in HEADLINE_OBJECTIVES:
            cell = cells.get((model, objective))
            if cell is None:
                row.append('')
                continue
            marks = ', '.join((['stale'] if cell.stale else []) + (['uncommitted tree'] if cell.dirty else []))
            text = f'**{pct(cell.accuracy)}**' if objective == spec['objective'] else pct(cell.accuracy)
            row.append(text + (f' ([{marks}](docs/results.md#{_anchor(cell.file)}))' if marks else ''))
        own, ref = cells.get((model, spec['objective'])), cells.get(spec['gap_to'])
        ref_name = ' '.join(map(code, spec['gap_to'] if spec['gap_to'][0] != model else spec['gap_to'][1:]))
        row.append(f'{pp(ref.accuracy - own.accuracy)} (vs {ref_name})' if own and ref else '')
        used = {o: c for o in HEADLINE_OBJECTIVES if (c := cells.get((model, o)))}
        budgets = sorted({c.budget for c in used.values()})
        row.append(budgets[0] if len(budgets) == 1 else '; '.join(f'{code(o)} {c.budget}' for o, c in used.items()))
        files = sorted({c.file for c in used.values()})
        row.append(', '.join(f'[`{f}`](benchmarks/results/{f})' for f in files) or 'not measured')
        rows.append(row)
    headers = ['model', *map(code, HEADLINE_OBJECTIVES), 'gap (pp)', 'budget (images x epochs)', 'results file']
    note = ("Fused top-1 on the test set. Each cell is the best run of that model and objective among the results "
            "files of its full-data recipe, current ones first; the model's own objective is in bold, and the gap is "
            "the named reference minus it. Rendered by `python benchmarks/report.py` (do not edit between the "
            "markers); every result with its commit, machine and command: [docs/results.md](docs/results.md).")
    return '\n'.join([BEGIN, *table(headers, rows), '', note, END])


# the README's methods tables

def render_methods_block(results: dict, stats: dict) -> str:
    """Per budget of :data:`METHODS`: every method's fused top-1, per-unit curve, cost, locality and source."""
    out = [METHODS_BEGIN]
    for file, label in METHODS.items():
        result = results.get(file)
        if not result or not isinstance(result.get('methods'), dict):
            out += [f'**{label}**: not measured yet (`python benchmarks/reproduce.py methods` writes `{file}`).', '']
            continue
        ms, st = result['methods'], stats[file]
        marks = ', '.join((['stale'] if st.stale else []) + (['uncommitted tree'] if st.dirty else []))
        seeds = '/'.join(map(str, sorted({m['summary']['seeds'] for m in ms.values()})))
        png = RESULTS / file.replace('.json', '.png')
        out += [f"**{label}** ({code(result['base_model'])}'s recipe `{result['recipe_path']}`: "
                f"{methods_budget(result)} images x epochs, {seeds} {'seed' if seeds == '1' else 'seeds'} per method; "
                f"[`{file}`](benchmarks/results/{file})"
                + (f', per-unit curves [`{png.name}`](benchmarks/results/{png.name})' if png.is_file() else '')
                + (f'; [{marks}](docs/results.md#{_anchor(file)})' if marks else '') + '):', '']
        rows = []
        for name in methods_ranked(result):
            m, sm = ms[name], ms[name]['summary']
            spread = f" ± {pp(sm['accuracy_spread'] / 2)}" if sm['seeds'] > 1 else ''
            rows.append([code(name), 'yes' if m['local'] else '**no**', 'yes' if m['label_in_input'] else 'no',
                         'yes' if m['negatives'] else 'no', f"{pct(sm['accuracy_mean'])}{spread}", sm['seeds'],
                         units(sm['unit_accuracy_mean']), rate(sm['train_images_per_s_mean']),
                         mb(sm['peak_memory_mb_max']), m.get('published', ''), method_source(m)])
        spread_header = 'fused top-1 (mean ± half the spread)'
        out += table(['method', 'strictly local', 'label in input', 'negatives', spread_header, 'seeds',
                      'units (mean)', 'img/s', 'peak MB', 'published (its network, budget)', 'source'], rows)
        missing = result.get('missing_runs') or []
        out += [''] + methods_verdict(result)
        out += [f"- not finished when the table was written: {', '.join(missing)}"] if missing else []
        once = [code(m) for m in result.get('evaluated_once', []) if m in ms]
        out += [f"- evaluated after the last epoch only (scoring every label is 10 passes an image): "
                f"{', '.join(once)}"] if once else []
        out += [f"- {result['note']}"] if result.get('note') else []
        out += ['']
    out.append("img/s and peak memory compare within one table only (runs trained side by side on one machine: "
               "[docs/results.md](docs/results.md) names it). A published figure is at its paper's network and "
               "budget (100-400 epochs), so it is context, not a claim of reproduction. Rendered by "
               "`python benchmarks/report.py` (do not edit between the markers).")
    return '\n'.join(out + [METHODS_END])


# the README's depth table

def depth_runs(results: dict, files, objective: str) -> list:
    """The runs of ``objective`` with a per-unit curve in ``files`` (one per seed)."""
    return [run for f in files for key, run in keyed_runs(results.get(f, {}))
            if key == objective and isinstance(run, dict) and run.get('unit_accuracy')]


def depth_summary(runs: list) -> dict:
    """Mean over seeds of the fused top-1, the last unit, and the fall (best unit minus last unit, per seed)."""
    curves = [r['unit_accuracy'] for r in runs]
    mean, mean_curve = statistics.fmean, [statistics.fmean(col) for col in zip(*curves)]
    return dict(seeds=len(runs), fused=mean(r['accuracy'] for r in runs), last=mean(c[-1] for c in curves),
                fall=mean(max(c) - c[-1] for c in curves), best_unit=mean_curve.index(max(mean_curve)),
                units=len(mean_curve))


def render_depth_block(results: dict, stats: dict) -> str:
    """Per budget of :data:`DEPTH`: how far the last unit of `dtg` and `bp_deepsup` falls below their best one, and
    the fused and last-unit gaps between them."""
    rows = []
    for spec in DEPTH:
        dtg, bp = (depth_runs(results, spec[o], o) for o in ('dtg', 'bp_deepsup'))
        files = list(dict.fromkeys([*spec['dtg'], *spec['bp_deepsup']]))
        if not dtg or not bp:
            rows.append([code(spec['model']), spec['budget'], 'not measured', '', '', '', '', '', '', ''])
            continue
        d, b = depth_summary(dtg), depth_summary(bp)
        marks = sorted({m for f in files for m, on in (('stale', stats[f].stale), ('uncommitted tree', stats[f].dirty))
                        if f in stats and on})
        png = RESULTS / spec['png']
        links = ', '.join(f'[`{f}`](benchmarks/results/{f})' for f in files)
        links += f'; plot [`{png.name}`](benchmarks/results/{png.name})' if png.is_file() else ''
        links += f" ({', '.join(marks)})" if marks else ''
        seeds = f"{d['seeds']}" if d['seeds'] == b['seeds'] else f"{d['seeds']} / {b['seeds']}"
        rows.append([code(spec['model']), spec['budget'], seeds, f"{pct(d['fused'])} / {pct(b['fused'])}",
                     pp(b['fused'] - d['fused']), f"{d['best_unit']} / {b['best_unit']} of {d['units']}",
                     f"{pp(d['fall'])} / {pp(b['fall'])}", pp(d['fall'] - b['fall']), pp(b['last'] - d['last']), links])
    headers = ['model', 'images x epochs', 'seeds', 'fused top-1 `dtg` / `bp_deepsup`', 'fused gap (pp)',
               'best unit (from 0, mean curve) `dtg` / `bp_deepsup`', 'last unit below best (pp) `dtg` / `bp_deepsup`',
               'extra fall of `dtg` (pp)', 'last-unit gap (pp)', 'results']
    note = ('Same network, heads (the default goodness heads) and recipe for both objectives; `bp_deepsup` lets every '
            "head's gradient reach all the units below it, `dtg` keeps it inside its unit. The fall is the best "
            'unit minus the last unit, per seed, then averaged; the gaps are `bp_deepsup` minus `dtg`. Rendered by '
            '`python benchmarks/report.py` (do not edit between the markers).')
    return '\n'.join([DEPTH_BEGIN, *table(headers, rows), '', note, DEPTH_END])


def replace_block(text: str, block: str, begin: str = BEGIN, end: str = END) -> str | None:
    """``text`` with the block between ``begin`` and ``end`` replaced by ``block``; None when those markers are
    missing or out of order."""
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        return None
    return text[:start] + block + text[stop + len(end):]


def _diff(old: str, new: str, name: str) -> str:
    return ''.join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        f'{name} (committed)', f'{name} (rendered)'))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--check', action='store_true', help='write nothing; exit 1 with a unified diff if '
                   "docs/results.md or the README's rendered blocks differ from the rendering")
    args = p.parse_args(argv)
    repo = Repo()
    results = load_results(RESULTS)
    stats = statuses(results, repo)
    doc = render_doc(results, stats)
    readme_text = README.read_text() if README.is_file() else ''
    readme = replace_block(readme_text, render_headline(results, stats, repo))
    if readme is None:
        print(f'error: {README.name} has no {BEGIN} ... {END} markers: its headline table is not rendered',
              file=sys.stderr)
    else:
        blocks = (('methods tables are', render_methods_block, METHODS_BEGIN, METHODS_END),
                  ('depth table is', render_depth_block, DEPTH_BEGIN, DEPTH_END))
        for what, render_block, begin, end in blocks:
            replaced = replace_block(readme, render_block(results, stats), begin, end)
            if replaced is None:
                print(f'error: {README.name} has no {begin} ... {end} markers: its {what} not rendered',
                      file=sys.stderr)
            readme = replaced or readme
    old_doc = DOC.read_text() if DOC.is_file() else ''
    if args.check:
        drift = _diff(old_doc, doc, 'docs/results.md') + (_diff(readme_text, readme, README.name) if readme else '')
        if drift:
            print(drift, end='')
            print('error: the committed results pages differ from the results files: run python benchmarks/report.py',
                  file=sys.stderr)
        return 1 if drift else 0
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(doc)
    print(f'wrote {DOC}')
    if readme is not None and readme != readme_text:
        README.write_text(readme)
        print(f'wrote the rendered blocks of {README}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
