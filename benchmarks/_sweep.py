"""Shared by the K-sweep and the coarse-vs-fine probe: train_ff.py runs with one recipe, and FF-minus-BP gaps."""
import json
import shutil
import sys
import time
from pathlib import Path

from _provenance import REPO, write_result

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RECIPE = REPO / 'benchmarks/recipes/cifar10_cnn_s_cpu.yaml'
DATA = REPO.parent / 'shared/data'
OBJECTIVES = ('dtg', 'bp', 'bp_deepsup')
BASELINES = ('bp_deepsup', 'bp')
KEEP = ('accuracy', 'unit_accuracy', 'global_step', 'epochs_run', 'train_images_per_s', 'train_time_s',
        'wall_time_s', 'data_source')


def train(flags: list, out: Path) -> dict:
    """Run ``train_ff.py -c <recipe> <flags> --output <out>`` in this process (a finished run is reused).

    Runs share this process (they measure accuracy, not speed), which saves the interpreter and import
    start-up of each; a run folder without ``metrics.json`` is an interrupted run and starts again.
    """
    import train_ff
    metrics = out / 'metrics.json'
    if not metrics.exists():
        shutil.rmtree(out, ignore_errors=True)
        argv = ['-c', str(RECIPE), *map(str, flags), '--output', str(out), '--no-progress', '--log-with', 'none']
        print('$ train_ff.py ' + ' '.join(argv), flush=True)
        train_ff.main(argv)
    m = json.loads(metrics.read_text())
    row = {k: m.get(k) for k in KEEP}
    row['command'] = 'train_ff.py ' + ' '.join(['-c', str(RECIPE), *map(str, flags)])
    return row


def gaps(runs: dict) -> dict:
    """FF minus BP in percentage points (negative: FF behind), fused accuracy, for each BP baseline."""
    ff = runs.get('dtg')
    return {f'dtg_minus_{bp}_pp': ff['accuracy'] - runs[bp]['accuracy'] for bp in BASELINES
            if ff is not None and bp in runs}


def run_objectives(flags: list, out: Path, objectives: list, seed: int) -> dict:
    """Train every objective with the same flags and seed; returns ``{objective: row}`` plus the gaps."""
    runs = {}
    t0 = time.time()
    for obj in objectives:
        runs[obj] = train([*flags, '--objective', obj, '--seed', seed], out / obj)
    return dict(runs=runs, **gaps(runs), wall_s=time.time() - t0)


def check_objectives(objectives: list):
    from timm_ff.errors import ConfigError, unknown_choice
    for obj in objectives:
        if obj not in OBJECTIVES:
            raise unknown_choice('objective', obj, OBJECTIVES)
    if 'dtg' not in objectives or not set(objectives) & set(BASELINES):
        raise ConfigError(f"objectives {objectives} give no gap: include dtg and at least one of {', '.join(BASELINES)}")


def add_output_args(parser, runs_subdir: str, name: str):
    """The run-folder, results-name and --replot options both instruments share."""
    parser.add_argument('--runs-dir', default=str(REPO / 'benchmarks/runs' / runs_subdir))
    parser.add_argument('--name', default=name)
    parser.add_argument('--out-dir', default=str(REPO / 'benchmarks/results'))
    parser.add_argument('--replot', action='store_true', help='only redraw <out-dir>/<name>.png from <name>.json')


def replot(args, plot) -> int:
    """Redraw ``<out-dir>/<name>.png`` from its results file."""
    path = Path(args.out_dir) / f'{args.name}.json'
    if not path.is_file():
        print(f'error: --replot needs a results file, and {path} does not exist; run without --replot first',
              file=sys.stderr)
        return 2
    plot(json.loads(path.read_text()), path.with_suffix('.png'))
    return 0


def save(result: dict, args, plot, t0: float) -> int:
    """Write the results file (with the wall time since ``t0``) and its PNG."""
    result['wall_s'] = time.time() - t0
    path = write_result(args.name, result, args.out_dir)
    plot(result, path.with_suffix('.png'))
    print(f'-> {path}')
    return 0
