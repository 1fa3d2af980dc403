"""FF pretraining, then a linear probe or end-to-end fine-tuning on another dataset (CPU scale).

    python benchmarks/bench_transfer.py

``dtgff_cnn_s`` is pretrained layer-locally (``dtg``) on the lossless CIFAR-10 subset
(``cifar10-partial``, 5,438 train images), then transferred to the CIFAR-100 subset
(``cifar100-partial``, 1,117 train / 916 test images) with its 20 coarse classes. Four transfer runs
with one recipe and budget: a linear probe and a BP fine-tune from the FF-pretrained weights, and the
same two from a random init as controls. Finished runs are reused (their ``metrics.json`` records the
commit that trained them). Writes ``benchmarks/results/<name>.json``.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import REPO, provenance, write_result  # noqa: E402

DATA = REPO.parent / 'shared/data'
# one recipe for every run (flags of train_ff.py)
COMMON = ['--model', 'dtgff_cnn_s', '--batch-size', '64', '--opt', 'adamw', '--lr', '0.003', '--weight-decay', '0.0005',
          '--sched', 'cosine', '--min-lr', '0.00001', '--workers', '0', '--no-progress', '--log-every', '50']
TRANSFER = {  # name: flags; {pre} is the pretraining run folder
    'probe_ff_pretrained': ['--linear-probe', '--initial-checkpoint', '{pre}'],
    'probe_random_init': ['--linear-probe'],
    'finetune_ff_pretrained': ['--objective', 'bp', '--initial-checkpoint', '{pre}'],
    'bp_from_scratch': ['--objective', 'bp'],
}


def run(cmd, out: Path) -> dict:
    if not (out / 'metrics.json').exists():
        print('$', ' '.join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=REPO)
    m = json.loads((out / 'metrics.json').read_text())
    keep = ('accuracy', 'unit_accuracy', 'epochs_run', 'global_step', 'train_images_per_s', 'train_time_s',
            'wall_time_s', 'data_source', 'git_commit')
    return dict({k: m[k] for k in keep}, train_command=' '.join(cmd[1:]))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--pretrain-data', default=str(DATA / 'cifar10-partial'))
    p.add_argument('--transfer-data', default=str(DATA / 'cifar100-partial'))
    p.add_argument('--label-column', default='coarse_label', help='label column of the transfer dataset')
    p.add_argument('--pretrain-epochs', type=int, default=4)
    p.add_argument('--transfer-epochs', type=int, default=10)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--runs-dir', default=str(REPO / 'benchmarks/runs'))
    p.add_argument('--name', default='transfer_cifar10_to_cifar100coarse_cpu')
    p.add_argument('--transfer-runs', nargs='+', default=list(TRANSFER), choices=list(TRANSFER),
                   help='which transfer runs to do (default: all)')
    args = p.parse_args()
    prov = provenance(args.seed)
    train = [sys.executable, str(REPO / 'train_ff.py'), *COMMON, '--seed', str(args.seed)]
    pre = Path(args.runs_dir) / f'{args.name}-pretrain'
    runs = {'pretrain_dtg': run(train + ['--data-dir', args.pretrain_data, '--dataset', '', '--epochs',
                                         str(args.pretrain_epochs), '--output', str(pre)], pre)}
    for name in args.transfer_runs:
        flags = TRANSFER[name]
        out = Path(args.runs_dir) / f'{args.name}-{name}'
        flags = [f.replace('{pre}', str(pre)) for f in flags]
        runs[name] = run(train + ['--data-dir', args.transfer_data, '--dataset', '', '--label-column', args.label_column,
                                  '--epochs', str(args.transfer_epochs), '--output', str(out), *flags], out)
    result = dict(prov, recipe=' '.join(COMMON), runs=runs)
    path = write_result(args.name, result)
    for name, r in runs.items():
        print(f"{name:24s} fused {r['accuracy']:.2f}%  units {[round(a, 1) for a in r['unit_accuracy']]}")
    print(f'-> {path}')


if __name__ == '__main__':
    main()
