"""DTG-FF vs BP-DeepSup and BP on real CIFAR-10 with one recipe and budget: accuracy, gap, img/s.

    python benchmarks/bench_cifar10_gap.py --data-dir ../shared/data/cifar10-jpeg

Runs ``train_ff.py`` once per objective (same recipe, seed and budget; only ``--objective``
differs, and for an entry ``OBJECTIVE@MODEL`` also ``--model``, e.g. ``ff@ff_resnet18`` for classic FF on
the classic-FF twin of the recipe's model; ``--jobs 2`` trains two at once, each on half the cores), then writes
``benchmarks/results/<name>.json`` with every run's metrics, the FF-BP-DeepSup gap in percentage points
(fused and per unit, so a reader sees where it opens), the gap to plain BP, whether each fused prediction
is at least as accurate as its best unit, and the throughput ratio.
The paper's gap on CIFAR-10 is 2.40 pp.
"""
import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import REPO, provenance, write_result  # noqa: E402

PAPER_GAP_PP = 2.40


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data-dir', default=str(REPO.parent / 'shared/data/cifar10-jpeg'))
    p.add_argument('--recipe', default=str(REPO / 'benchmarks/recipes/cifar10_cnn_s_cpu.yaml'))
    p.add_argument('--objectives', nargs='+', default=['dtg', 'bp_deepsup', 'bp'],
                   help='objectives to train; OBJECTIVE@MODEL also overrides the recipe model (e.g. ff@ff_resnet18)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--runs-dir', default=str(REPO / 'benchmarks/runs'))
    p.add_argument('--name', default='cifar10_gap_cpu')
    p.add_argument('--jobs', type=int, default=1,
                   help='objectives trained at once, each with cores/jobs threads (same conditions for every run)')
    p.add_argument('--threads', type=int, default=0,
                   help='threads per run (0: cores/jobs); e.g. 1 when another job shares the machine')
    p.add_argument('--extra', nargs=argparse.REMAINDER, default=[], help='extra train_ff.py flags for every run')
    args = p.parse_args()
    if args.jobs < 1:
        raise SystemExit(f'error: --jobs must be >= 1, got {args.jobs}')
    prov = provenance(args.seed)
    if args.threads < 0:
        raise SystemExit(f'error: --threads must be >= 0, got {args.threads}')
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    prov['jobs'], prov['threads_per_run'] = args.jobs, threads

    def train(entry):
        obj, _, model = entry.partition('@')
        out = Path(args.runs_dir) / f'{args.name}-{obj}'
        cmd = [sys.executable, str(REPO / 'train_ff.py'), '-c', args.recipe, '--objective', obj,
               *(['--model', model] if model else []),
               '--data-dir', args.data_dir, '--seed', str(args.seed), '--output', str(out), '--no-progress',
               *args.extra]
        if (out / 'metrics.json').exists():  # finished earlier (e.g. one objective at a time): reuse it
            print(f'reusing the finished run {out}', flush=True)
            return out, json.loads((out / 'run_info.json').read_text())['command'].split()
        if (out / 'checkpoints').is_dir():
            cmd += ['--resume', str(out)]
        print('$', ' '.join(cmd), flush=True)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if args.jobs > 1 or args.threads else None
        subprocess.run(cmd, check=True, cwd=REPO, env=env)
        return out, cmd

    with ThreadPoolExecutor(args.jobs) as pool:
        done = dict(zip(args.objectives, pool.map(train, args.objectives)))
    runs = {}
    for entry in args.objectives:
        obj = entry.partition('@')[0]
        out, cmd = done[entry]
        m = json.loads((out / 'metrics.json').read_text())
        runs[obj] = {k: m.get(k) for k in ('accuracy', 'unit_accuracy', 'epochs_run', 'global_step', 'train_images_per_s',
                                           'train_time_s', 'wall_time_s', 'peak_memory_mb', 'memory_kind', 'data_source',
                                           'fusion_check')}
        runs[obj]['fused_minus_best_unit_pp'] = m['accuracy'] - max(m['unit_accuracy'])
        runs[obj]['train_command'] = ' '.join(cmd[1:]) if cmd[0] == sys.executable else ' '.join(cmd)
        runs[obj]['run_commit'] = json.loads((out / 'run_info.json').read_text())['git_commit']
        runs[obj]['history_accuracy'] = [h['accuracy'] for h in m['history']]
        runs[obj]['history_unit_accuracy'] = [h['unit_accuracy'] for h in m['history']]  # per eval epoch
        runs[obj]['history_epochs'] = [h['epoch'] for h in m['history']]
    result = dict(prov, recipe=Path(args.recipe).read_text(), runs=runs)
    if 'dtg' in runs and 'bp_deepsup' in runs:
        ff, bp = runs['dtg'], runs['bp_deepsup']
        gap = bp['accuracy'] - ff['accuracy']
        result.update(gap_pp=gap, paper_gap_pp=PAPER_GAP_PP, gap_minus_paper_pp=gap - PAPER_GAP_PP,
                      unit_gap_pp=[b - f for b, f in zip(bp['unit_accuracy'], ff['unit_accuracy'])],
                      throughput_ratio_dtg_over_bp=ff['train_images_per_s'] / bp['train_images_per_s'])
    if 'dtg' in runs and 'bp' in runs:
        result['gap_to_bp_pp'] = runs['bp']['accuracy'] - runs['dtg']['accuracy']
    if 'dtg' in runs and 'ff' in runs:  # classic FF on the twin model: how far behind DTG-FF
        result['ff_behind_dtg_pp'] = runs['dtg']['accuracy'] - runs['ff']['accuracy']
    path = write_result(args.name, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ('recipe', 'runs', 'machine')}, indent=2))
    for obj, r in runs.items():
        print(f"{obj:12s} acc {r['accuracy']:.2f}%  units {[round(a, 1) for a in r['unit_accuracy']]}  "
              f"{r['train_images_per_s']:.0f} img/s  wall {r['wall_time_s']:.0f} s")
    print(f'-> {path}')


if __name__ == '__main__':
    main()
