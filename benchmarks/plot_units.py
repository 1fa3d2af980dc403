"""Per-unit test accuracy of the runs in one or more gap-benchmark results files, as a PNG beside the first.

    python benchmarks/plot_units.py benchmarks/results/cifar10_resnet18_full_cpu.json

Left: each run's per-unit accuracy after its last epoch against unit index (one line per objective), with the fused
accuracy as a dashed level. Right: each run's per-unit accuracy at every evaluated epoch (darker = later), so a
reader sees whether the deep units' deficit shrinks with the budget. Reads what ``bench_cifar10_gap.py`` wrote;
computes nothing new.
"""
import argparse
import json
from pathlib import Path

COLOURS = {'dtg': 'tab:blue', 'bp_deepsup': 'tab:orange', 'bp': 'tab:green', 'ff': 'tab:red'}
STYLES = {'dtg': '-', 'bp_deepsup': '--', 'bp': ':', 'ff': '-.'}


def plot(paths, out: Path) -> Path:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    runs = {}
    palette = plt.get_cmap('tab10')
    for i, path in enumerate(paths):
        data = json.loads(Path(path).read_text())
        for obj, run in data['runs'].items():
            label = obj if len(paths) == 1 else f'{obj} ({Path(path).stem})'
            # one file: a colour per objective; several (e.g. one per head): a colour per file, a line style per objective
            runs[label] = (obj, run, COLOURS.get(obj) if len(paths) == 1 else palette(i % 10))
    fig, (ax, ax_epochs) = plt.subplots(1, 2, figsize=(12 if len(paths) == 1 else 15, 4.5 if len(paths) == 1 else 6))
    for label, (obj, run, colour) in runs.items():
        style = '-' if len(paths) == 1 else STYLES.get(obj, '-')
        units = list(range(len(run['unit_accuracy'])))
        ax.plot(units, run['unit_accuracy'], marker='o', color=colour, linestyle=style,
                label=f"{label}: fused {run['accuracy']:.2f}%")
        if len(paths) == 1:
            ax.axhline(run['accuracy'], color=colour, linestyle='--', linewidth=0.8)
        history = run.get('history_unit_accuracy') or [run['unit_accuracy']]
        epochs = run.get('history_epochs') or [len(history) - 1]
        for i, (epoch, accs) in enumerate(zip(epochs, history)):
            ax_epochs.plot(units, accs, marker='.', color=colour, linestyle=style, alpha=0.3 + 0.7 * (i + 1) / len(history),
                           label=f'{label} epoch {epoch}' if i in (0, len(history) - 1) else None)
    last = 'after the last epoch' + (' (dashed: fused)' if len(paths) == 1 else '')
    for a, title in ((ax, last), (ax_epochs, 'at every evaluated epoch')):
        a.set_xlabel('unit')
        a.set_ylabel('test top-1 (%)')
        a.set_title(title)
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.suptitle(', '.join(Path(p).stem for p in paths), fontsize=9 if len(paths) > 2 else 12)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('results', nargs='+', help='bench_cifar10_gap.py results JSON files')
    p.add_argument('--out', default='', help='PNG path (default: the first file with .png)')
    args = p.parse_args()
    out = Path(args.out) if args.out else Path(args.results[0]).with_suffix('.png')
    print(f'-> {plot(args.results, out)}')


if __name__ == '__main__':
    main()
