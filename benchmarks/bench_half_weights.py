"""Does storing a finished run's weights in half precision change its test accuracy? (release size vs accuracy)

    python benchmarks/bench_half_weights.py benchmarks/runs/cifar10_resnet18_full_cpu-dtg \
        --data-dir ../shared/data/cifar10-jpeg --write /tmp/half/model.safetensors

Loads the run's ``model.safetensors`` (fp32), rounds every floating tensor to ``--dtype`` (float16 by default) and
back, and scores both on the run's eval split, in fp32 and under autocast bf16 (how a bf16 run evaluates itself).
Writes ``benchmarks/results/<name>.json`` with the four accuracies, the differences in pp, the file sizes and the
run's own recorded accuracy; ``--write`` also saves the rounded weights (safetensors, same keys) for a release.
"""
import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import REPO, provenance, write_result  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('run', help='a finished train_ff.py run folder')
    p.add_argument('--data-dir', default=str(REPO.parent / 'shared/data/cifar10-jpeg'))
    p.add_argument('--dtype', default='float16', choices=['float16', 'bfloat16'])
    p.add_argument('--write', default='', help='also save the rounded weights to this .safetensors path')
    p.add_argument('--name', default='')
    args = p.parse_args()
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    import timm
    import torch
    from safetensors.torch import load_file, save_file

    import timm_ff  # noqa: F401
    from timm_ff.data import create_loaders, load_image_datasets
    run = Path(args.run)
    metrics = json.loads((run / 'metrics.json').read_text())
    full = load_file(str(run / 'model.safetensors'))
    dtype = getattr(torch, args.dtype)
    half = {k: v.to(dtype) if v.is_floating_point() else v for k, v in full.items()}
    model = timm.create_model(f'local-dir:{run}', pretrained=False)
    data = load_image_datasets(data_dir=args.data_dir, check_images=0)
    _, loader = create_loaders(data, data_config=timm.data.resolve_data_config(model=model), batch_size=250,
                               pipeline='tensor')

    @torch.no_grad()
    def accuracy(weights, autocast: bool) -> float:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()})
        model.eval()
        hits = total = 0
        for x, y in loader:
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
                pred = model(x).argmax(1)
            keep = y >= 0
            hits += int(((pred == y) & keep).sum())
            total += int(keep.sum())
        return 100.0 * hits / total

    acc = {f'{w}_weights_{mode}_eval': accuracy(weights, mode == 'bf16')
           for w, weights in (('fp32', full), (args.dtype, half)) for mode in ('fp32', 'bf16')}
    size = {'fp32_bytes': (run / 'model.safetensors').stat().st_size}
    if args.write:
        Path(args.write).parent.mkdir(parents=True, exist_ok=True)
        save_file(half, args.write, metadata={'format': 'pt'})
        size[f'{args.dtype}_bytes'] = Path(args.write).stat().st_size
    result = dict(provenance(0), run=run.name, run_commit=metrics.get('git_commit'), eval_images=len(data.eval),
                  run_recorded_accuracy=metrics['accuracy'], dtype=args.dtype, **acc, **size,
                  half_minus_fp32_pp={mode: acc[f'{args.dtype}_weights_{mode}_eval'] - acc[f'fp32_weights_{mode}_eval']
                                      for mode in ('fp32', 'bf16')})
    print(json.dumps({k: v for k, v in result.items() if k != 'machine'}, indent=2))
    print(f"-> {write_result(args.name or f'half_weights_{run.name}_cpu', result)}")


if __name__ == '__main__':
    main()
