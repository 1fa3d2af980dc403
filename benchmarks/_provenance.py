"""Provenance block for every committed benchmark result: command, commit, machine, date; and writing it."""
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def git_commit() -> dict:
    def run(*cmd):
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True).stdout
    dirty = [line[3:] for line in run('git', 'status', '--porcelain', '--untracked-files=no').splitlines() if line]
    # the tracked files that differ from the commit; results files written by an earlier benchmark of the same batch
    # do not change what the code measures, so they are listed but do not make the tree dirty
    code = [f for f in dirty if not f.startswith('benchmarks/results/')]
    return dict(git_commit=run('git', 'rev-parse', 'HEAD').strip(), git_dirty=bool(code), dirty_files=dirty)


def cpu_model() -> str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def machine() -> dict:
    import timm
    import torch
    info = dict(cpu=cpu_model(), cores=os.cpu_count(), python=platform.python_version(),
                torch=torch.__version__, timm=timm.__version__, torch_threads=torch.get_num_threads())
    if torch.cuda.is_available():
        info['gpu'] = torch.cuda.get_device_name(0)
    return info


def provenance(seed: int) -> dict:
    return dict(command=shlex.join([sys.executable.split('/')[-1]] + sys.argv), **git_commit(), machine=machine(),
                seed=seed, date_utc=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))


def portable(text: str) -> str:
    """Rewrite this checkout's absolute paths as repo-relative ones (``../shared`` for the shared data)."""
    return text.replace(str(REPO.parent / 'shared'), '../shared').replace(str(REPO) + '/', '')


def write_result(name: str, result: dict, out_dir: Path | str | None = None) -> Path:
    """Write ``<out_dir>/<name>.json`` (default ``benchmarks/results``) with no absolute local paths in it; return the path."""
    path = Path(out_dir or REPO / 'benchmarks/results') / f'{name}.json'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(portable(json.dumps(result, indent=2)) + '\n')
    return path
