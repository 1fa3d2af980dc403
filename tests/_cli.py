"""Helpers to run train_ff.py end to end in a subprocess, the way a user does."""
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
TRAIN = str(REPO / 'train_ff.py')
# a fast, deterministic recipe for end-to-end tests on the bundled CIFAR-10 sample
QUICK = ['--batch-size', '64', '--no-progress', '--log-every', '2']


def env(**extra) -> dict:
    e = dict(os.environ, HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', OMP_NUM_THREADS='1')
    e.pop('ACCELERATE_USE_CPU', None)
    e.update(extra)
    return e


def run_train(*args, launcher=None, timeout=600, **env_extra) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable]) + [TRAIN, *QUICK, *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=env(**env_extra), capture_output=True, text=True, timeout=timeout)


def accelerate_launch(nproc: int) -> list:
    return [sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', str(nproc),
            '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no', '--main_process_port', '0']


def weights(run_dir: Path) -> dict:
    return load_file(str(Path(run_dir) / 'model.safetensors'))


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())


def assert_ok(proc: subprocess.CompletedProcess):
    assert proc.returncode == 0, f'exit {proc.returncode}\nSTDOUT\n{proc.stdout[-3000:]}\nSTDERR\n{proc.stderr[-5000:]}'


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
