"""Coarse-vs-fine probe: the same images trained once with coarse and once with fine labels, FF and BP.

    python benchmarks/bench_coarse_fine.py                       # the committed CPU run (defaults below)
    python benchmarks/bench_coarse_fine.py --probes cifar100 --cifar100-dir PATH --epochs 30 --name coarse_fine_full

The reference paper's CIFAR-100 20-vs-100 probe says the real-data FF gap is about fine-grained labels,
not output size. For each probe, ``dtg``, ``bp`` and ``bp_deepsup`` train the same model
(``dtgff_cnn_s``) with one recipe (``benchmarks/recipes/cifar10_cnn_s_cpu.yaml``) and budget on the
same training images, once per label granularity:

* ``cifar100``: ``--coarse-column`` (20 superclasses) vs ``--fine-column`` (100 classes). Locally only
  ``cifar100-partial`` exists (1,117 train / 916 test images, 5-22 per fine class; the full CIFAR-100
  is not available here), so this probe is small: it says little at this size and is meant to be
  re-run on the full dataset (``--cifar100-dir``);
* ``cifar10``: vehicles (airplane, automobile, ship, truck) vs animals (the other six) as a derived
  2-class label, vs the 10 classes, on the first ``--per-class`` training images of each CIFAR-10 class.

Writes ``benchmarks/results/<name>.json`` (every run, the FF-minus-BP gap at each granularity and the
fine-minus-coarse change of the gap) and a PNG bar chart of the gaps.
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

VEHICLES = ['airplane', 'automobile', 'ship', 'truck']
ANIMALS = ['bird', 'cat', 'deer', 'dog', 'frog', 'horse']
PROBES = ('cifar100', 'cifar10')


def probe_flags(probe: str, args) -> dict:
    """``{granularity: train_ff.py flags}`` of one probe (beyond the recipe and the objective)."""
    common = ['--model', 'dtgff_cnn_s', '--batch-size', args.batch_size]
    if probe == 'cifar100':
        base = common + ['--epochs', args.cifar100_epochs, '--data-dir', args.cifar100_dir]
        return {'coarse': base + ['--label-column', args.coarse_column],
                'fine': base + ['--label-column', args.fine_column]}
    base = common + ['--epochs', args.epochs, '--data-dir', args.cifar10_dir, '--max-per-class', args.per_class]
    return {'coarse': base + ['--classes', json.dumps({'vehicle': VEHICLES, 'animal': ANIMALS})], 'fine': base}


def check_probes(probes: list, args) -> dict:
    """Load each probe's data once with every labelling: a missing folder, label column or class fails here."""
    from timm_ff.data import load_image_datasets
    from timm_ff.errors import unknown_choice
    info = {}
    for probe in probes:
        if probe not in PROBES:
            raise unknown_choice('probe', probe, PROBES)
        if probe == 'cifar100':
            views = {'coarse': load_image_datasets(data_dir=args.cifar100_dir, label_column=args.coarse_column),
                     'fine': load_image_datasets(data_dir=args.cifar100_dir, label_column=args.fine_column)}
        else:
            views = {'coarse': load_image_datasets(data_dir=args.cifar10_dir, max_per_class=args.per_class,
                                                   classes={'vehicle': VEHICLES, 'animal': ANIMALS}),
                     'fine': load_image_datasets(data_dir=args.cifar10_dir, max_per_class=args.per_class)}
        info[probe] = {g: dict(num_classes=v.num_classes, train_images=len(v.train), eval_images=len(v.eval),
                               label_column=v.label_column) for g, v in views.items()}
    return info


def plot(result: dict, path: Path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3.8))
    labels, width = [], 0.38
    for i, (probe, row) in enumerate(result['probes'].items()):
        for j, gran in enumerate(('coarse', 'fine')):
            x = 2 * i + j
            k = row['data'][gran]['num_classes']
            labels.append((x, f'{probe}\n{gran} (K={k})'))
            for b, (bp, color) in enumerate(zip(BASELINES, ('#2a7ab9', '#d9822b'))):
                gap = row[gran].get(f'dtg_minus_{bp}_pp')
                if gap is not None:
                    bar = ax.bar(x + (b - 0.5) * width, gap, width, color=color,
                                 label=f'dtg - {bp}' if x == 0 else None)
                    ax.bar_label(bar, fmt='%+.1f', fontsize=7)
    ax.axhline(0, color='#888888', lw=0.8)
    ax.set_xticks([x for x, _ in labels], [t for _, t in labels], fontsize=8)
    ax.set_ylabel('FF minus BP, fused top-1 (pp)')
    ax.legend(fontsize=8)
    ax.set_title(f"coarse vs fine labels on the same images (epochs: cifar100 {result['cifar100_epochs']}, "
                 f"cifar10 {result['epochs']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--probes', nargs='+', default=list(PROBES), help=f"any of {', '.join(PROBES)}")
    p.add_argument('--objectives', nargs='+', default=list(OBJECTIVES))
    p.add_argument('--epochs', type=int, default=4, help='cifar10: epochs of every run')
    p.add_argument('--cifar100-epochs', type=int, default=20, help='cifar100: epochs of every run (a small set)')
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--per-class', type=int, default=500, help='cifar10: training images per class')
    p.add_argument('--seed', type=int, default=0, help='training seed')
    p.add_argument('--cifar100-dir', default=str(DATA / 'cifar100-partial'))
    p.add_argument('--coarse-column', default='coarse_label', help='cifar100: coarse label column')
    p.add_argument('--fine-column', default='fine_label', help='cifar100: fine label column')
    p.add_argument('--cifar10-dir', default=str(DATA / 'cifar10-jpeg'))
    add_output_args(p, 'coarse_fine', 'coarse_fine_cpu')
    args = p.parse_args(argv)
    if args.replot:
        return replot(args, plot)
    from timm_ff.errors import TimmFFError
    try:
        check_objectives(args.objectives)
        info = check_probes(args.probes, args)
    except TimmFFError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    prov = provenance(args.seed)
    t0 = time.time()
    result = dict(prov, epochs=args.epochs, cifar100_epochs=args.cifar100_epochs, batch_size=args.batch_size, per_class=args.per_class,
                  objectives=args.objectives, recipe=(REPO / 'benchmarks/recipes/cifar10_cnn_s_cpu.yaml').read_text(),
                  model='dtgff_cnn_s', probes={})
    for probe in args.probes:
        row = dict(data=info[probe])
        if probe == 'cifar100':
            row['note'] = ('on whatever CIFAR-100 --cifar100-dir holds; the default cifar100-partial is 1,117 train / '
                           '916 test images (5-22 per fine class), not the full 50k/10k CIFAR-100, which is not '
                           'available here')
        for gran, flags in probe_flags(probe, args).items():
            row[gran] = run_objectives(flags, Path(args.runs_dir) / f'{probe}-{gran}', args.objectives, args.seed)
            row[gran]['chance_pct'] = 100.0 / info[probe][gran]['num_classes']
        for bp in BASELINES:
            key = f'dtg_minus_{bp}_pp'
            if key in row['fine'] and key in row['coarse']:
                row[f'fine_minus_coarse_{key}'] = row['fine'][key] - row['coarse'][key]
        result['probes'][probe] = row
        print(f'{probe}: ' + '  '.join(f"{g} {o} {r['accuracy']:.2f}%" for g in ('coarse', 'fine')
                                       for o, r in row[g]['runs'].items()), flush=True)
    return save(result, args, plot, t0)


if __name__ == '__main__':
    sys.exit(main())
