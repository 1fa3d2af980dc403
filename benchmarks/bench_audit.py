"""Systems audit: peak memory and training img/s of backprop and layer-local training on one model.

    python benchmarks/bench_audit.py --model dtgff_resnet18 --batch-size 256 --name audit_resnet18_cifar_cpu
    python benchmarks/bench_audit.py --model dtgff_resnet18 --model-kwargs '{"stem": "imagenet"}' --img-size 224 \\
        --batch-size 64 --name audit_resnet18_imagenet_cpu

The reference paper measured DTG-FF at 7.90 GB / 138 img/s against BP with gradient accumulation at
4.18 GB / 157 img/s on an 8 GB GPU. This audit measures, on the same model, input size and effective
batch, each configuration in a fresh process:

* ``bp``: end to end, last head; ``bp_accum``: the same with ``--accum-steps`` micro-batches per
  optimiser step; ``bp_ckpt``: the same with every unit's forward under activation checkpointing
  (``torch.utils.checkpoint``, non-reentrant: recomputed in the backward; BatchNorm and temperature
  buffers then update twice per step, which changes neither memory nor speed); ``bp_deepsup``: every
  unit's head loss, end to end;
* ``dtg_summed`` / ``dtg_per_unit``: layer-local DTG-FF with one backward over all unit losses, or unit
  by unit (each unit's graph freed before the next unit runs).
* ``dtg_per_unit_micro``: ``dtg_per_unit`` with ``--unit-micro-batches`` (default ``{"0": 4}``): those
  units process the batch in chunks, accumulating their gradients, while the others take it whole.

Timing is the throughput benchmark's (``bench_throughput.warm_trainer`` / ``timed_steps``: the real
:class:`timm_ff.trainer.LocalTrainer` on the batch-tensor data path, ``--warmup`` untimed then
``--steps`` timed optimiser steps), so the two agree. The images are CIFAR-10 (``--data-dir``, else the
bundled sample), resized on the device to ``--img-size``; their content changes neither memory nor speed.

Peak memory of one optimiser step (parameters, gradients, optimiser state, activations, temporaries):
on CUDA ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``; on every device also
torch's ``MemTracker`` (``torch.distributed._tools.mem_tracker``), which sees every tensor torch
allocates and gives the breakdown at the peak; on CPU that is the peak reported. The phase in which
the peak is reached (which unit's forward or backward, or the optimiser step) is recorded too.

A configuration that crashes is recorded as failed, with its last error line, and the others still
run. Results: ``benchmarks/results/<name>.json``, a table in the terminal and a PNG bar chart.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import REPO, provenance, write_result  # noqa: E402
from bench_throughput import _setup, timed_steps, warm_trainer  # noqa: E402

CONFIGS = {
    'bp': dict(objective='bp', mode='summed'),
    'bp_accum': dict(objective='bp', mode='summed', accum=True),
    'bp_ckpt': dict(objective='bp', mode='summed', checkpoint=True),
    'bp_deepsup': dict(objective='bp_deepsup', mode='summed'),
    'dtg_summed': dict(objective='dtg', mode='summed'),
    'dtg_per_unit': dict(objective='dtg', mode='per_unit'),
    'dtg_per_unit_micro': dict(objective='dtg', mode='per_unit', micro=True),
}
MIB = 2 ** 20
MEMTRACKER = 'torch MemTracker (every torch tensor: params, grads, optimiser state, activations, temporaries)'


def _checkpointed(unit):
    """``unit`` whose forward runs under non-reentrant activation checkpointing."""
    import torch
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args, **kwargs):
            return checkpoint(self.inner, *args, use_reentrant=False, **kwargs)
    return Checkpointed(unit)


def _phase(events: list, mode: str, num_units: int) -> tuple:
    """Where the peak was reached: the segment after the last event whose running peak was below the final one."""
    final = events[-1][1]
    start = next(i for i, (_, peak) in enumerate(events) if peak >= final) - 1
    name = events[max(start, 0)][0]
    kind, unit = name
    if kind == 'forward':
        return f'unit {unit} forward', unit
    if kind == 'after':
        if mode == 'per_unit':
            return f'unit {unit} loss and backward', unit
        if unit == num_units - 1:
            return 'loss and backward through all units', None
        return f'unit {unit} loss', unit
    return {'optimizer': 'optimiser step', 'start': 'before the step (resident state)'}[kind], None


def measure_memory(trainer, model, optimizer, mode: str) -> dict:
    """Peak memory of the trainer's next optimiser step(s): CUDA allocator peak, MemTracker breakdown and phase."""
    import torch
    from torch.distributed._tools.mem_tracker import MemTracker
    device = trainer.acc.device
    out = {}
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        timed_steps(trainer, 1)
        out.update(peak_memory_mib=torch.cuda.max_memory_allocated(device) / MIB,
                   memory_method='torch.cuda.max_memory_allocated over one optimiser step after reset_peak_memory_stats')
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    units = list(trainer.units)
    events = []

    def mark(kind, unit=None):
        events.append(((kind, unit), tracker.get_tracker_snapshot('peak').get(device, {}).get('Total', 0)))

    def before_forward(module, args):
        if module in units:
            if module is units[0] and events:
                # a new micro-batch: MemTracker tracks one call of each root module, so its module stats restart
                # (this hook is registered before the tracker's own, so it runs first); the peak is kept
                tracker.reset_mod_stats()
            mark('forward', units.index(module))
    hooks = [torch.nn.modules.module.register_module_forward_pre_hook(before_forward)]
    hooks += [unit.register_forward_hook(lambda m, a, o, u=u: mark('after', u)) for u, unit in enumerate(units)]
    hooks.append(optimizer.register_step_pre_hook(lambda opt, a, k: mark('optimizer')))
    try:
        with tracker:
            mark('start')
            timed_steps(trainer, 1)
            mark('end')
    finally:
        for h in hooks:
            h.remove()
    peak = tracker.get_tracker_snapshot('peak').get(device, {})
    phase, unit = _phase(events, mode, len(units))
    out.update(tracker_peak_mib=peak.get('Total', 0) / MIB,
               tracker_breakdown_mib={k: v / MIB for k, v in peak.items() if k != 'Total'},
               peak_phase=phase, peak_unit=unit)
    if device.type != 'cuda':
        out.update(peak_memory_mib=out['tracker_peak_mib'], memory_method=MEMTRACKER + ', one optimiser step')
    return out


def run_config(cfg: dict) -> dict:
    """One configuration in this process: img/s over the timed steps, then peak memory of one more step."""
    import torch
    torch.manual_seed(0)
    spec = CONFIGS[cfg['config']]
    accum = cfg['accum_steps'] if spec.get('accum') else 1
    acc, model, train, source = _setup(cfg['model'], cfg['batch_size'] // accum, cfg['data_dir'],
                                       cfg['mixed_precision'], False, cfg['model_kwargs'], cfg['img_size'], accum)
    if spec.get('checkpoint'):
        for i, unit in enumerate(model.units):
            model.units[i] = _checkpointed(unit)
    micro = cfg['unit_micro_batches'] if spec.get('micro') else None
    trainer, opt = warm_trainer(acc, model, train, spec['objective'], spec['mode'], cfg['warmup'], cfg['tmp'], micro)
    img_per_s = timed_steps(trainer, cfg['steps'])
    x, _ = next(iter(train))
    return dict(img_per_s=img_per_s, micro_batch=cfg['batch_size'] // accum, accum_steps=accum,
                unit_micro_batches=micro,
                input_shape=list(x.shape[1:]), data_source=source, device=str(acc.device),
                params_m=sum(p.numel() for p in model.parameters()) / 1e6,
                **measure_memory(trainer, model, opt, spec['mode']))


def check_configs(configs: list, model_name: str, model_kwargs: dict, batch_size: int, accum_steps: int):
    """Fail before running anything for an unknown configuration or one the model cannot run (one clear line)."""
    import timm

    import timm_ff
    from timm_ff.errors import ConfigError, unknown_choice
    for name in configs:
        if name not in CONFIGS:
            raise unknown_choice('audit configuration', name, CONFIGS)
    if 'bp_accum' in configs and (accum_steps < 2 or batch_size % accum_steps):
        raise ConfigError(f'audit configuration bp_accum needs --accum-steps >= 2 dividing --batch-size {batch_size}, '
                          f'got {accum_steps}')
    if batch_size < 1:
        raise ConfigError(f'--batch-size must be a positive integer, got {batch_size}')
    models = timm.list_models(['ff_*', 'dtgff_*'])
    if timm.models.split_model_name_tag(model_name)[0] not in models:
        raise ConfigError(f"unknown model {model_name!r}; timm_ff models: {', '.join(models)}")
    model = timm.create_model(model_name, num_classes=10, **model_kwargs)
    for name in configs:
        try:
            timm_ff.create_objective(CONFIGS[name]['objective']).check_model(model)
        except ConfigError as e:
            raise ConfigError(f'audit configuration {name!r} cannot run on {model_name}: {e}') from None


def ratios(rows: dict) -> dict:
    """The aims' ratios: FF per_unit memory over BP (at most 0.5) and over BP + accumulation (at most 1), and
    its throughput over BP's (at least 0.9); None where a configuration failed."""
    def get(cfg, key):
        return rows.get(cfg, {}).get(key)

    def div(a, b):
        return a / b if a is not None and b else None
    out = {}
    for ff in ('dtg_per_unit', 'dtg_summed', 'dtg_per_unit_micro'):
        for bp in ('bp', 'bp_accum', 'bp_ckpt', 'bp_deepsup'):
            out[f'{ff}_memory_over_{bp}'] = div(get(ff, 'peak_memory_mib'), get(bp, 'peak_memory_mib'))
            out[f'{ff}_img_per_s_over_{bp}'] = div(get(ff, 'img_per_s'), get(bp, 'img_per_s'))
    pu = dict(memory_over_bp=out['dtg_per_unit_memory_over_bp'],
              memory_over_bp_accum=out['dtg_per_unit_memory_over_bp_accum'],
              img_per_s_over_bp=out['dtg_per_unit_img_per_s_over_bp'])
    micro = dict(memory_over_bp=out['dtg_per_unit_micro_memory_over_bp'],
                 memory_over_bp_accum=out['dtg_per_unit_micro_memory_over_bp_accum'])
    out['aims_micro'] = dict(
        memory_at_most_half_of_bp=None if micro['memory_over_bp'] is None else micro['memory_over_bp'] <= 0.5,
        memory_at_most_bp_accum=None if micro['memory_over_bp_accum'] is None else micro['memory_over_bp_accum'] <= 1.0)
    out['aims'] = dict(
        per_unit_memory_at_most_half_of_bp=None if pu['memory_over_bp'] is None else pu['memory_over_bp'] <= 0.5,
        per_unit_memory_at_most_bp_accum=None if pu['memory_over_bp_accum'] is None else pu['memory_over_bp_accum'] <= 1.0,
        per_unit_throughput_loss_at_most_10pct=None if pu['img_per_s_over_bp'] is None else pu['img_per_s_over_bp'] >= 0.9)
    return out


def table(rows: dict) -> str:
    lines = [f"{'configuration':14s} {'peak MiB':>10s} {'img/s':>9s}  peak reached in",
             '-' * 64]
    for name, r in rows.items():
        if r.get('failed'):
            lines.append(f"{name:14s} {'FAILED':>10s} {'':>9s}  {r['error']}")
        else:
            lines.append(f"{name:14s} {r['peak_memory_mib']:10.1f} {r['img_per_s']:9.1f}  {r['peak_phase']}")
    return '\n'.join(lines)


def markdown(results: list) -> str:
    """README table of committed audit results: one row per configuration of each, then the aims' ratios."""
    lines = ['| model, input, effective batch | configuration | peak memory (MiB) | img/s | peak reached in |',
             '|---|---|---|---|---|']
    notes = []
    for res in results:
        shape = 'x'.join(map(str, res['input_shape'][1:])) if res.get('input_shape') else '?'
        stem = f" {res['model_kwargs']['stem']} stem" if 'stem' in res.get('model_kwargs', {}) else ''
        what = f"`{res['model']}`{stem}, {shape}, {res['batch_size']}"
        for name, r in res['configs'].items():
            if r.get('failed'):
                lines.append(f"| {what} | `{name}` | failed: {r['error']} | | |")
            else:
                extra = f" ({r['accum_steps']} x {r['micro_batch']})" if r['accum_steps'] > 1 else ''
                extra += f" (chunks {json.dumps(r['unit_micro_batches'])})" if r.get('unit_micro_batches') else ''
                lines.append(f"| {what} | `{name}`{extra} | {r['peak_memory_mib']:.0f} | {r['img_per_s']:.1f} | "
                             f"{r['peak_phase']} |")
        q = res['ratios']

        def f(key):
            return 'n/a' if q.get(key) is None else f'{q[key]:.2f}'
        notes.append(f"- {what} (`{res['device']}`, commit {res['git_commit'][:7]}): `dtg_per_unit` memory / `bp` "
                     f"{f('dtg_per_unit_memory_over_bp')} (aim <= 0.5), / `bp_accum` {f('dtg_per_unit_memory_over_bp_accum')} "
                     f"(aim <= 1), img/s / `bp` {f('dtg_per_unit_img_per_s_over_bp')} (aim >= 0.9); `dtg_summed` memory / "
                     f"`bp` {f('dtg_summed_memory_over_bp')}."
                     + (f" `dtg_per_unit_micro` memory / `bp` {f('dtg_per_unit_micro_memory_over_bp')}, / `bp_accum` "
                        f"{f('dtg_per_unit_micro_memory_over_bp_accum')}." if 'dtg_per_unit_micro' in res['configs'] else ''))
    return '\n'.join(lines + [''] + notes)


def plot(rows: dict, path: Path, title: str):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = list(rows)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    colors = ['#2a7ab9' if n.startswith('dtg') else '#d9822b' for n in names]
    for ax, key, label in ((axes[0], 'peak_memory_mib', 'peak memory of one step (MiB)'),
                           (axes[1], 'img_per_s', 'training img/s')):
        values = [rows[n].get(key) or 0 for n in names]
        bars = ax.bar([n.replace('_', '\n', 1) for n in names], values, color=colors)
        ax.bar_label(bars, labels=['failed' if rows[n].get('failed') else f'{v:.0f}' for n, v in zip(names, values)],
                     fontsize=8)
        ax.set_ylabel(label)
        ax.tick_params(axis='x', labelsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='dtgff_resnet18', help='timm_ff model (with class heads: dtgff_*)')
    p.add_argument('--model-kwargs', default={}, type=json.loads, help='JSON dict of model kwargs, e.g. {"stem": "imagenet"}')
    p.add_argument('--img-size', type=int, default=0, help="input side in pixels (0: the model's default)")
    p.add_argument('--batch-size', type=int, default=256, help='effective batch: images per optimiser step')
    p.add_argument('--accum-steps', type=int, default=4, help='bp_accum: micro-batches per optimiser step')
    p.add_argument('--unit-micro-batches', default={'0': 4}, type=json.loads,
                   help='dtg_per_unit_micro: JSON {unit: chunks} (as train_ff.py --unit-micro-batches)')
    p.add_argument('--configs', nargs='+', default=list(CONFIGS), help=f"any of {', '.join(CONFIGS)}")
    p.add_argument('--warmup', type=int, default=2, help='untimed optimiser steps')
    p.add_argument('--steps', type=int, default=5, help='timed optimiser steps')
    p.add_argument('--mixed-precision', default='no', choices=['no', 'bf16'])
    p.add_argument('--data-dir', default=str(REPO.parent / 'shared/data/cifar10-jpeg'),
                   help="CIFAR-10 parquet folder ('' or a missing folder: the bundled sample)")
    p.add_argument('--timeout', type=float, default=3600, help='seconds a configuration may run before it counts as failed')
    p.add_argument('--name', default='audit_cpu', help='results name: <out-dir>/<name>.json and .png')
    p.add_argument('--out-dir', default=str(REPO / 'benchmarks/results'))
    p.add_argument('--report', nargs='+', default=[], metavar='NAME',
                   help='print the README table of these finished results (<out-dir>/<NAME>.json) and exit')
    p.add_argument('--one', default='', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.report:
        print(markdown([json.loads((Path(args.out_dir) / f'{n}.json').read_text()) for n in args.report]))
        return 0
    if args.one:
        print('RESULT ' + json.dumps(run_config(json.loads(args.one))))
        return 0
    from timm_ff.errors import TimmFFError
    try:
        check_configs(args.configs, args.model, args.model_kwargs, args.batch_size, args.accum_steps)
    except TimmFFError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    data_dir = args.data_dir if Path(args.data_dir).is_dir() else ''
    tmp = REPO / 'benchmarks/runs/audit'
    tmp.mkdir(parents=True, exist_ok=True)
    base = dict(model=args.model, model_kwargs=args.model_kwargs, img_size=args.img_size, batch_size=args.batch_size,
                accum_steps=args.accum_steps, unit_micro_batches=args.unit_micro_batches, warmup=args.warmup,
                steps=args.steps, data_dir=data_dir,
                mixed_precision=args.mixed_precision, tmp=str(tmp))
    rows = {}
    for name in args.configs:
        cmd = [sys.executable, __file__, '--one', json.dumps(dict(base, config=name))]
        t0 = time.time()
        try:
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=args.timeout)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT ')]
            if proc.returncode == 0 and line:
                rows[name] = json.loads(line[-1][7:])
            else:
                err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
                rows[name] = dict(failed=True, error=err[-1] if err else f'exit code {proc.returncode}, no output')
        except subprocess.TimeoutExpired:
            rows[name] = dict(failed=True, error=f'timed out after {args.timeout:g} s')
        rows[name].update(CONFIGS[name], wall_s=time.time() - t0)
        r = rows[name]
        print(f"{name:14s} " + (f"FAILED: {r['error']}" if r.get('failed') else
                                f"{r['peak_memory_mib']:8.1f} MiB  {r['img_per_s']:8.1f} img/s  peak: {r['peak_phase']}"),
              flush=True)
    prov = provenance(0)
    first = next((r for r in rows.values() if not r.get('failed')), {})
    result = dict(prov, model=args.model, model_kwargs=args.model_kwargs, batch_size=args.batch_size,
                  accum_steps=args.accum_steps, input_shape=first.get('input_shape'), warmup=args.warmup,
                  steps=args.steps, mixed_precision=args.mixed_precision, device=first.get('device'),
                  memory_method=first.get('memory_method'), configs=rows, ratios=ratios(rows))
    path = write_result(args.name, result, args.out_dir)
    print(table(rows))
    print(json.dumps(dict(result['ratios']['aims'], **result['ratios']['aims_micro']), indent=2))
    shape = 'x'.join(map(str, first.get('input_shape') or [])) or '?'
    plot(rows, path.with_suffix('.png'),
         f"{args.model} {json.dumps(args.model_kwargs) if args.model_kwargs else ''} input {shape}, effective batch "
         f"{args.batch_size}; {prov['machine'].get('gpu', prov['machine']['cpu'])}")
    print(f'-> {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
