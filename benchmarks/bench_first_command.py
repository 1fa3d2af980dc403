"""Time one of the README's two set-up commands from a fresh clone, as a newcomer types it.

    python benchmarks/bench_first_command.py                 # the main job -> first_command_cpu.json
    python benchmarks/bench_first_command.py --block tests   # the test command -> test_command_cpu.json

Clones this repository (its committed HEAD) into a temporary folder, runs the first (``--block main``) or the
second (``--block tests``) ```bash block of the README's "Set up" section there with bash (venv, install, then the
training run or the test suite), and writes ``benchmarks/results/<name>.json``: the command, its exit code, wall
time (install included), the per-epoch lines and final fused and per-unit accuracy of a training run, pytest's
summary line of the tests and the ids of any that failed, and what else was running on the machine (the load
average before it started), since a shared CPU makes the time an upper bound. The test command is what
``.ci/run`` runs, so ``--block tests`` is also a fresh-clone CI check.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import REPO, provenance, write_result  # noqa: E402

EPOCH_LINE = re.compile(r'epoch (\d+): loss (\S+)\s+fused acc ([\d.]+)%\s+units ([\d. ]+?)\s+\(')
PYTEST_SUMMARY = re.compile(r'^=*\s*(\d+ (?:passed|failed|error).*? in [\d.]+s.*?)\s*=*$', re.M)
DURATION_LINE = re.compile(r'^([\d.]+)s (setup|call|teardown) +(\S.*?) *$', re.M)  # pytest --durations
BLOCKS = {'main': 'first_command_cpu', 'tests': 'test_command_cpu'}  # block -> default results name


def setup_command(readme: str, index: int) -> str:
    """The ``index``-th (from 0) ```bash block after '## Set up'."""
    setup = readme[readme.index('## Set up'):]
    for _ in range(index + 1):
        setup = setup[setup.index('```bash') + len('```bash'):]
    return setup[:setup.index('```')].strip()


def first_command(readme: str) -> str:
    """The first ```bash block after '## Set up': install and run the main job."""
    return setup_command(readme, 0)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--block', default='main', choices=list(BLOCKS),
                   help='which set-up command: the main job or the tests')
    p.add_argument('--name', default='', help='results name (default: first_command_cpu / test_command_cpu)')
    p.add_argument('--timeout', type=int, default=3600)
    args = p.parse_args()
    command = setup_command((REPO / 'README.md').read_text(), list(BLOCKS).index(args.block))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / 'timm-ff'
        subprocess.run(['git', 'clone', '-q', str(REPO), str(clone)], check=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(('VIRTUAL_ENV', 'OMP_', 'HF_', 'ACCELERATE'))}
        env['PATH'] = os.pathsep.join(x for x in env.get('PATH', '').split(os.pathsep) if '.venv' not in x)
        t0 = time.perf_counter()
        proc = subprocess.run(['bash', '-c', command], cwd=clone, env=env, capture_output=True, text=True,
                              timeout=args.timeout)
        wall = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    epochs = [dict(epoch=int(m[0]), loss=float(m[1]), accuracy=float(m[2]), unit_accuracy=[float(a) for a in m[3].split()])
              for m in EPOCH_LINE.findall(out)]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    summary = PYTEST_SUMMARY.findall(out)
    result = dict(provenance(0), block=args.block, readme_command=command, returncode=proc.returncode,
                  wall_time_s=wall,
                  load_average_before=load_before, epochs=epochs,
                  final_accuracy=epochs[-1]['accuracy'] if epochs else None,
                  final_unit_accuracy=epochs[-1]['unit_accuracy'] if epochs else None,
                  pytest_summary=summary[-1] if summary else None,
                  slowest_tests=[dict(seconds=float(s), phase=ph, test=t) for s, ph, t in DURATION_LINE.findall(out)],
                  failed_tests=[line.split(' - ')[0] for line in proc.stdout.splitlines()
                                if line.startswith(('FAILED ', 'ERROR '))],
                  first_lines=lines[:4], last_lines=lines[-2:],
                  output_tail=(proc.stdout if args.block == 'tests' else out)[-3000:] if proc.returncode else '')
    path = write_result(args.name or BLOCKS[args.block], result)
    print(json.dumps({k: result[k] for k in ('returncode', 'wall_time_s', 'final_accuracy', 'final_unit_accuracy',
                                             'pytest_summary', 'load_average_before')}, indent=1))
    print(f'-> {path}')


if __name__ == '__main__':
    main()
