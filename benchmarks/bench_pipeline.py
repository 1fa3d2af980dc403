"""Pipelined unit-parallel training against one process and against DDP, same global batch, same machine.

    python benchmarks/bench_pipeline.py                         # CPU: dtgff_cnn_s and dtgff_resnet18
    python benchmarks/bench_pipeline.py --name pipeline_gpu     # on a machine with 2 GPUs (NCCL)

For each model, three configurations run the real trainers on the batch-tensor data path (CIFAR-10 from
``--data-dir``, else the bundled sample), each in fresh processes, ``--warmup`` untimed then ``--steps``
timed optimiser steps of ``--batch-size`` images (the global batch):

* ``single``: one process, :class:`~timm_ff.trainer.LocalTrainer`, ``per_unit``, 2 threads on CPU;
* ``ddp``: two processes (``accelerate launch``), each half the batch, every unit DDP-wrapped, 1 thread each;
* ``pipeline``: two processes, :class:`~timm_ff.pipeline.PipelineTrainer`, the split balanced from a
  profiling pass, each stage the whole batch, 1 thread each;
* ``ddp_micro`` / ``pipeline_micro``: the same with unit 0 micro-batched into chunks of ``--micro-chunk``
  images (``--unit-micro-batches``), the same chunk size on both, so both get the same memory technique.

Recorded per process: img/s; peak memory of one optimiser step by torch's ``MemTracker`` (parameters,
gradients, optimiser state, activations and temporaries; the data set itself excluded); for the pipeline
each stage's busy fraction (time not spent waiting for a peer) and the bytes it sends per step, for DDP
the bytes of gradients it all-reduces per step. Then a projection, from per-unit step times measured in
the ``single`` process, of the pipeline's speedup on S = 2, 4, 8 devices with the best balanced split and
the fill/drain bubble of an epoch (``(n + S - 1)`` stage-steps for n batches); it is a projection, not a
measurement. Results: ``<out-dir>/<name>.json`` (default ``benchmarks/results``) and a PNG next to it.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import REPO, provenance, write_result  # noqa: E402

MODELS = ('dtgff_cnn_s', 'dtgff_resnet18')
MIB = 2 ** 20


def _memory(step, modules, optimizer, units) -> dict:
    """MemTracker peak (and breakdown) over ``step()``; only this process's own modules are tracked."""
    import torch
    from torch.distributed._tools.mem_tracker import MemTracker
    tracker = MemTracker()
    tracker.track_external(*modules, optimizer)
    units = set(units)

    def before_forward(module, args):  # a micro-batched unit runs once per chunk: restart the module stats
        if module in units:              # (MemTracker tracks one call per module; the peak is kept), as the audit
            tracker.reset_mod_stats()
    hook = torch.nn.modules.module.register_module_forward_pre_hook(before_forward)
    try:
        with tracker:
            step()
    finally:
        hook.remove()
    peak = {}
    for per_device in tracker.get_tracker_snapshot('peak').values():
        for k, v in per_device.items():
            peak[k] = peak.get(k, 0) + v
    return dict(peak_memory_mib=peak.get('Total', 0) / MIB,
                breakdown_mib={k: v / MIB for k, v in peak.items() if k != 'Total'})


def run_worker(cfg: dict) -> dict:
    """One process of a configuration: build the real trainer, warm it up, time it, measure one more step."""
    import timm
    import torch
    from accelerate import Accelerator
    from timm.data import resolve_data_config
    from timm.optim import create_optimizer_v2

    import timm_ff
    from timm_ff.data import create_loaders, load_image_datasets
    from timm_ff.pipeline import PipelineTrainer, profile_unit_costs
    from timm_ff.trainer import LocalTrainer
    kind = cfg['kind']
    acc = Accelerator(cpu=cfg['cpu'])
    torch.manual_seed(0)
    with acc.main_process_first():  # the first process writes the decoded cache, the other reads it
        data = load_image_datasets('cifar10', data_dir=cfg['data_dir'] or None, max_per_class=cfg['per_class'])
        model = timm.create_model(cfg['model'], num_classes=data.num_classes)
        world = acc.num_processes if kind.startswith('ddp') else 1
        train, _ = create_loaders(data, data_config=resolve_data_config(model=model), batch_size=cfg['batch_size'] // world,
                                  pipeline='tensor', aug='crop_flip', device=acc.device,
                                  process_index=acc.process_index if kind.startswith('ddp') else 0, num_processes=world)
    optimizer = create_optimizer_v2(model, opt='adamw', lr=1e-3, weight_decay=0.05)
    common = dict(accelerator=acc, model=model, objective=timm_ff.create_objective('dtg'), optimizer=optimizer,
                  train_loader=train, eval_loader=train, epochs=1, output_dir=Path(cfg['tmp']) / f'{kind}-{cfg["model"]}',
                  local_backward='per_unit', log_every=10 ** 9, progress=False)
    out = dict(rank=acc.process_index, device=str(acc.device), threads=torch.get_num_threads())
    if kind == 'single':  # per-unit costs for the projection, at one thread: what one stage's device has
        x, y = next(iter(train))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        out['unit_costs_s'] = profile_unit_costs(model, common['objective'], x, y, acc.autocast, repeats=3)
        torch.set_num_threads(threads)
    per_process = cfg['batch_size'] // world
    micro = {'0': per_process // cfg['micro_chunk']} if kind.endswith('_micro') else None
    out['unit_micro_batches'] = micro
    trainer = PipelineTrainer(**common, make_scheduler=None, window=cfg['window'], micro_batches=micro) \
        if kind.startswith('pipeline') else LocalTrainer(**common, scheduler=None, micro_batches=micro)
    warm, steps = cfg['warmup'], cfg['steps']

    def train_steps(n):
        trainer.max_train_steps = trainer.state.global_step + n
        return trainer.train_epoch(0)
    train_steps(warm)
    if kind.startswith('pipeline'):
        trainer.stats.update(busy_s=0.0, wall_s=0.0, steps=0)
        sent0 = trainer.next.bytes_sent if trainer.next else 0
    acc.wait_for_everyone()
    t0 = time.perf_counter()
    stats = train_steps(steps)
    acc.wait_for_everyone()
    wall = time.perf_counter() - t0
    out.update(img_per_s=steps * cfg['batch_size'] / wall, train_images=stats['train_images'], wall_s=wall)
    if kind.startswith('pipeline'):
        out.update(split=[f'{a}-{b - 1}' for a, b in trainer.split], units=list(trainer.unit_range),
                   busy_fraction=trainer.stats['busy_s'] / max(trainer.stats['wall_s'], 1e-9),
                   bytes_sent_per_step=((trainer.next.bytes_sent if trainer.next else 0) - sent0) / steps)
        modules = trainer.train_modules
    else:
        modules = [model]
    if kind.startswith('ddp'):
        out['allreduce_bytes_per_step'] = sum(p.numel() * p.element_size() for p in model.parameters())
    out.update(_memory(lambda: train_steps(1), modules, trainer.optimizer, trainer.units))
    out['own_params_m'] = sum(p.numel() for m in modules for p in m.parameters()) / 1e6
    return out


def projection(costs: list, stages: int, batches: int) -> dict:
    """Speedup over one device of a balanced S-stage pipeline, from per-unit costs (steady state and with the bubble)."""
    from timm_ff.pipeline import balanced_split
    stages = min(stages, len(costs))
    split = balanced_split(costs, stages)
    slowest = max(sum(costs[a:b]) for a, b in split)
    steady = sum(costs) / slowest
    return dict(stages=stages, split=[f'{a}-{b - 1}' for a, b in split], steady_state_speedup=steady,
                epoch_speedup=steady * batches / (batches + stages - 1), batches_per_epoch=batches)


def launch(cfg: dict, procs: int, timeout: float) -> list:
    """Run ``cfg`` in fresh process(es); returns one result per process."""
    env = dict(os.environ, OMP_NUM_THREADS='1' if procs > 1 else '2')
    arg = ['--one', json.dumps(cfg)]
    if procs > 1:
        env['ACCELERATE_USE_CPU'] = '1' if cfg['cpu'] else '0'
        cmd = [sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', str(procs),
               '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no', '--main_process_port', '0',
               __file__, *arg]
    else:
        cmd = [sys.executable, __file__, *arg]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    rows = [json.loads(ln[7:]) for ln in proc.stdout.splitlines() if ln.startswith('RESULT ')]
    if proc.returncode or len(rows) != procs:
        err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        return [dict(failed=True, error=err[-1] if err else f'exit {proc.returncode}')]
    return sorted(rows, key=lambda r: r['rank'])


def summarise(model: str, rows: dict, batches: int) -> dict:
    def rank_peak(kind):
        return max(r['peak_memory_mib'] for r in rows[kind]) if not rows[kind][0].get('failed') else None
    ok = {k: not v[0].get('failed') for k, v in rows.items()}
    out = dict(
        img_per_s={k: v[0]['img_per_s'] if ok[k] else None for k, v in rows.items()},
        max_rank_peak_memory_mib={k: rank_peak(k) for k in rows})
    ips, mem = out['img_per_s'], out['max_rank_peak_memory_mib']
    out['pipeline_over_ddp_img_per_s'] = ips['pipeline'] / ips['ddp'] if ips['pipeline'] and ips['ddp'] else None
    out['pipeline_over_single_img_per_s'] = ips['pipeline'] / ips['single'] if ips['pipeline'] and ips['single'] else None
    out['pipeline_over_ddp_rank_peak_memory'] = mem['pipeline'] / mem['ddp'] if mem['pipeline'] and mem['ddp'] else None
    if 'pipeline_micro' in rows:
        a, b = mem.get('pipeline_micro'), mem.get('ddp_micro')
        out['pipeline_micro_over_ddp_micro_rank_peak_memory'] = a / b if a and b else None
        out['pipeline_micro_over_ddp_rank_peak_memory'] = a / mem['ddp'] if a and mem['ddp'] else None
    out['goals'] = dict(
        pipeline_img_per_s_at_least_ddp=None if out['pipeline_over_ddp_img_per_s'] is None
        else out['pipeline_over_ddp_img_per_s'] >= 1.0,
        pipeline_rank_peak_at_most_0_6x_ddp=None if out['pipeline_over_ddp_rank_peak_memory'] is None
        else out['pipeline_over_ddp_rank_peak_memory'] <= 0.6)
    if ok['single']:
        costs = rows['single'][0]['unit_costs_s']
        out['projection'] = [projection(costs, s, batches) for s in (2, 4, 8)]
    return out


def plot(results: dict, path: Path, title: str):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, len(results), figsize=(5.2 * len(results), 6.4), squeeze=False)
    for col, (model, res) in enumerate(results.items()):
        kinds = list(res['rows'])
        s = res['summary']
        for row, key, label in ((0, 'img_per_s', 'training img/s'), (1, 'max_rank_peak_memory_mib',
                                                                     'peak memory per process (MiB)')):
            ax = axes[row][col]
            values = [s[key][k] or 0 for k in kinds]
            bars = ax.bar([k.replace('_', '\n') for k in kinds], values,
                          color=['#888888', '#d9822b', '#2a7ab9', '#f0b27a', '#85c1e9'][:len(kinds)])
            ax.bar_label(bars, fmt='%.0f', fontsize=8)
            ax.set_ylabel(label)
            ax.set_title(model, fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data-dir', default=str(REPO.parent / 'shared/data/cifar10-jpeg'),
                   help="CIFAR-10 parquet folder ('' or a missing folder: the bundled sample)")
    p.add_argument('--models', nargs='+', default=list(MODELS))
    p.add_argument('--batch-size', type=int, default=128, help='global batch (DDP: half per process)')
    p.add_argument('--warmup', type=int, nargs=2, default=[5, 2], help='untimed steps: small CNN, ResNet')
    p.add_argument('--steps', type=int, nargs=2, default=[30, 6], help='timed steps: small CNN, ResNet')
    p.add_argument('--window', type=int, default=2, help='pipeline window')
    p.add_argument('--micro-chunk', type=int, default=32, help='*_micro: unit 0 runs in chunks of this many images')
    p.add_argument('--gpu', action='store_true', help='run on GPUs (NCCL) instead of CPU processes')
    p.add_argument('--timeout', type=float, default=1800)
    p.add_argument('--name', default='pipeline_cpu')
    p.add_argument('--out-dir', default=str(REPO / 'benchmarks/results'), help='writes <out-dir>/<name>.json')
    p.add_argument('--one', default='', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print('RESULT ' + json.dumps(run_worker(json.loads(args.one))), flush=True)
        return
    data_dir = args.data_dir if Path(args.data_dir).is_dir() else ''
    tmp = REPO / 'benchmarks/runs/pipeline'
    tmp.mkdir(parents=True, exist_ok=True)
    prov = provenance(0)
    results = {}
    for model in args.models:
        small = 'cnn' in model
        warm, steps = args.warmup[0 if small else 1], args.steps[0 if small else 1]
        need = (warm + steps + 2) * args.batch_size  # + the memory step and the profiling batch
        base = dict(model=model, batch_size=args.batch_size, data_dir=data_dir, per_class=-(-need // 10) + 10,
                    warmup=warm, steps=steps, window=args.window, micro_chunk=args.micro_chunk, cpu=not args.gpu,
                    tmp=str(tmp))
        rows = {kind: launch(dict(base, kind=kind), 1 if kind == 'single' else 2, args.timeout)
                for kind in ('single', 'ddp', 'pipeline', 'ddp_micro', 'pipeline_micro')}
        batches = 50000 // args.batch_size  # a CIFAR-10 epoch, for the bubble of the projection
        results[model] = dict(config=base, rows=rows, summary=summarise(model, rows, batches))
        for kind, r in rows.items():
            print(f'{model:16s} {kind:9s} ' + ('FAILED: ' + r[0]['error'] if r[0].get('failed') else
                  f"{r[0]['img_per_s']:8.1f} img/s  peak/rank " + ' '.join(f"{x['peak_memory_mib']:.0f}" for x in r)
                  + ' MiB'), flush=True)
    out = dict(prov, batch_size=args.batch_size, window=args.window, results=results)
    for model in results:
        results[model]['config'].pop('tmp', None)
    path = write_result(args.name, out, args.out_dir)
    plot(results, path.with_suffix('.png'), f"{prov['machine'].get('gpu', prov['machine']['cpu'])}, global batch "
                                            f"{args.batch_size}, 2 processes x 1 thread (single: 1 x 2 threads)")
    print(json.dumps({m: r['summary'] for m, r in results.items()}, indent=1))
    print(f'-> {path}')


if __name__ == '__main__':
    main()
