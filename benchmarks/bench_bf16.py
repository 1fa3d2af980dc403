"""Autocast bf16 vs fp32 training speed on this CPU, measured in alternating pairs in one run.

    python benchmarks/bench_bf16.py --pairs 2

Runs ``train_ff.py`` on ``--model`` (default ``dtgff_resnet18``) for ``--steps`` optimiser steps on ``--data-dir``
(default the lossless CIFAR-10 test subset ``cifar10-tiny``), once with ``--mixed-precision no`` and once with
``bf16``, ``--pairs`` times in alternating order (fp32 first, then bf16 first, ...), each in a fresh process with
``--threads`` threads, so both precisions see the same machine state. Writes ``benchmarks/results/<name>.json``:
every run's img/s (the trainer's own ``train_images_per_s``), the per-pair and median bf16/fp32 ratio, and
which bf16 instructions the CPU reports (AVX512-BF16, AMX-BF16), which decide whether bf16 is faster at all.
Whether bf16 changes accuracy is a training comparison, not this benchmark (see the README's bf16 paragraph).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import REPO, provenance, write_result  # noqa: E402


def cpu_bf16_flags() -> list:
    try:
        flags = next(line for line in Path('/proc/cpuinfo').read_text().splitlines() if line.startswith('flags'))
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags.split(':', 1)[1].split() if f in ('avx512_bf16', 'amx_bf16', 'amx_tile'))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='dtgff_resnet18')
    p.add_argument('--data-dir', default=str(REPO.parent / 'shared/data/cifar10-tiny'))
    p.add_argument('--steps', type=int, default=12)
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--pairs', type=int, default=2)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--name', default='bf16_cpu')
    args = p.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS=str(args.threads))
    common = ['--model', args.model, '--data-dir', args.data_dir, '--batch-size', str(args.batch_size),
              '--local-backward', 'per_unit', '--epochs', '1', '--max-train-steps', str(args.steps), '--no-progress',
              '--fusion-check-images', '0']
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(args.pairs):
            order = ('no', 'bf16') if pair % 2 == 0 else ('bf16', 'no')
            for precision in order:
                out = Path(tmp) / f'{pair}-{precision}'
                cmd = [sys.executable, str(REPO / 'train_ff.py'), *common, '--mixed-precision', precision,
                       '--output', str(out)]
                print('$', ' '.join(cmd[1:]), flush=True)
                subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
                m = json.loads((out / 'metrics.json').read_text())
                runs.append(dict(pair=pair, mixed_precision=precision, train_images_per_s=m['train_images_per_s'],
                                 accuracy=m['accuracy']))
                print(f"  {precision}: {m['train_images_per_s']:.1f} img/s", flush=True)
    ratios = []
    for pair in range(args.pairs):
        speed = {r['mixed_precision']: r['train_images_per_s'] for r in runs if r['pair'] == pair}
        ratios.append(speed['bf16'] / speed['no'])
    result = dict(provenance(0), cpu_bf16_flags=cpu_bf16_flags(), threads=args.threads,
                  train_command='train_ff.py ' + ' '.join(common).replace(str(REPO.parent), '..'),
                  runs=runs, bf16_over_fp32=ratios, median_bf16_over_fp32=statistics.median(ratios))
    print(f"bf16 / fp32 img/s: {', '.join(f'{r:.2f}' for r in ratios)} -> {write_result(args.name, result)}")


if __name__ == '__main__':
    main()
