"""Local learning rules under one recipe: every registered method on CIFAR-10, fused and per-unit accuracy, img/s, memory.

    python benchmarks/bench_methods.py --budget cnn --seeds 0 1
    python benchmarks/bench_methods.py --budget resnet18 --seeds 0
    python benchmarks/bench_methods.py --budget cnn --recipe hub_configs/dtgff_cnn_s.cifar10.yaml --name methods_cnn_gpu

Each method (``timm_ff.methods``, ``train_ff.py --method NAME``) trains with the budget's recipe: one augmentation,
optimiser, schedule and number of epochs for all; only what defines the method differs (its objective, heads and
kwargs, from its source where they are part of the method). Methods of the 'label' family (classic FF: the label in
the input) train the classic-FF twin of the recipe's model (``ff_cnn_s`` for ``dtgff_cnn_s``). Methods whose logits
are the energies of K channel groups (CwComp, DeeperForward) need every unit's width to be a multiple of K: their
runs widen each unit to the next multiple of K, which the result records (``model_kwargs_added``). On the deep
models (``EVAL_ONCE``) the label-family methods are evaluated after the last epoch only (``--eval-every`` = the
recipe's epochs; the result lists them in ``evaluated_once``): their evaluation scores every label, 10 ResNet-18 passes
an image, several times the cost of their training on CPU, and evaluating changes nothing that trains. ``--recipe PATH``
trains with that recipe instead of the budget's (its model may carry a pretrained tag such as ``dtgff_cnn_s.cifar10``:
the label twin gets the same tag); the result's ``recipe_path`` and ``recipe`` are the recipe used.

Writes ``benchmarks/results/methods_<budget>_cpu.json`` (or ``<--name>.json``: every run's metrics and command, each
method's mean and spread over the seeds, its locality, whether the label is in the input, whether it uses negatives,
its paper and source) and a PNG beside it: fused accuracy per method and per-unit accuracy curves. Runs that
finished earlier (``benchmarks/runs/<name>-<method>-s<seed>/metrics.json``) are reused, so the benchmark can be
resumed, and so are the runs recorded in the results file it would overwrite where that file was trained with the
same recipe text, data and extra flags (a fresh clone has the file but not the run folders: adding a seed does not
re-train the others; each run keeps its own ``run_commit``). ``--no-train`` writes the file from the finished runs
alone, each method with the seeds it has, and lists the runs that did not finish (``missing_runs``).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import REPO, provenance, write_result  # noqa: E402

BUDGETS = {
    'cnn': REPO / 'benchmarks/recipes/cifar10_cnn_s_cpu.yaml',
    'resnet18': REPO / 'benchmarks/recipes/cifar10_resnet18_bf16_cpu.yaml',
}
LABEL_TWINS = {'dtgff_cnn_s': 'ff_cnn_s', 'dtgff_resnet18': 'ff_resnet18'}
CHANNELS = {'dtgff_cnn_s': (32, 64, 128, 256), 'dtgff_resnet18': (64, 128, 256, 512)}
GROUPED = ('cwcomp', 'deeperforward')  # logits = energies of K channel groups: widths must be multiples of K
EVAL_ONCE = ('dtgff_resnet18',)  # base models on which the label-family methods are evaluated after the last epoch only


def recipe_value(recipe: Path, key: str):
    """One key of a train_ff.py recipe (a YAML file); a recipe without it is a one-line error."""
    import yaml
    value = (yaml.safe_load(recipe.read_text()) or {}).get(key)
    if value is None:
        raise SystemExit(f'error: recipe {recipe} names no {key}')
    return value


def recipe_model(recipe: Path) -> str:
    return str(recipe_value(recipe, 'model'))


def in_repo(path: Path) -> str:
    """``path`` relative to the repository root (the runs' working folder) where it lies inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def run_plan(method, base_model: str, num_classes: int):
    """(model, extra model kwargs) of one method's runs; a pretrained tag of ``base_model`` is kept."""
    arch, dot, tag = base_model.partition('.')
    model = LABEL_TWINS[arch] + dot + tag if method.model_family == 'label' else base_model
    extra = {}
    if method.name in GROUPED:
        extra['channels'] = [-(-c // num_classes) * num_classes for c in CHANNELS[arch]]
    return model, extra


def evaluated_once(method, base_model: str) -> bool:
    """Whether ``method``'s runs on ``base_model`` are evaluated after the last epoch only (see the module doc)."""
    return method.model_family == 'label' and base_model.partition('.')[0] in EVAL_ONCE


def recorded_runs(path: Path, recipe_text: str, data_dir: str, extra: list) -> dict:
    """{(method, seed): run} of the results file at ``path`` where it was trained like this invocation would train.

    A run is reused only if the file's recipe text is ``recipe_text`` and its train command read the same data folder
    and ended with the same extra flags; anything else (no file, another recipe) reuses nothing.
    """
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    if old.get('recipe') != recipe_text:
        return {}
    data = f' --data-dir {data_dir} ' if data_dir else ' --data-dir '
    tail = ' '.join(['--no-progress', *extra])
    out = {}
    for method, entry in old.get('methods', {}).items():
        for run in entry.get('runs', []):
            cmd = run.get('train_command', '').split(' --resume ')[0].split(' --model-kwargs ')[0]
            if cmd.endswith(tail) and (data in cmd) == bool(data_dir):
                out[method, run['seed']] = run
    return out


def summarise(runs: list) -> dict:
    accs = [r['accuracy'] for r in runs]
    units = [r['unit_accuracy'] for r in runs]
    return dict(accuracy_mean=statistics.mean(accs), accuracy_spread=max(accs) - min(accs), seeds=len(runs),
                unit_accuracy_mean=[statistics.mean(u) for u in zip(*units)],
                train_images_per_s_mean=statistics.mean(r['train_images_per_s'] for r in runs),
                peak_memory_mb_max=max(r['peak_memory_mb'] or 0 for r in runs), memory_kind=runs[0]['memory_kind'])


def plot(result: dict, path: Path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    methods = sorted(result['methods'], key=lambda m: -result['methods'][m]['summary']['accuracy_mean'])
    fig, (ax, ax_units) = plt.subplots(1, 2, figsize=(14, 5))
    means = [result['methods'][m]['summary']['accuracy_mean'] for m in methods]
    spreads = [result['methods'][m]['summary']['accuracy_spread'] / 2 for m in methods]
    colours = ['tab:blue' if result['methods'][m]['local'] else 'tab:orange' for m in methods]
    bars = ax.bar(methods, means, yerr=spreads, color=colours, capsize=3)
    ax.bar_label(bars, fmt='%.1f', fontsize=8)
    ax.set_ylabel('fused test top-1 (%), mean of seeds (bar: spread)')
    ax.set_title('blue: layer-local, orange: not')
    ax.tick_params(axis='x', rotation=45, labelsize=8)
    palette = plt.get_cmap('tab20')
    for i, m in enumerate(methods):
        units = result['methods'][m]['summary']['unit_accuracy_mean']
        ax_units.plot(range(len(units)), units, marker='o', color=palette(i % 20), label=m,
                      linestyle='-' if result['methods'][m]['local'] else '--')
    ax_units.set_xlabel('unit')
    ax_units.set_ylabel('test top-1 (%), mean of seeds')
    ax_units.legend(fontsize=7, ncol=2)
    ax_units.grid(alpha=0.3)
    fig.suptitle(f"{result['budget']}: {result['base_model']}, {Path(result['recipe_path']).name}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--budget', default='cnn', help=f"one of {', '.join(BUDGETS)}")
    p.add_argument('--recipe', default='', help="train_ff.py recipe used instead of the budget's (e.g. a hub_configs/ "
                   'one); the budget still names the results file unless --name is given')
    p.add_argument('--methods', nargs='+', default=[], help='methods to run (default: every registered one)')
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1])
    p.add_argument('--data-dir', default=str(REPO.parent / 'shared/data/cifar10-jpeg'),
                   help="CIFAR-10 parquet folder ('': the bundled sample, for a smoke run)")
    p.add_argument('--out-dir', default='', help='results folder (default: benchmarks/results)')
    p.add_argument('--jobs', type=int, default=1, help='runs trained at once, each with cores/jobs threads')
    p.add_argument('--threads', type=int, default=0, help='threads per run (0: cores/jobs)')
    p.add_argument('--runs-dir', default=str(REPO / 'benchmarks/runs'))
    p.add_argument('--name', default='', help='results name (default: methods_<budget>_cpu)')
    p.add_argument('--no-train', action='store_true', help='train nothing: write the results file from the runs that '
                   'finished (a stopped benchmark); the runs not finished are listed in it as missing_runs')
    p.add_argument('--note', default='', help='a sentence kept in the results file and shown under its tables (say '
                   'why runs are missing, or what differs from the planned runs)')
    p.add_argument('--extra', nargs=argparse.REMAINDER, default=[], help='extra train_ff.py flags for every run')
    args = p.parse_args()
    import timm_ff  # noqa: F401  (registers the methods)
    from timm_ff.methods import get_method, list_methods
    if args.budget not in BUDGETS:
        raise SystemExit(f"error: unknown --budget {args.budget!r}; allowed: {', '.join(BUDGETS)}")
    if args.data_dir and not Path(args.data_dir).is_dir():
        raise SystemExit(f'error: --data-dir {args.data_dir!r} is not a folder; pass a CIFAR-10 parquet folder '
                         '(e.g. ../shared/data/cifar10-jpeg)')
    try:
        methods = [get_method(m) for m in (args.methods or list_methods())]
    except Exception as e:  # noqa: BLE001  (an unknown method: the registry's one line)
        raise SystemExit(f'error: {e}') from None
    recipe = Path(args.recipe).resolve() if args.recipe else BUDGETS[args.budget]
    if not recipe.is_file():
        raise SystemExit(f'error: --recipe {args.recipe!r} is not a file; pass a train_ff.py recipe '
                         '(e.g. hub_configs/dtgff_cnn_s.cifar10.yaml)')
    base_model = recipe_model(recipe)
    if base_model.partition('.')[0] not in LABEL_TWINS:
        raise SystemExit(f"error: recipe {recipe} trains {base_model!r}; bench_methods.py plans runs for "
                         f"{', '.join(LABEL_TWINS)} only")
    name = args.name or f'methods_{args.budget}_cpu'
    prov = provenance(args.seeds[0])
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    epochs = recipe_value(recipe, 'epochs')
    recorded = recorded_runs(Path(args.out_dir or REPO / 'benchmarks/results') / f'{name}.json', recipe.read_text(),
                             args.data_dir, args.extra)

    def train(job):
        method, seed = job
        model, extra = run_plan(method, base_model, 10)
        out = Path(args.runs_dir) / f'{name}-{method.name}-s{seed}'
        cmd = [sys.executable, 'train_ff.py', '-c', in_repo(recipe), '--method', method.name, '--model', model,
               *(['--data-dir', args.data_dir] if args.data_dir else []), '--seed', str(seed), '--output', in_repo(out),
               *(['--eval-every', str(epochs)] if evaluated_once(method, base_model) else []),
               '--no-progress', *args.extra]
        if extra:
            cmd += ['--model-kwargs', json.dumps({**method.model_kwargs, **extra})]
        if not (out / 'metrics.json').exists():
            if (method.name, seed) in recorded:
                print(f'{method.name} seed {seed}: reused from the results file (run at '
                      f"{recorded[method.name, seed]['run_commit'][:7]})", flush=True)
                return method.name, recorded[method.name, seed]
            if args.no_train:
                return method.name, None
            if (out / 'checkpoints').is_dir():
                cmd += ['--resume', str(out)]
            print('$', ' '.join(cmd), flush=True)
            subprocess.run(cmd, check=True, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
        m = json.loads((out / 'metrics.json').read_text())
        run = {k: m.get(k) for k in ('accuracy', 'unit_accuracy', 'train_images_per_s', 'peak_memory_mb', 'memory_kind',
                                     'epochs_run', 'global_step', 'wall_time_s', 'local')}
        info = json.loads((out / 'run_info.json').read_text())
        run.update(seed=seed, model=model, model_kwargs_added=extra,
                   train_command=info['command'].replace(f'{REPO}/', ''), run_commit=info['git_commit'],
                   history_unit_accuracy=[h['unit_accuracy'] for h in m['history']])
        return method.name, run

    jobs = [(m, s) for s in args.seeds for m in methods]  # first seeds first: a stopped run has one of each
    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(train, jobs))
    missing = [f'{m.name} seed {seed}' for (m, seed), (_, r) in zip(jobs, done) if r is None]
    result = dict(prov, budget=args.budget, recipe_path=in_repo(recipe), recipe=recipe.read_text(),
                  base_model=base_model, jobs=args.jobs, threads_per_run=threads, seeds=args.seeds,
                  missing_runs=missing, **({'note': args.note} if args.note else {}),
                  evaluated_once=[m.name for m in methods if evaluated_once(m, base_model)], methods={})
    for method in methods:
        runs = [r for n, r in done if n == method.name and r is not None]
        if not runs:
            continue
        result['methods'][method.name] = dict(
            objective=method.objective, local=all(r['local'] is not False for r in runs) and method.local,
            label_in_input=method.label_in_input, negatives=method.negatives, paper=method.paper, source=method.source,
            from_source=method.from_source, published=method.published, runs=runs, summary=summarise(runs))
    best = max(result['methods'], key=lambda m: result['methods'][m]['summary']['accuracy_mean'])
    best_local = max((m for m in result['methods'] if result['methods'][m]['local']),
                     key=lambda m: result['methods'][m]['summary']['accuracy_mean'], default=None)
    result.update(best=best, best_local=best_local)
    path = write_result(name, result, args.out_dir or None)
    plot(result, path.with_suffix('.png'))
    for m, r in sorted(result['methods'].items(), key=lambda kv: -kv[1]['summary']['accuracy_mean']):
        s = r['summary']
        print(f"{m:14s} {'local' if r['local'] else 'NOT local':9s} {s['accuracy_mean']:6.2f}% (spread "
              f"{s['accuracy_spread']:.2f}, {s['seeds']} seeds)  {s['train_images_per_s_mean']:.0f} img/s")
    if missing:
        print(f"not finished (missing_runs): {', '.join(missing)}")
    print(f'-> {path}')


if __name__ == '__main__':
    main()
