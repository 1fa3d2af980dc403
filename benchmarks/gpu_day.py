"""GPU day: the CUDA-only checks, then dtgff_resnet18 on CIFAR-10 under dtg and bp_deepsup for the time left.

    python benchmarks/gpu_day.py --minutes 12 --data-dir ../shared/data/cifar10-jpeg
    python benchmarks/gpu_day.py --smoke          # every step on CPU, tiny budgets, into a temporary folder

For one CUDA machine with a hard time limit (``--minutes``). The script keeps its deadline: it starts a step
only if the step's minimum time is left, runs each step in a process group of its own and kills the group when
the step runs past its share, and writes each results file when its step ends (``<out>/gpu_day_<step>.json``,
``--out`` defaulting to ``benchmarks/results``, each with command, commit, machine, seed and date) and
``<out>/gpu_day.json``, every step's status, after every step. The steps, in order:

1. ``train_bf16``: ``train_ff.py`` on the GPU recipe (``hub_configs/dtgff_resnet18.cifar10.yaml``, autocast
   bf16) for a few optimiser steps: bf16 training on this GPU; its img/s sizes step 5.
2. ``audit``: ``bench_audit.py`` on dtgff_resnet18 with the ImageNet stem at 224 px, batch 64 (the paper's
   audit setting), every configuration; on CUDA each peak is the allocator's ``max_memory_allocated``.
3. ``host_sync``: the trainer's hot loop on this device, host synchronisations counted per optimiser step by
   ``tests/_sync_counter.py`` (and on CUDA by torch's own sync debug mode); it passes at one or fewer.
4. ``pipeline``: ``bench_pipeline.py --gpu`` (NCCL) with 2+ GPUs, else skipped with the reason.
5. ``resnet18_dtg``, ``resnet18_bp_deepsup``: the GPU recipe on CIFAR-10, its epochs set from the time left
   and step 1's img/s (the recipe's warm-up scaled with them), then ``gpu_day_resnet18_gap.json``.

``--smoke`` runs the same steps on CPU (CUDA hidden from every step) for a few optimiser steps each on the
bundled CIFAR-10 sample, into ``--out`` (default: a new temporary folder), never into ``benchmarks/results``.
"""
import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import REPO, portable, provenance, write_result  # noqa: E402

RECIPE = 'hub_configs/dtgff_resnet18.cifar10.yaml'
DEFAULT_DATA = '../shared/data/cifar10-jpeg'
RESERVE_S = 10.0  # kept back at the end for the last results files
SAFETY = 0.8      # share of a training run's time planned as training (the rest: a slower objective, evals)
CUDA = dict(  # per step: the least time worth starting it with, and the most it may take (s)
    min_s=dict(train_bf16=45, audit=60, host_sync=30, pipeline=90, resnet18=60),
    max_s=dict(train_bf16=150, audit=240, host_sync=150, pipeline=240),
    train_steps=100, batch_size=128,
    audit=shlex.split("""--model-kwargs '{"stem": "imagenet"}' --img-size 224 --batch-size 64
                         --warmup 2 --steps 5 --timeout 60"""),
    sync=dict(models=dict(dtg='dtgff_resnet18', ff='ff_resnet18'), batch_size=128, warmup=3, steps=5))
SMOKE = dict(
    min_s=dict(train_bf16=5, audit=5, host_sync=5, pipeline=5, resnet18=5),
    max_s=dict(train_bf16=90, audit=90, host_sync=90, pipeline=90),
    train_steps=2, batch_size=16,
    audit=shlex.split("""--model-kwargs '{"stem": "imagenet"}' --img-size 64 --batch-size 8 --accum-steps 2
                         --configs bp dtg_per_unit --warmup 1 --steps 1 --timeout 60"""),
    sync=dict(models=dict(dtg='dtgff_cnn_s', ff='ff_cnn_s'), batch_size=8, warmup=1, steps=2))
SYNC_CASES = (('dtg', 'summed'), ('dtg', 'per_unit'), ('bp', 'summed'), ('bp_deepsup', 'summed'),
              ('ff', 'summed'))
METRICS = ('accuracy', 'unit_accuracy', 'fusion_check', 'epochs_run', 'global_step', 'train_images_per_s',
           'train_time_s', 'wall_time_s', 'peak_memory_mb', 'memory_kind', 'device', 'data_source', 'history')


class Day:
    """The deadline, where things go, and the summary written after every step."""

    def __init__(self, args, start: float):
        self.smoke, self.seed = args.smoke, args.seed
        self.cfg = SMOKE if args.smoke else CUDA
        self.deadline = start + args.minutes * 60
        self.start = start
        self.out = Path(args.out) if args.out else (
            Path(tempfile.mkdtemp(prefix='gpu_day_smoke_')) if args.smoke else REPO / 'benchmarks/results')
        runs = self.out / 'runs' if args.smoke else REPO / 'benchmarks/runs/gpu_day'
        self.runs = runs / time.strftime('%Y%m%d-%H%M%S', time.gmtime(start))  # never an old day's runs
        self.runs.mkdir(parents=True, exist_ok=True)
        self.data_dir = args.data_dir
        self.env = dict(os.environ, HF_HUB_OFFLINE='1')
        if args.smoke:
            self.env['CUDA_VISIBLE_DEVICES'] = ''
        self.prov = provenance(args.seed)
        self.steps = []
        self.minutes = args.minutes
        self.bf16 = None    # train_bf16's metrics: they size the ResNet-18 runs
        self.trained = {}   # objective -> metrics of its finished ResNet-18 run

    def left(self) -> float:
        return self.deadline - time.time() - RESERVE_S

    def data_args(self) -> list:
        return ['--data-dir', self.data_dir] if self.data_dir else []

    def record(self, name: str, info: dict):
        self.steps.append(dict(name=name, **info))
        summary = dict(self.prov, minutes=self.minutes, smoke=self.smoke, out=portable(str(self.out)),
                       wall_s=time.time() - self.start, steps=self.steps)
        write_result('gpu_day', summary, self.out)
        status = info['status'] + (f": {info['reason']}" if info.get('reason') else '')
        print(f"[{time.time() - self.start:6.0f} s] {name}: {status}", flush=True)

    def step(self, name: str, min_s: float, fn, *args):
        """Run ``fn(limit_s, *args)`` if ``min_s`` is left; it returns the step's summary entry."""
        if self.left() < min_s:
            self.record(name, dict(status='skipped', reason=f'not started: it needs ~{min_s:.0f} s and '
                                                            f'{max(self.left(), 0):.0f} s are left'))
            return None
        t0 = time.time()
        info = fn(self.left(), *args)
        info.setdefault('wall_s', time.time() - t0)
        self.record(name, info)
        return info

    def child(self, name: str, cmd: list, limit_s: float) -> dict:
        """Run ``cmd`` from the repository root in its own process group, killed with it after ``limit_s``."""
        log = self.runs / f'{name}.log'
        t0 = time.time()
        with log.open('w') as f:
            proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=f, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=max(limit_s, 1))
            except subprocess.TimeoutExpired:
                rc = None
            finally:  # at the limit, and when this script is stopped: the step's whole process group goes
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        wall = time.time() - t0
        shown = portable(shlex.join(['python', *map(str, cmd[1:])]))
        info = dict(command=shown, wall_s=wall, log=portable(str(log)))
        if rc is None:
            return dict(info, status='timed_out', reason=f'killed at its time limit, after {limit_s:.0f} s')
        if rc:
            lines = [ln for ln in log.read_text(errors='replace').splitlines() if ln.strip()]
            return dict(info, status='failed', reason=f"exit {rc}: {lines[-1] if lines else 'no output'}")
        return dict(info, status='ok')

    def save(self, name: str, result: dict) -> str:
        now = time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())
        result = dict(self.prov, date_utc=now, step=name, **result)
        return write_result(f'gpu_day_{name}', result, self.out).name


def train_command(day: Day, objective: str, out: Path, flags: list) -> list:
    return [sys.executable, str(REPO / 'train_ff.py'), '-c', RECIPE, '--objective', objective,
            *day.data_args(), '--batch-size', str(day.cfg['batch_size']), '--seed', str(day.seed),
            '--output', str(out), '--no-progress', *flags]


def read_run(out: Path) -> dict | None:
    if not (out / 'metrics.json').is_file():
        return None
    m = json.loads((out / 'metrics.json').read_text())
    info = json.loads((out / 'run_info.json').read_text())
    return dict({k: m.get(k) for k in METRICS}, train_rows=info['data']['train_rows'])


def train_bf16(limit_s: float, day: Day) -> dict:
    steps = day.cfg['train_steps']
    out = day.runs / 'train_bf16'
    flags = ['--epochs', '1', '--max-train-steps', str(steps), '--mixed-precision', 'bf16']
    info = day.child('train_bf16', train_command(day, 'dtg', out, flags),
                     min(limit_s, day.cfg['max_s']['train_bf16']))
    metrics = read_run(out) if info['status'] == 'ok' else None
    if metrics is None:
        return info
    info['results'] = day.save('train_bf16', dict(
        train_command=info['command'], recipe_file=RECIPE, mixed_precision='bf16', objective='dtg',
        budget=dict(max_train_steps=steps, batch_size=day.cfg['batch_size']), metrics=metrics,
        process_wall_s=info['wall_s']))
    day.bf16 = dict(metrics, process_wall_s=info['wall_s'])
    return info


def audit(limit_s: float, day: Day) -> dict:
    cmd = [sys.executable, str(REPO / 'benchmarks/bench_audit.py'), '--model', 'dtgff_resnet18',
           *day.cfg['audit'], '--data-dir', day.data_dir or '', '--name', 'gpu_day_audit',
           '--out-dir', str(day.out)]
    info = day.child('audit', cmd, min(limit_s, day.cfg['max_s']['audit']))
    if info['status'] == 'ok':
        info['results'] = 'gpu_day_audit.json'
    return info


def host_sync_step(limit_s: float, day: Day) -> dict:
    cfg = dict(day.cfg['sync'], data_dir=day.data_dir or '', tmp=str(day.runs / 'host_sync'),
               mixed_precision='bf16')
    info = day.child('host_sync', [sys.executable, __file__, '--one', json.dumps(cfg)],
                     min(limit_s, day.cfg['max_s']['host_sync']))
    log = (day.runs / 'host_sync.log').read_text(errors='replace')
    line = [ln for ln in log.splitlines() if ln.startswith('RESULT ')]
    if info['status'] == 'ok' and line:
        result = json.loads(line[-1][7:])
        info['results'] = day.save('host_sync', result)
        info['passed'] = result['passed']
    return info


def count_syncs(trainer, steps: int) -> dict:
    """Host synchronisations in the trainer's next ``steps`` optimiser steps: per step, and in all."""
    import warnings

    import torch
    from _sync_counter import SyncCounter
    cuda = trainer.acc.device.type == 'cuda'
    counter, step = SyncCounter(), trainer._train_step
    per_step, cuda_warnings = [], []

    def counted(*a, **k):
        before = counter.count
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            out = step(*a, **k)
        per_step.append(counter.count - before)
        cuda_warnings.append(sum('synchroniz' in str(w.message) for w in caught))
        return out
    trainer._train_step = counted
    trainer.max_train_steps = trainer.state.global_step + steps
    if cuda:
        torch.cuda.set_sync_debug_mode('warn')
    try:
        with counter:
            trainer.train_epoch(0)
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode(0)
        trainer._train_step = step
    return dict(syncs_per_step=per_step, max_syncs_per_step=max(per_step), call_syncs=counter.count,
                where=counter.where[:6], **({'cuda_sync_warnings_per_step': cuda_warnings} if cuda else {}))


def host_sync(cfg: dict) -> dict:
    """Every objective and mode on this device, logging every step and never: syncs per optimiser step."""
    sys.path.insert(0, str(REPO / 'tests'))
    import torch
    from bench_throughput import _setup, warm_trainer
    cases = []
    for objective, mode in SYNC_CASES:
        model = cfg['models']['ff' if objective == 'ff' else 'dtg']
        torch.manual_seed(0)
        acc, net, train, source = _setup(model, cfg['batch_size'], cfg['data_dir'], cfg['mixed_precision'],
                                         channels_last=False)
        trainer, _ = warm_trainer(acc, net, train, objective, mode, cfg['warmup'], cfg['tmp'])
        for log_every in (1, 10 ** 9):
            trainer.log_every = log_every
            counted = count_syncs(trainer, cfg['steps'])
            # one read per step, and one for the epoch's last loss when the call ends the epoch's timing
            ok = counted['max_syncs_per_step'] <= 1 and counted['call_syncs'] <= cfg['steps'] + 1
            cases.append(dict(objective=objective, mode=mode, model=model, log_every=log_every, passed=ok,
                              **counted))
    return dict(device=str(acc.device), data_source=source, batch_size=cfg['batch_size'],
                mixed_precision=cfg['mixed_precision'], counter='tests/_sync_counter.py SyncCounter' + (
                    ' and torch.cuda.set_sync_debug_mode(warn)' if acc.device.type == 'cuda' else ''),
                passed=all(c['passed'] for c in cases), cases=cases)


def pipeline(limit_s: float, day: Day, gpus: int) -> dict:
    cmd = [sys.executable, str(REPO / 'benchmarks/bench_pipeline.py'), '--gpu', '--models', 'dtgff_resnet18',
           '--warmup', '5', '5', '--steps', '20', '20', '--timeout', '90', *day.data_args(),
           '--name', 'gpu_day_pipeline', '--out-dir', str(day.out)]
    info = day.child('pipeline', cmd, min(limit_s, day.cfg['max_s']['pipeline']))
    if info['status'] == 'ok':
        info['results'] = 'gpu_day_pipeline.json'
    return dict(info, gpus=gpus)


def plan(seconds: float, bf16: dict, batch: int) -> dict:
    """Epochs (or steps of one) that fit ``seconds`` at train_bf16's img/s and fixed cost."""
    import yaml
    recipe = yaml.safe_load((REPO / RECIPE).read_text())
    fixed = bf16['process_wall_s'] - bf16['train_time_s']  # start-up, data, eval, fusion check, saving
    steps = int(max(seconds - fixed, 0) * SAFETY * bf16['train_images_per_s'] / batch)
    per_epoch = max(bf16['train_rows'] // batch, 1)
    epochs = steps // per_epoch
    if epochs >= 1:  # the recipe's warm-up share of its epochs, on this many
        return dict(epochs=epochs, warmup_epochs=round(epochs * recipe['warmup_epochs'] / recipe['epochs']),
                    eval_every=max(1, epochs // 4), max_train_steps=0, planned_s=seconds)
    return dict(epochs=1, warmup_epochs=0, eval_every=1, max_train_steps=max(steps, 1), planned_s=seconds)


def resnet18(limit_s: float, day: Day, objective: str, share: float) -> dict:
    if not day.bf16:
        return dict(status='skipped', reason='train_bf16 measured no img/s to size the run with')
    seconds = limit_s * share
    budget = dict(epochs=1, warmup_epochs=0, eval_every=1, max_train_steps=day.cfg['train_steps'],
                  planned_s=seconds) if day.smoke else plan(seconds, day.bf16, day.cfg['batch_size'])
    flags = ['--epochs', str(budget['epochs']), '--warmup-epochs', str(budget['warmup_epochs']),
             '--eval-every', str(budget['eval_every']), '--max-train-steps', str(budget['max_train_steps'])]
    if objective != 'dtg':  # the recipe streams units (per_unit), which an end-to-end objective cannot
        flags += ['--local-backward', 'summed']
    out = day.runs / f'resnet18_{objective}'
    info = day.child(f'resnet18_{objective}', train_command(day, objective, out, flags), seconds)
    metrics = read_run(out) if info['status'] == 'ok' else None
    if metrics is None:
        return info
    info['results'] = day.save(f'resnet18_{objective}', dict(
        train_command=info['command'], recipe_file=RECIPE, recipe=(REPO / RECIPE).read_text(),
        objective=objective, budget=budget, metrics=metrics, process_wall_s=info['wall_s']))
    day.trained[objective] = metrics
    return info


def gap(day: Day):
    ff, bp = day.trained.get('dtg'), day.trained.get('bp_deepsup')
    if ff and bp:
        day.save('resnet18_gap', dict(
            gap_pp=bp['accuracy'] - ff['accuracy'],
            unit_gap_pp=[b - f for b, f in zip(bp['unit_accuracy'], ff['unit_accuracy'])],
            **{name: {k: m[k] for k in ('accuracy', 'unit_accuracy', 'epochs_run')}
               for name, m in (('dtg', ff), ('bp_deepsup', bp))},
            throughput_ratio_dtg_over_bp_deepsup=ff['train_images_per_s'] / bp['train_images_per_s']))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--minutes', type=float, default=12.0, help='hard limit of the whole day, in minutes')
    p.add_argument('--smoke', action='store_true', help='every step on CPU with tiny budgets (CI)')
    p.add_argument('--data-dir', default=None,
                   help=f'CIFAR-10 parquet folder (default {DEFAULT_DATA}; --smoke: the bundled sample)')
    p.add_argument('--out', default='', help='results folder (benchmarks/results; --smoke: a new temp one)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--one', default='', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print('RESULT ' + json.dumps(host_sync(json.loads(args.one))), flush=True)
        return 0
    start = time.time()
    # stopped from outside, the script exits through the running step's clean-up, which kills its group
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    import torch
    gpus = torch.cuda.device_count()
    if not args.smoke and not gpus:
        print('error: gpu_day.py needs CUDA and torch sees no GPU here; --smoke runs every step on CPU '
              'with tiny budgets', file=sys.stderr)
        return 2
    if args.data_dir is not None or not args.smoke:  # the default is from the repository, a flag from here
        data = Path(args.data_dir).resolve() if args.data_dir is not None else REPO / DEFAULT_DATA
        if not data.is_dir():
            print(f'error: data folder {args.data_dir or DEFAULT_DATA} does not exist; pass --data-dir DIR, '
                  'a CIFAR-10 parquet folder', file=sys.stderr)
            return 2
        args.data_dir = str(data.resolve())
    day = Day(args, start)
    min_s = day.cfg['min_s']
    day.step('train_bf16', min_s['train_bf16'], train_bf16, day)
    day.step('audit', min_s['audit'], audit, day)
    day.step('host_sync', min_s['host_sync'], host_sync_step, day)
    if gpus >= 2 and not args.smoke:
        day.step('pipeline', min_s['pipeline'], pipeline, day, gpus)
    else:
        day.record('pipeline', dict(status='skipped', reason=(
            'the NCCL pipeline needs 2+ CUDA GPUs; --smoke hides CUDA' if args.smoke else
            f'the NCCL pipeline needs 2+ CUDA GPUs and this machine has {gpus}')))
    day.step('resnet18_dtg', 2 * min_s['resnet18'], resnet18, day, 'dtg', 0.5)  # half the time left
    day.step('resnet18_bp_deepsup', min_s['resnet18'], resnet18, day, 'bp_deepsup', 1.0)
    gap(day)
    print(f'-> {day.out}/gpu_day.json ({time.time() - start:.0f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
