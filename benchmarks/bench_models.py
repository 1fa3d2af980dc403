"""Size and CPU cost of every registered timm_ff backbone: parameters and one training step.

    python benchmarks/bench_models.py

For each model in ``timm.list_models(['ff_*', 'dtgff_*'])``: parameter count, and the wall time of
one ``LocalTask.step`` (forward + backward of every unit, no optimiser step) on a batch of 32 at
the model's default input size (32x32 for the ResNets: their cifar10 tag), with the model's own
objective (``dtg`` for ``dtgff_*``, ``ff`` for ``ff_*``). DTG-FF models are also timed under
``bp_deepsup`` on the same batch, for the FF / BP step-time ratio. Eval inference time
(``model(x)``, which scores all K labels for classic FF) is reported too. One warm-up, then the
median of ``--repeats`` timed runs. Writes ``benchmarks/results/models_cpu.json``.

Timings on a shared machine are only as good as its idle time: the result records the load
average and CPU pressure before and after the run; rerun when either is high (another job
competing for the cores makes every multi-threaded op wait, often by an order of magnitude).
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import REPO, portable, provenance  # noqa: E402

import timm_ff  # noqa: E402
from timm_ff import create_objective  # noqa: E402
from timm_ff.task import LocalTask  # noqa: E402


def cpu_pressure() -> dict:
    """Linux PSI 'some' CPU pressure (% of time a task waited for a CPU); {} where not available."""
    try:
        line = Path('/proc/pressure/cpu').read_text().splitlines()[0]
    except (OSError, IndexError):
        return {}
    return {k: float(v) for k, v in (f.split('=') for f in line.split()[1:]) if k.startswith('avg')}


def natural_objective(model_name: str) -> str:
    return 'ff' if model_name.startswith('ff_') else 'dtg'


def _timed(fns: list, warmup: int, repeats: int) -> list:
    """Seconds of each timed call of each fn; the fns are interleaved so that drift hits all alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return times


def step_fn(model, objective: str, x, y, seed: int):
    """One LocalTask.step (summed mode, train mode) on (x, y) from fresh gradients."""
    obj = create_objective(objective)
    obj.check_model(model)
    task = LocalTask(model.local_units(), obj, model.num_classes, fusion=model.fusion, mode='summed')

    def step():
        model.train()
        model.zero_grad(set_to_none=True)
        torch.manual_seed(seed)  # same FF negatives every repeat
        task.step(x, y, backward=lambda loss: loss.backward())

    return step


def infer_fn(model, x):
    def infer():
        model.eval()
        with torch.no_grad():
            model(x)

    return infer


def _ms(ts: list) -> float:
    return round(1000 * statistics.median(ts), 2)


def bench_model(name: str, batch_size: int, warmup: int, repeats: int, seed: int) -> dict:
    torch.manual_seed(seed)
    model = timm.create_model(name)
    input_size = tuple(model.pretrained_cfg['input_size'])
    x = torch.randn(batch_size, *input_size)
    y = torch.randint(0, model.num_classes, (batch_size,))
    objective = natural_objective(name)
    fns = [step_fn(model, objective, x, y, seed)]
    if objective == 'dtg':  # the same architecture and init, trained end to end with every head's loss
        torch.manual_seed(seed)
        fns.append(step_fn(timm.create_model(name), 'bp_deepsup', x, y, seed))
    times = _timed(fns, warmup, repeats)
    step = times[0]
    row = {
        'model': name, 'objective': objective, 'params': sum(p.numel() for p in model.parameters()),
        'buffers': sum(b.numel() for b in model.buffers()), 'units': len(model.local_units()),
        'num_classes': model.num_classes, 'input_size': list(input_size), 'batch_size': batch_size,
        'step_ms': _ms(step), 'step_ms_all': [round(1000 * t, 2) for t in step],
        'train_img_per_s': round(batch_size / statistics.median(step), 1),
    }
    if len(times) > 1:
        bp = times[1]
        row.update(bp_deepsup_step_ms=_ms(bp), bp_deepsup_step_ms_all=[round(1000 * t, 2) for t in bp],
                   step_ratio_over_bp_deepsup=round(statistics.median(step) / statistics.median(bp), 3))
    row['infer_ms'] = _ms(_timed([infer_fn(model, x)], warmup, repeats)[0])
    return row


def markdown(rows: list) -> str:
    lines = ['| model | objective | params (M) | step ms (B=32) | bp_deepsup ms | ratio | eval ms |',
             '|---|---|---:|---:|---:|---:|---:|']
    for r in rows:
        bp = r.get('bp_deepsup_step_ms')
        bp_cols = ('', '') if bp is None else (f'{bp:.1f}', f"{r['step_ratio_over_bp_deepsup']:.2f}")
        lines.append(f"| {r['model']} | {r['objective']} | {r['params'] / 1e6:.2f} | {r['step_ms']:.1f} | "
                     f"{bp_cols[0]} | {bp_cols[1]} | {r['infer_ms']:.1f} |")
    return '\n'.join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--models', nargs='+', default=None, help='default: every registered ff_* / dtgff_* model')
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--output', default=str(REPO / 'benchmarks/results/models_cpu.json'))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    names = args.models or timm.list_models(['ff_*', 'dtgff_*'])  # not '*ff*': it matches efficientnets
    load_before, pressure_before = os.getloadavg(), cpu_pressure()
    t0 = time.time()
    rows = []
    for name in names:
        rows.append(bench_model(name, args.batch_size, args.warmup, args.repeats, args.seed))
        print(f"{name:16s} {rows[-1]['step_ms']:9.1f} ms/step", flush=True)
    result = dict(provenance(args.seed), timm_ff=timm_ff.__version__, batch_size=args.batch_size,
                  warmup=args.warmup, repeats=args.repeats, threads=args.threads,
                  loadavg_before=[round(v, 2) for v in load_before],
                  loadavg_after=[round(v, 2) for v in os.getloadavg()],
                  cpu_pressure_before=pressure_before, cpu_pressure_after=cpu_pressure(),
                  wall_time_s=round(time.time() - t0, 1),
                  timing='median wall time of one LocalTask.step (forward + backward, no optimiser step), '
                         'summed mode, train mode; eval = model(x) under no_grad',
                  rows=rows)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(portable(json.dumps(result, indent=2)) + '\n')
    print()
    print(markdown(rows))
    print(f'\nload average before {result["loadavg_before"]}, after {result["loadavg_after"]}; -> {out}')


if __name__ == '__main__':
    main()
