"""Collect finished ``train_ff.py`` runs into one committed results file.

    python benchmarks/collect_runs.py benchmarks/runs/release/* --name release_cpu

For runs trained by a recipe rather than by a benchmark script (e.g. the release checkpoints):
each run's command, git commit, seed, data and fused / per-unit accuracy come from its own
``run_info.json`` and ``metrics.json``; the machine and date of collection are added.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import REPO, provenance  # noqa: E402

KEYS = ('model', 'objective', 'dataset', 'seed', 'accuracy', 'unit_accuracy', 'epochs_run', 'global_step',
        'train_images_per_s', 'train_time_s', 'wall_time_s', 'fusion_check', 'git_commit')


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('runs', nargs='+', help='finished run folders (metrics.json present)')
    p.add_argument('--name', required=True, help='benchmarks/results/<name>.json')
    args = p.parse_args()
    runs = {}
    for run in map(Path, args.runs):
        if not (run / 'metrics.json').is_file():
            p.error(f'{run} is not a finished run (no metrics.json)')
        m = json.loads((run / 'metrics.json').read_text())
        info = json.loads((run / 'run_info.json').read_text())
        runs[run.name] = dict({k: m.get(k) for k in KEYS}, command=info.get('command'), data=info.get('data'),
                              started=info.get('started'), history_accuracy=[h['accuracy'] for h in m['history']])
    result = dict(provenance(-1), note='seed, command and commit of each run are in its entry', runs=runs)
    path = REPO / 'benchmarks/results' / f'{args.name}.json'
    path.write_text(json.dumps(result, indent=2) + '\n')
    for name, r in runs.items():
        print(f"{name:24s} {r['accuracy']:.2f}%  units {[round(a, 2) for a in r['unit_accuracy']]}  "
              f"{r['epochs_run']} epochs  commit {str(r['git_commit'])[:8]}")
    print(f'-> {path}')


if __name__ == '__main__':
    main()
