"""DTG-FF ablation: full DTG-FF and each part switched off, same recipe, several seeds.

    python benchmarks/bench_ablation.py --data-dir ../shared/data/cifar10-jpeg --seeds 0 1

Each part is a model kwarg (see the README's ablation table), so every variant is the same
``train_ff.py`` run with one ``--model-kwargs`` change. Writes ``benchmarks/results/<name>.json``
(every run's fused and per-unit accuracy) and prints a Markdown table of mean and spread (min-max
over seeds). A part whose gain over its ablation is within the seed spread is marked "no measured
gain". ``--jobs 2 --threads 1`` trains two runs at once at one thread each; a finished run
(``<runs-dir>/<name>-<variant>-s<seed>/metrics.json``) is reused and a stopped one resumes from its
checkpoints.
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

# part name -> the model kwargs that switch it off
PARTS = {
    'fixed_temperature': {'temperature': 'fixed'},
    'coupled_norm': {'decoupled': False},
    'last_unit_prediction': {'fusion': 'last'},
}
ALL_OFF = 'all_three_off'


def variants(parts):
    out = {'full': {}}
    for p in parts:
        out[p] = dict(PARTS[p])
    if len(parts) > 1:
        out[ALL_OFF] = {k: v for p in parts for k, v in PARTS[p].items()}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data-dir', default=str(REPO.parent / 'shared/data/cifar10-jpeg'))
    p.add_argument('--recipe', default=str(REPO / 'benchmarks/recipes/cifar10_cnn_s_cpu.yaml'))
    p.add_argument('--parts', nargs='+', default=list(PARTS), help=f'parts to ablate, from: {", ".join(PARTS)}')
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1])
    p.add_argument('--runs-dir', default=str(REPO / 'benchmarks/runs'))
    p.add_argument('--jobs', type=int, default=1, help='runs trained at once, each with cores/jobs threads')
    p.add_argument('--threads', type=int, default=0, help='threads per run (0: cores/jobs)')
    p.add_argument('--name', default='ablation_cpu')
    p.add_argument('--extra', nargs=argparse.REMAINDER, default=[], help='extra train_ff.py flags for every run')
    args = p.parse_args()
    bad = [x for x in args.parts if x not in PARTS]
    if bad:
        p.error(f"unknown ablation part {bad[0]!r}; allowed: {', '.join(PARTS)}")
    if len(args.seeds) < 2:
        p.error('give at least two --seeds: the spread decides whether a part earns its place')
    import yaml
    base_kwargs = (yaml.safe_load(Path(args.recipe).read_text()) or {}).get('model_kwargs') or {}
    prov = provenance(args.seeds[0])
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)

    def train(job):
        name, off, seed = job
        out = Path(args.runs_dir) / f'{args.name}-{name}-s{seed}'
        kwargs = json.dumps({**base_kwargs, **off})
        cmd = [sys.executable, str(REPO / 'train_ff.py'), '-c', args.recipe, '--objective', 'dtg',
               '--model-kwargs', kwargs, '--data-dir', args.data_dir, '--seed', str(seed), '--output', str(out),
               '--no-progress', *args.extra]
        if not (out / 'metrics.json').exists():  # a finished run is reused, a stopped one resumes
            resume = ['--resume', str(out)] if (out / 'checkpoints').is_dir() else []
            print('$', ' '.join(cmd + resume), flush=True)
            subprocess.run(cmd + resume, check=True, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
        m = json.loads((out / 'metrics.json').read_text())
        return name, dict(seed=seed, accuracy=m['accuracy'], unit_accuracy=m['unit_accuracy'],
                          model_kwargs={**base_kwargs, **off}, fusion_check=m.get('fusion_check'),
                          train_images_per_s=m.get('train_images_per_s'), train_command=' '.join(cmd[1:]))

    jobs = [(name, off, seed) for seed in args.seeds for name, off in variants(args.parts).items()]
    with ThreadPoolExecutor(args.jobs) as pool:
        done = list(pool.map(train, jobs))
    runs = {name: [r for n, r in done if n == name] for name in variants(args.parts)}
    table = summarise(runs)
    result = dict(prov, recipe=Path(args.recipe).read_text(), seeds=args.seeds, jobs=args.jobs, threads_per_run=threads,
                  runs=runs, table=table)
    path = write_result(args.name, result)
    print(markdown(table))
    print(f'-> {path}')


def summarise(runs: dict) -> list:
    full = [r['accuracy'] for r in runs['full']]
    full_mean, full_spread = statistics.mean(full), max(full) - min(full)
    rows = []
    for name, rs in runs.items():
        acc = [r['accuracy'] for r in rs]
        mean, spread = statistics.mean(acc), max(acc) - min(acc)
        row = dict(variant=name, mean=mean, min=min(acc), max=max(acc), spread=spread, n=len(acc))
        if name != 'full':
            gain = full_mean - mean  # what the part(s) add on top of this ablation
            row['gain_of_part_pp'] = gain
            row['verdict'] = 'no measured gain' if gain <= max(spread, full_spread) else 'gain'
        rows.append(row)
    return rows


def markdown(table: list) -> str:
    lines = ['| variant | fused top-1 mean | min-max | gain of the part (pp) | verdict |', '|---|---|---|---|---|']
    for r in table:
        gain = f"{r['gain_of_part_pp']:+.2f}" if 'gain_of_part_pp' in r else ''
        lines.append(f"| {r['variant']} | {r['mean']:.2f}% | {r['min']:.2f}-{r['max']:.2f} | {gain} | {r.get('verdict', '')} |")
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
