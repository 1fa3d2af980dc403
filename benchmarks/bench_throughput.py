"""Training throughput of layer-local vs end-to-end training, the data path alone, and trainer overhead.

    python benchmarks/bench_throughput.py                       # CPU, dtgff_cnn_s and dtgff_resnet18
    python benchmarks/bench_throughput.py --mixed-precision bf16 --compile --name throughput_gpu   # on a GPU

Every configuration runs in a fresh process (no allocator or compile cache shared between them) on
the same batches of the batch-tensor data path (full ``cifar10-jpeg`` when present, else the bundled
sample), with ``--warmup`` untimed steps and then ``--steps`` timed optimiser steps through the real
:class:`timm_ff.trainer.LocalTrainer`. Beside them: ``data`` times the data path alone (batches made,
no model), and ``overhead`` runs the same ``dtg`` summed step as a hand-written PyTorch loop on the
same model and batches, alternated with the trainer in one process (median of 3 rounds each), so
``bare / trainer`` is the trainer's overhead. Results go to
``benchmarks/results/<name>.json`` and a PNG bar chart next to it.

``--compare REV`` measures a before/after pair in one run: the trainer and data-path configurations
run once with this checkout's ``timm_ff`` and once with REV's (exported by ``git archive`` and put
first on ``PYTHONPATH``), alternating config by config so both see the same machine state;
``ratios['<model>']['head_over_ref']`` gives this checkout's img/s over REV's for each configuration.

    python benchmarks/bench_throughput.py --compare fd41cd1 --name throughput_hot_loop_cpu
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import REPO, provenance, write_result  # noqa: E402

MODELS = ('dtgff_cnn_s', 'dtgff_resnet18')
TRAIN_CONFIGS = (('dtg', 'summed'), ('dtg', 'per_unit'), ('bp', 'summed'), ('bp_deepsup', 'summed'))


def _setup(model_name: str, batch_size: int, data_dir: str, mixed_precision: str, channels_last: bool,
           model_kwargs: dict | None = None, img_size: int = 0, grad_accum_steps: int = 1):
    """The parts train_ff.py builds: accelerator, model, loaders (tensor path).

    ``batch_size`` is the loader's (micro-)batch; ``img_size`` (0: the model's default) resizes the
    images on the device; ``grad_accum_steps`` micro-batches make one optimiser step.
    """
    import timm
    from accelerate import Accelerator
    from timm.data import resolve_data_config

    import timm_ff  # noqa: F401
    from timm_ff.data import create_loaders, load_image_datasets
    data = load_image_datasets('cifar10', data_dir=data_dir or None)
    acc = Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum_steps)
    model = timm.create_model(model_name, num_classes=data.num_classes, **(model_kwargs or {}))
    if channels_last:
        from timm_ff.trainer import to_channels_last
        to_channels_last(model)
    config = resolve_data_config(model=model)
    if img_size:
        config['input_size'] = (config['input_size'][0], img_size, img_size)
    train, _ = create_loaders(data, data_config=config, batch_size=batch_size, in_chans=getattr(model, 'in_chans', 3),
                              pipeline='tensor', aug='crop_flip', device=acc.device, channels_last=channels_last)
    return acc, model, train, data.source


def _cycle(loader):
    """Batches of epoch 0, 1, 2, ... without end (the bundled sample has only 7 batches per epoch)."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def _sync(device):
    import torch
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def run_one(cfg: dict) -> dict:
    """One configuration in this process; returns img/s (and CUDA peak memory)."""
    import torch

    from timm_ff.trainer import compile_units
    torch.manual_seed(0)
    acc, model, train, source = _setup(cfg['model'], cfg['batch_size'], cfg['data_dir'], cfg['mixed_precision'],
                                       cfg['channels_last'], model_kwargs=cfg.get('model_kwargs'))
    warm, steps, b = cfg['warmup'], cfg['steps'], cfg['batch_size']
    import timm_ff
    out = dict(cfg, data_source=source, device=str(acc.device), timm_ff_from=str(Path(timm_ff.__file__).parent))
    if cfg['kind'] == 'data':
        it = _cycle(train)
        for _ in range(warm):
            next(it)
        _sync(acc.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            x, _ = next(it)
        _sync(acc.device)
        return dict(out, img_per_s=steps * b / (time.perf_counter() - t0))
    if cfg['compile']:
        why_not = compile_units(model.local_units())
        out['compiled'] = not why_not
    if acc.device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(acc.device)
    trainer, opt = warm_trainer(acc, model, train, cfg['objective'], cfg['mode'], warm, cfg['tmp'])

    def trainer_steps(n):
        return timed_steps(trainer, n)
    if cfg['kind'] == 'trainer':
        return dict(out, img_per_s=trainer_steps(steps), **_cuda_peak(acc.device))
    if cfg['kind'] == 'head':  # one head's step: img/s, and this process's peak memory (the same data and model)
        return dict(out, img_per_s=trainer_steps(steps), head_params=sum(
            p.numel() for u in model.local_units() for p in u.head.parameters()), **_peak_memory(acc.device))
    # 'overhead': the same dtg summed step (unit losses + fusion fit) written by hand, on the same model
    # and batches, alternated with the trainer in this process so both see the same machine state;
    # medians of the rounds
    model.train()
    units = model.local_units()
    fit_fusion = any(p.requires_grad for p in model.fusion.parameters())
    ce = torch.nn.functional.cross_entropy
    it = _cycle(train)

    def bare_steps(n):
        _sync(acc.device)
        t0 = time.perf_counter()
        for _ in range(n):
            x, y = next(it)
            h, losses = x, []
            logits = []
            with torch.autocast(acc.device.type, dtype=torch.bfloat16, enabled=cfg['mixed_precision'] == 'bf16'):
                for unit in units:
                    h, z = unit(h.detach(), with_logits=True)
                    losses.append(ce(z.float(), y))
                    logits.append(z.detach())
            if fit_fusion:  # the learned fusion weights are fitted on detached logits, as the trainer does
                losses.append(ce(model.fusion(logits), y))
            torch.stack(losses).sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        _sync(acc.device)
        return n * b / (time.perf_counter() - t0)
    bare_steps(warm)
    rounds = [(trainer_steps(steps), bare_steps(steps)) for _ in range(3)]
    out.update(trainer_img_per_s=statistics.median(r[0] for r in rounds),
               bare_img_per_s=statistics.median(r[1] for r in rounds), rounds=rounds)
    out['img_per_s'] = out['bare_img_per_s']
    return dict(out, **_cuda_peak(acc.device))


def warm_trainer(acc, model, train, objective: str, mode: str, warmup: int, tmp: str, micro_batches=None):
    """The real :class:`LocalTrainer` on ``train`` after ``warmup`` untimed optimiser steps; returns it and its optimiser."""
    from timm.optim import create_optimizer_v2

    import timm_ff
    from timm_ff.trainer import LocalTrainer
    opt = create_optimizer_v2(model, opt='adamw', lr=1e-3, weight_decay=5e-4)
    trainer = LocalTrainer(accelerator=acc, model=model, objective=timm_ff.create_objective(objective),
                           optimizer=opt, scheduler=None, train_loader=train, eval_loader=train, epochs=1,
                           output_dir=Path(tmp), local_backward=mode, max_train_steps=warmup,
                           log_every=10 ** 9, progress=False, **({'micro_batches': micro_batches} if micro_batches else {}))
    trainer.train_epoch(0)
    return trainer, opt


def timed_steps(trainer, n: int) -> float:
    """img/s of the trainer's next ``n`` optimiser steps (continues mid-epoch, as a resumed run does)."""
    device = trainer.acc.device
    left = len(trainer.train_loader) - trainer.state.step_in_epoch
    need = n * trainer.acc.gradient_accumulation_steps
    if need > left:
        raise RuntimeError(f'{n} more optimiser steps need {need} batches but only {left} are left in the epoch; '
                           'use fewer warm-up/timed steps or a larger dataset')
    trainer.max_train_steps = trainer.state.global_step + n
    _sync(device)
    stats = trainer.train_epoch(0)
    _sync(device)
    return stats['train_images'] / stats['train_time_s']


def _cuda_peak(device) -> dict:
    import torch
    if device.type != 'cuda':
        return {}
    return dict(cuda_max_memory_allocated_mb=torch.cuda.max_memory_allocated(device) / 2 ** 20)


def _peak_memory(device) -> dict:
    """Peak memory of this process: the CUDA allocator's on a GPU, else the peak resident set size."""
    if device.type == 'cuda':
        return _cuda_peak(device)
    import resource
    return dict(peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def head_ratios(rows) -> dict:
    """Per model, head and objective: the median over rounds of img/s and peak memory, and the step time over the
    goodness head's step time (the same objective, the same run)."""
    import statistics
    groups = {}
    for r in rows:
        if r.get('kind') == 'head' and 'img_per_s' in r:
            groups.setdefault((r['model'], r['model_kwargs']['head'], r['objective']), []).append(r)
    out = {}
    for (model, head, objective), rs in groups.items():
        mem = 'peak_rss_mb' if 'peak_rss_mb' in rs[0] else 'cuda_peak_mb'
        out.setdefault(model, {}).setdefault(head, {})[objective] = dict(
            img_per_s=statistics.median(r['img_per_s'] for r in rs), rounds=len(rs),
            peak_memory_mb=statistics.median(r[mem] for r in rs), memory_kind=mem, head_params=rs[0]['head_params'])
    for model, heads in out.items():
        for head, objs in heads.items():
            for objective, v in objs.items():
                ref = heads.get('goodness', {}).get(objective)
                v['step_time_over_goodness'] = ref['img_per_s'] / v['img_per_s'] if ref else None
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data-dir', default=str(REPO.parent / 'shared/data/cifar10-jpeg'),
                   help="CIFAR-10 parquet folder ('' or a missing folder: the bundled sample)")
    p.add_argument('--models', nargs='+', default=list(MODELS))
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--warmup', type=int, nargs=2, default=[5, 2], help='untimed steps: small CNN, ResNet')
    p.add_argument('--steps', type=int, nargs=2, default=[40, 8], help='timed steps: small CNN, ResNet')
    p.add_argument('--mixed-precision', default='no', choices=['no', 'bf16'])
    p.add_argument('--compile', action='store_true')
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--name', default='throughput_cpu')
    p.add_argument('--compare', default='', metavar='REV',
                   help="also run every trainer and data-path configuration on git revision REV's timm_ff, alternated")
    p.add_argument('--heads', nargs='*', default=[], help="also time dtg and bp_deepsup steps with each of these heads "
                   "(model kwarg head=; 'goodness' is the reference), with each process's peak memory")
    p.add_argument('--rounds', type=int, default=1, help='--heads: timed rounds per head (medians reported)')
    p.add_argument('--skip-trainer', action='store_true', help='only the --heads rows (no data path, trainer, overhead)')
    p.add_argument('--one', default='', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print('RESULT ' + json.dumps(run_one(json.loads(args.one))))
        return
    data_dir = args.data_dir if Path(args.data_dir).is_dir() else ''
    prov = provenance(0)
    rows = []
    tmp = REPO / 'benchmarks/runs/throughput'
    tmp.mkdir(parents=True, exist_ok=True)
    ref = export_revision(args.compare, tmp) if args.compare else None
    for model in args.models:
        small = 'cnn' in model or 'mlp' in model
        base = dict(model=model, batch_size=args.batch_size, data_dir=data_dir, mixed_precision=args.mixed_precision,
                    compile=args.compile, channels_last=args.channels_last, tmp=str(tmp),
                    warmup=args.warmup[0 if small else 1], steps=args.steps[0 if small else 1])
        configs = [] if args.skip_trainer else [dict(base, kind='data', warmup=5, steps=200 if small else 100)]
        configs += [] if args.skip_trainer else [dict(base, kind='trainer', objective=o, mode=m) for o, m in TRAIN_CONFIGS]
        if ref is None and not args.skip_trainer:
            configs += [dict(base, kind='overhead', objective='dtg', mode='summed')]
        elif ref is not None:  # each configuration on REV's code right after this checkout's
            configs = [dict(c, code=code) for c in configs for code in ('head', 'ref')]
        heads = (['goodness'] if args.heads and 'goodness' not in args.heads else []) + list(args.heads)
        # rounds alternate the heads, so a drift of the machine's speed reaches every head alike
        configs += [dict(base, kind='head', objective=o, mode='summed', model_kwargs=dict(head=h), round=r)
                    for r in range(args.rounds) for o in ('dtg', 'bp_deepsup') for h in heads]
        for cfg in configs:
            cmd = [sys.executable, __file__, '--one', json.dumps(cfg)]
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ref['path']), os.environ.get('PYTHONPATH', '')])) \
                if cfg.get('code') == 'ref' else None
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT ')]
            row = json.loads(line[-1][7:]) if proc.returncode == 0 and line else dict(
                cfg, failed=True, error=proc.stderr.strip().splitlines()[-1:] or ['no output'])
            row.pop('tmp', None)
            rows.append(row)
            label = {'trainer': f"{row.get('objective')} {row.get('mode')}", 'overhead': 'bare loop',
                     'head': f"{row.get('objective')} head={row.get('model_kwargs', {}).get('head')}"}.get(row['kind'], row['kind'])
            label += f" [{row['code']}]" if 'code' in row else ''
            print(f"{model:16s} {label:18s} " + (f"{row['img_per_s']:8.1f} img/s" if 'img_per_s' in row else 'FAILED'),
                  flush=True)
    result = dict(prov, batch_size=args.batch_size, mixed_precision=args.mixed_precision, compile=args.compile,
                  channels_last=args.channels_last, rows=rows, ratios=ratios(rows), head_ratios=head_ratios(rows))
    if ref is not None:
        result['compare'] = dict(ref=ref['commit'], head=prov['git_commit'], git_dirty=prov['git_dirty'])
        for model, r in result['ratios'].items():
            r['head_over_ref'] = head_over_ref(rows, model)
    path = write_result(args.name, result)
    print(json.dumps(result['ratios'], indent=2))
    plot(rows, path.with_suffix('.png'), f"{prov['machine'].get('gpu', prov['machine']['cpu'])}, batch {args.batch_size}")
    print(f'-> {path}')


def export_revision(rev: str, tmp: Path) -> dict:
    """``git archive`` of revision ``rev`` into ``tmp/ref-<commit>`` (reused if there); its path and full commit."""
    commit = subprocess.run(['git', 'rev-parse', '--verify', f'{rev}^{{commit}}'], cwd=REPO, capture_output=True,
                            text=True)
    if commit.returncode:
        raise SystemExit(f'--compare {rev!r} is not a git revision of this repository')
    commit = commit.stdout.strip()
    path = tmp / f'ref-{commit[:12]}'
    if not (path / 'timm_ff' / '__init__.py').is_file():
        path.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(['git', 'archive', commit, 'timm_ff'], cwd=REPO, capture_output=True, check=True)
        subprocess.run(['tar', '-x', '-C', str(path)], input=archive.stdout, check=True)
    return dict(path=path, commit=commit)


def _get(rows, model, kind, objective=None, mode=None, code='head'):
    for r in rows:
        if r['model'] == model and r['kind'] == kind and r.get('objective') == objective and r.get('mode') == mode \
                and r.get('code', 'head') == code:
            return r.get('img_per_s')
    return None


def head_over_ref(rows, model) -> dict:
    """This checkout's img/s over the compared revision's, per configuration of ``model``."""
    out = {}
    for kind, objective, mode in [('data', None, None)] + [('trainer', o, m) for o, m in TRAIN_CONFIGS]:
        head, ref = _get(rows, model, kind, objective, mode), _get(rows, model, kind, objective, mode, 'ref')
        out[kind if kind == 'data' else f'{objective} {mode}'] = head / ref if head and ref else None
    return out


def ratios(rows) -> dict:
    """The goals' ratios per model (None where a configuration failed)."""
    out = {}
    for model in dict.fromkeys(r['model'] for r in rows):
        def g(*a):
            return _get(rows, model, *a)
        summed, per_unit = g('trainer', 'dtg', 'summed'), g('trainer', 'dtg', 'per_unit')
        bp, bpds, data = g('trainer', 'bp', 'summed'), g('trainer', 'bp_deepsup', 'summed'), g('data')
        pair = [r for r in rows if r['model'] == model and r['kind'] == 'overhead' and 'bare_img_per_s' in r]
        bare, beside = (pair[0]['bare_img_per_s'], pair[0]['trainer_img_per_s']) if pair else (None, None)
        div = lambda a, b: a / b if a and b else None  # noqa: E731
        out[model] = dict(
            dtg_over_bp_deepsup=div(summed, bpds), dtg_per_unit_over_bp_deepsup=div(per_unit, bpds),
            dtg_over_bp=div(summed, bp), dtg_per_unit_over_bp=div(per_unit, bp),
            data_path_over_dtg=div(data, summed),
            trainer_overhead_pct=(div(bare, beside) - 1) * 100 if bare and beside else None)
    return out


def plot(rows, path: Path, title: str):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    models = list(dict.fromkeys(r['model'] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 3.6), squeeze=False)
    for ax, model in zip(axes[0], models):
        sel = [r for r in rows if r['model'] == model and r['kind'] != 'data' and 'img_per_s' in r]
        sel = [r for r in sel if r['kind'] != 'head' or r.get('round', 0) == 0]
        labels = ['bare loop\n(dtg summed)' if r['kind'] == 'overhead' else f"{r['objective']}\n{r['model_kwargs']['head']}"
                  if r['kind'] == 'head' else f"{r['objective']}\n{r['mode']}"
                  + (f"\n{r['code']}" if 'code' in r else '') for r in sel]
        colors = ['#888888' if r['kind'] == 'overhead' or r.get('code') == 'ref' else '#2a7ab9' if r['objective'] == 'dtg'
                  else '#d9822b' for r in sel]
        bars = ax.bar(labels, [r['img_per_s'] for r in sel], color=colors)
        ax.bar_label(bars, fmt='%.0f', fontsize=8)
        data = _get(rows, model, 'data')
        ax.set_title(f'{model}' + (f'  (data path alone: {data:.0f} img/s)' if data else ''), fontsize=9)
        ax.set_ylabel('training img/s')
        ax.tick_params(axis='x', labelsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == '__main__':
    main()
