"""Record train_ff.py runs that were made by hand (screening variants, release trainings) as one result file.

    python benchmarks/record_runs.py --name dtg_screening_cpu --note "..." \
        --run baseline=benchmarks/runs/cifar10_gap_cpu-dtg --run grid8=/tmp/screen/grid8

Each run's command, git commit, data and per-epoch accuracies come from its own ``run_info.json`` and
``log.jsonl``, so a run stopped early (a screening variant cut once it fell behind) is recorded with
the epochs it finished and ``finished: false``; a finished run also gets its ``metrics.json`` summary.
"""
import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import provenance, write_result  # noqa: E402

SUMMARY_KEYS = ('accuracy', 'unit_accuracy', 'epochs_run', 'train_images_per_s', 'train_time_s', 'fusion_check')


def epoch_history(log: Path):
    """Per-epoch eval records of a run's ``log.jsonl``: fused and per-unit accuracy."""
    history = []
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        if 'eval/accuracy' not in rec:
            continue
        units = [rec[k] for k in sorted(k for k in rec if k.startswith('eval/unit') and k.endswith('_accuracy'))]
        history.append(dict(step=rec['step'], accuracy=rec['eval/accuracy'], unit_accuracy=units))
    return history


def train_losses(log: Path):
    """Per-unit training losses at each logged step of ``log.jsonl`` (one batch's, as logged)."""
    rows = []
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        keys = sorted((k for k in rec if re.fullmatch(r'train/unit\d+_loss', k)), key=lambda k: int(k[10:-5]))
        if keys:
            rows.append(dict(step=rec['step'], unit_loss=[round(rec[k], 4) for k in keys]))
    return rows


def record(run: Path, with_losses: bool = False) -> dict:
    info_path = run / 'run_info.json'
    if not info_path.is_file():
        raise SystemExit(f'error: {run} is not a train_ff.py run folder (no run_info.json)')
    info = json.loads(info_path.read_text())
    # no local paths in results: the run folder may have moved since, so name it by its last part
    command = re.sub(r'--output (\S+)', lambda m: f'--output <run dir {Path(m.group(1)).name}>', info['command'])
    out = dict(train_command=command, run_commit=info['git_commit'], data=info.get('data'),
               history=epoch_history(run / 'log.jsonl'), finished=(run / 'metrics.json').is_file())
    if with_losses:
        out['train_unit_loss'] = train_losses(run / 'log.jsonl')
    if out['finished']:
        metrics = json.loads((run / 'metrics.json').read_text())
        out.update({k: metrics.get(k) for k in SUMMARY_KEYS})
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--name', required=True, help='results file name (benchmarks/results/<name>.json)')
    p.add_argument('--run', action='append', required=True, metavar='LABEL=DIR', help='a run folder and its label')
    p.add_argument('--note', default='', help='what the runs test and why stopped runs were stopped')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--train-losses', action='store_true',
                   help="also record each run's per-unit training losses at every logged step")
    args = p.parse_args()
    runs = {}
    for item in args.run:
        label, sep, path = item.partition('=')
        if not sep or not label:
            raise SystemExit(f'error: --run {item!r} must be LABEL=DIR')
        runs[label] = record(Path(path), args.train_losses)
    print(write_result(args.name, dict(provenance(args.seed), note=args.note, runs=runs)))


if __name__ == '__main__':
    main()
