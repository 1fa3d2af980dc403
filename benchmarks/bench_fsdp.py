"""What FSDP holds per process: parameter and optimizer-state bytes, one process vs 2 FSDP processes (CPU, gloo).

    python benchmarks/bench_fsdp.py --models dtgff_cnn_s dtgff_resnet18

For each model, trains ``--steps`` optimiser steps of ``train_ff.py`` on the bundled CIFAR-10 sample twice with
the same global batch: one process (what each DDP process holds), and 2 processes with ``--fsdp`` (every unit
its own FSDP2 ``fully_shard`` group, the trainer path ``accelerate launch --use_fsdp`` takes on GPUs). Writes
``benchmarks/results/<name>.json``: each run's ``param_bytes_per_process`` and ``optimizer_bytes_per_process``
(measured by the trainer from the tensors each process holds) and the FSDP/one-process ratio per process.
Whether the two runs train alike is a test (tests/test_fsdp.py), not this benchmark: with BatchNorm and the dynamic
temperature each process normalises its own half-batch, so the weights here are not expected to match.
"""
import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import REPO, provenance, write_result  # noqa: E402

LAUNCH = [sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2', '--num_machines',
          '1', '--mixed_precision', 'no', '--dynamo_backend', 'no', '--main_process_port', '0']


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--models', nargs='+', default=['dtgff_cnn_s', 'dtgff_resnet18'])
    p.add_argument('--steps', type=int, default=2)
    p.add_argument('--batch-size', type=int, default=32, help='global batch (each FSDP process takes half)')
    p.add_argument('--opt', default='adamw')
    p.add_argument('--name', default='fsdp_cpu')
    args = p.parse_args()
    import os
    env = dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1', ACCELERATE_USE_CPU='1')
    result = dict(provenance(0), steps=args.steps, global_batch=args.batch_size, opt=args.opt, runs={})
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            common = ['--model', model, '--epochs', '1', '--max-train-steps', str(args.steps), '--opt', args.opt,
                      '--sched', 'none', '--no-progress', '--local-backward', 'per_unit']
            runs = {}
            for kind, launcher, extra in (('one_process', [sys.executable], ['--batch-size', str(args.batch_size)]),
                                          ('fsdp_2_processes', LAUNCH,
                                           ['--batch-size', str(args.batch_size // 2), '--fsdp'])):
                out = Path(tmp) / f'{model}-{kind}'
                cmd = launcher + [str(REPO / 'train_ff.py'), *common, *extra, '--output', str(out)]
                print('$', ' '.join(cmd[len(launcher):]), flush=True)
                subprocess.run(cmd, cwd=REPO, env=env, check=True)
                m = json.loads((out / 'metrics.json').read_text())
                runs[kind] = dict(command=' '.join(['accelerate launch --multi_gpu --num_processes 2'
                                                    if kind.startswith('fsdp') else 'python'] + cmd[len(launcher):]),
                                  param_bytes_per_process=m['param_bytes_per_process'],
                                  optimizer_bytes_per_process=m['optimizer_bytes_per_process'])
            one, fsdp = runs['one_process'], runs['fsdp_2_processes']
            total_one = one['param_bytes_per_process'][0] + one['optimizer_bytes_per_process'][0]
            per_rank = [p + o for p, o in zip(fsdp['param_bytes_per_process'], fsdp['optimizer_bytes_per_process'])]
            result['runs'][model] = dict(
                runs, state_bytes_one_process=total_one, state_bytes_per_fsdp_process=per_rank,
                fsdp_over_one_process=[r / total_one for r in per_rank])
            print(model, json.dumps({k: v for k, v in result['runs'][model].items() if k not in runs}), flush=True)
    print(f"-> {write_result(args.name, result)}")


if __name__ == '__main__':
    main()
