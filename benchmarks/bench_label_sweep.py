"""Classic FF's evaluation on a CPU: the label sweep in one pass against passes of ``label_sweep_pairs`` pairs.

    python benchmarks/bench_label_sweep.py

Classic FF (``ff_*`` models) scores an image by running it once per label: an eval batch of B images is B*K
(image, label) pairs. On a CPU each unit scores them in passes of at most ``model.label_sweep_pairs`` pairs (whole
images), where one pass of all B*K pairs keeps activations too large for the caches. This times the eval-mode
``forward_unit_logits`` of each model on the same random images both ways (one pass: ``label_sweep_pairs`` set
above B*K), alternating the two in rounds, at one thread, in fp32 and autocast bf16, and checks that both give the
same logits. Writes ``benchmarks/results/label_sweep_cpu.json``: the median images/s of each way and their ratio.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import provenance, write_result  # noqa: E402

import timm_ff  # noqa: E402,F401


def time_eval(model, x: torch.Tensor, batch_size: int, bf16: bool) -> tuple:
    """(images/s, per-unit logits) of the eval-mode label sweep over ``x`` in batches of ``batch_size``."""
    out = []
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, x.shape[0], batch_size):
            out.append(torch.stack(model.forward_unit_logits(x[i:i + batch_size])).float())
    return x.shape[0] / (time.perf_counter() - start), torch.cat(out, dim=1)


def measure(model_name: str, images: int, batch_size: int, rounds: int, bf16: bool, pairs: int) -> dict:
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=10).eval()
    x = torch.randn(images, *model.pretrained_cfg['input_size'])
    ways = {'one pass': batch_size * model.num_classes, f'passes of {pairs} pairs': pairs}
    speeds = {way: [] for way in ways}
    logits = {}
    model.label_sweep_pairs = pairs
    time_eval(model, x[:batch_size], batch_size, bf16)  # warm-up (oneDNN primitives, allocator)
    for _ in range(rounds):
        for way, n in ways.items():
            model.label_sweep_pairs = n
            speed, logits[way] = time_eval(model, x, batch_size, bf16)
            speeds[way].append(speed)
    one, chunked = (statistics.median(s) for s in speeds.values())
    diff = (logits['one pass'] - logits[f'passes of {pairs} pairs']).abs().max().item()
    return dict(model=model_name, precision='bf16' if bf16 else 'fp32', images=images, batch_size=batch_size,
                pairs_per_pass=pairs, one_pass_images_per_s=one, passes_images_per_s=chunked,
                passes_over_one_pass=chunked / one, max_abs_logit_difference=diff,
                images_per_s_rounds={way: s for way, s in speeds.items()})


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--models', nargs='+', default=['ff_cnn_s', 'ff_resnet18'])
    p.add_argument('--images', type=int, default=256, help='images scored per timing')
    p.add_argument('--batch-size', type=int, default=64, help="eval batch (the trainer's default: the recipe's batch)")
    p.add_argument('--pairs', type=int, default=64, help='label_sweep_pairs of the chunked way (the default)')
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--name', default='label_sweep_cpu')
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for model_name in args.models:
        for bf16 in (False, True):
            r = measure(model_name, args.images, args.batch_size, args.rounds, bf16, args.pairs)
            rows.append(r)
            print(f"{r['model']:12s} {r['precision']}  one pass {r['one_pass_images_per_s']:7.1f} img/s  "
                  f"passes of {args.pairs} pairs {r['passes_images_per_s']:7.1f} img/s  "
                  f"ratio {r['passes_over_one_pass']:.2f}  max |logit diff| {r['max_abs_logit_difference']:.2e}",
                  flush=True)
    path = write_result(args.name, dict(provenance(0), threads=args.threads, rounds=args.rounds, rows=rows))
    print(f'-> {path}')


if __name__ == '__main__':
    main()
