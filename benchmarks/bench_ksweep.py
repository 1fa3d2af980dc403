"""K-sweep: the FF-minus-BP accuracy gap against the number of classes K, on synthetic and real tasks.

    python benchmarks/bench_ksweep.py                                   # the committed CPU run (defaults below)
    python benchmarks/bench_ksweep.py --task synthetic:2,8,32 --task cifar10:2,5,10 --epochs 5 --name ksweep_more

The reference paper finds that synthetic teacher-student tasks show FF gaining on BP as K grows while
real data shows the opposite. For every task and K, layer-local DTG-FF (``dtg``) and the BP baselines
(``bp``, ``bp_deepsup``) train the same model with one recipe (``benchmarks/recipes/cifar10_cnn_s_cpu.yaml``:
AdamW, cosine, batch 128) and the same budget (``--epochs`` over the same images), and only
``--objective`` differs. Tasks (``--task NAME:K1,K2,...``):

* ``synthetic``: 3x32x32 inputs labelled by a random CNN teacher (:mod:`timm_ff.synthetic`),
  ``--per-class`` training / ``--test-per-class`` test inputs per class, ``dtgff_cnn_s``, no augmentation
  (a crop or flip would change the teacher's label);
* ``synthetic_vector``: 784-d vectors labelled by a random MLP teacher, ``dtgff_mlp``;
* ``cifar10``: the first K classes of CIFAR-10 (``--cifar10-dir``, the JPEG copy by default), the first
  ``--per-class`` training images of each, all their test images, crop + flip augmentation;
* ``omniglot``: the first K of the 242 Omniglot-small characters (``--omniglot-dir``), a stratified 25%
  of each character's 20 drawings held out for testing, read as one grayscale channel and resized to
  32x32 on the device (bilinear, antialiased), no flips (a mirrored character is another glyph).

Writes ``benchmarks/results/<name>.json`` (every run's accuracy and command, the gaps) and a PNG of the
gap against K, synthetic and real tasks side by side.
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import REPO, provenance  # noqa: E402
from _sweep import (BASELINES, DATA, OBJECTIVES, add_output_args, check_objectives, replot, run_objectives,  # noqa: E402
                    save)

TASKS = {
    'synthetic': dict(model='dtgff_cnn_s', real=False),
    'synthetic_vector': dict(model='dtgff_mlp', real=False),
    'cifar10': dict(model='dtgff_cnn_s', real=True),
    'omniglot': dict(model='dtgff_cnn_s', real=True),
}
DEFAULT_TASKS = ['synthetic:2,4,8,16', 'synthetic_vector:2,4,8,16,32', 'cifar10:2,4,10', 'omniglot:10,40,242']
OMNIGLOT_HOLDOUT = 0.25  # 5 of each character's 20 drawings are test images


def task_flags(task: str, k: int, args) -> list:
    """train_ff.py flags (beyond the recipe) of one task at K classes."""
    epochs = args.omniglot_epochs if task == 'omniglot' else args.epochs
    common = ['--model', TASKS[task]['model'], '--epochs', epochs, '--batch-size', args.batch_size]
    if task.startswith('synthetic'):
        params = dict(num_classes=k, train_per_class=args.per_class, test_per_class=args.test_per_class,
                      seed=args.task_seed)
        return common + ['--dataset', task, '--dataset-kwargs', json.dumps(params), '--aug', 'none', '--hflip', 0]
    if task == 'cifar10':
        return common + ['--data-dir', args.cifar10_dir, '--classes', k, '--max-per-class', args.per_class]
    return common + ['--data-dir', args.omniglot_dir, '--holdout', OMNIGLOT_HOLDOUT, '--classes', k, '--in-chans', 1,
                     '--hflip', 0]


def parse_tasks(specs: list, args) -> dict:
    """``NAME:K1,K2`` -> ``{name: [K1, K2]}``; empty lists, K < 2 and K above the classes available are errors."""
    from timm_ff.data import load_image_datasets
    from timm_ff.errors import ConfigError, unknown_choice
    tasks = {}
    for spec in specs:
        name, _, ks = spec.partition(':')
        if name not in TASKS:
            raise unknown_choice('K-sweep task', name, TASKS)
        values = [v for v in ks.replace(' ', '').split(',') if v]
        if not values:
            raise ConfigError(f"empty K list for task {name!r} (got {spec!r}); give at least one K, e.g. {name}:2,4,8")
        try:
            ks = [int(v) for v in values]
        except ValueError:
            raise ConfigError(f'K list of task {name!r} must be integers, got {ks!r}') from None
        bad = [k for k in ks if k < 2]
        if bad:
            raise ConfigError(f'K {bad[0]} for task {name!r} is not possible: a classifier needs K >= 2')
        if TASKS[name]['real']:
            data_dir = args.cifar10_dir if name == 'cifar10' else args.omniglot_dir
            data = load_image_datasets(data_dir=data_dir, holdout=OMNIGLOT_HOLDOUT if name == 'omniglot' else 0.0)
            too_many = [k for k in ks if k > data.num_classes]
            if too_many:
                raise ConfigError(f'K {too_many[0]} for task {name!r} is more than the {data.num_classes} classes of '
                                  f'{data_dir}; pick K from 2 to {data.num_classes}')
        tasks[name] = sorted(set(ks))
    return tasks


def plot(result: dict, path: Path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colors = dict(zip(TASKS, ('#2a7ab9', '#7b3fa0', '#d9822b', '#3a9a4a')))
    for ax, real in zip(axes, (False, True)):
        ticks = set()
        for name, rows in result['tasks'].items():
            if TASKS[name]['real'] != real:
                continue
            ks = sorted(rows, key=int)
            ticks.update(int(k) for k in ks)
            for bp, style in zip(BASELINES, ('-o', '--s')):
                key = f'dtg_minus_{bp}_pp'
                pts = [(int(k), rows[k][key]) for k in ks if key in rows[k]]
                if pts:
                    ax.plot(*zip(*pts), style, color=colors[name], label=f'{name}: dtg - {bp}')
        ax.axhline(0, color='#888888', lw=0.8)
        ax.set_xscale('log')
        ax.xaxis.set_major_locator(FixedLocator(sorted(ticks)))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(t) for t in sorted(ticks)])
        ax.set_xlabel('number of classes K')
        ax.set_title('synthetic teacher-student tasks' if not real else 'real images (class subsets)', fontsize=10)
        ax.legend(fontsize=7)
    axes[0].set_ylabel('FF minus BP, fused top-1 (pp)')
    fig.suptitle(f"K-sweep, {result['epochs']} epochs per run (omniglot {result['omniglot_epochs']}); "
                 f"{result['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--task', action='append', default=None, metavar='NAME:K1,K2',
                   help=f"task and its K list, repeatable; tasks: {', '.join(TASKS)} (default: {' '.join(DEFAULT_TASKS)})")
    p.add_argument('--objectives', nargs='+', default=list(OBJECTIVES))
    p.add_argument('--epochs', type=int, default=4, help='epochs of every run (omniglot: --omniglot-epochs)')
    p.add_argument('--omniglot-epochs', type=int, default=15, help='epochs of the omniglot runs (15 images per class)')
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--per-class', type=int, default=500, help='training images per class (synthetic and cifar10)')
    p.add_argument('--test-per-class', type=int, default=100, help='synthetic test inputs per class')
    p.add_argument('--task-seed', type=int, default=0, help='seed of the synthetic teachers and inputs')
    p.add_argument('--seed', type=int, default=0, help='training seed')
    p.add_argument('--cifar10-dir', default=str(DATA / 'cifar10-jpeg'))
    p.add_argument('--omniglot-dir', default=str(DATA / 'omniglot-small'))
    add_output_args(p, 'ksweep', 'ksweep_cpu')
    args = p.parse_args(argv)
    if args.replot:
        return replot(args, plot)
    from timm_ff.errors import TimmFFError
    try:
        check_objectives(args.objectives)
        tasks = parse_tasks(args.task or DEFAULT_TASKS, args)
    except TimmFFError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    prov = provenance(args.seed)
    t0 = time.time()
    result = dict(prov, epochs=args.epochs, omniglot_epochs=args.omniglot_epochs, batch_size=args.batch_size, per_class=args.per_class,
                  test_per_class=args.test_per_class, task_seed=args.task_seed, objectives=args.objectives,
                  recipe=(REPO / 'benchmarks/recipes/cifar10_cnn_s_cpu.yaml').read_text(),
                  models={t: TASKS[t]['model'] for t in tasks}, tasks={})
    for name, ks in tasks.items():
        result['tasks'][name] = {}
        for k in ks:
            try:
                row = run_objectives(task_flags(name, k, args), Path(args.runs_dir) / f'{name}-k{k}',
                                     args.objectives, args.seed)
            except TimmFFError as e:
                print(f'error: {name} K={k}: {e}', file=sys.stderr)
                return 2
            row['chance_pct'] = 100.0 / k
            result['tasks'][name][str(k)] = row
            print(f'{name} K={k}: ' + '  '.join(f"{o} {r['accuracy']:.2f}%" for o, r in row['runs'].items()) +
                  '  gap ' + '  '.join(f'{key} {v:+.2f}' for key, v in row.items() if key.endswith('_pp')), flush=True)
    return save(result, args, plot, t0)


if __name__ == '__main__':
    sys.exit(main())
