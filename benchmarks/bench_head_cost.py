"""Parameters and FLOPs of every registered head on the DTG-FF backbones (no timing: machine-independent).

    python benchmarks/bench_head_cost.py

For each model and head (``head=`` model kwarg, :mod:`timm_ff.layers.heads`): the heads' parameters (all
units) next to the backbone's (everything but the heads and the fusion), and the forward FLOPs per image of
the heads and of the backbone at the model's default input size, counted by ``torch.utils.flop_counter`` (a
multiply-add is 2 FLOPs; pooling, norms and activations are not counted). With ``--recon`` the parameters and
FLOPs of InfoPro's training-only decoders (``recon=`` objective kwarg) are listed too. Writes
``benchmarks/results/head_cost.json``.
"""
import argparse
import sys
from pathlib import Path

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import provenance, write_result  # noqa: E402

import timm_ff  # noqa: E402,F401
from timm_ff import create_objective  # noqa: E402
from timm_ff.layers import list_heads  # noqa: E402


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def cost(model_name: str, head: str) -> dict:
    """Per-image forward FLOPs and parameters of the heads, the backbone and the recon decoders."""
    model = timm.create_model(model_name, head=head).eval()
    create_objective('dtg', recon=[1.0, 0.0]).prepare_model(model)
    x = torch.randn(1, *model.pretrained_cfg['input_size'])
    head_flops = body_flops = dec_flops = 0
    with torch.no_grad():
        for unit in model.units:
            decoder, unit.decoder = unit.decoder, None
            body_flops += _flops(lambda: unit(x))
            h = unit(x)
            tap = h  # the heads read the unit output (goodness_at='output', the default)
            head_flops += _flops(lambda: unit.head(tap))
            dec_flops += _flops(lambda: decoder(h, x.shape[-2:] if x.ndim == 4 else None))
            unit.decoder = decoder
            x = h
    params = {k: 0 for k in ('head', 'decoder', 'backbone')}
    for name, p in model.named_parameters():
        kind = 'head' if '.head.' in name else 'decoder' if '.decoder.' in name else \
            None if name.startswith('fusion') else 'backbone'
        if kind:
            params[kind] += p.numel()
    return dict(model=model_name, head=head, head_params=params['head'], backbone_params=params['backbone'],
                head_flops=head_flops, backbone_flops=body_flops, head_flops_over_backbone=head_flops / body_flops,
                recon_decoder_params=params['decoder'], recon_decoder_flops=dec_flops)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--models', nargs='+', default=['dtgff_cnn_s', 'dtgff_resnet18', 'dtgff_resnet34'])
    p.add_argument('--heads', nargs='+', default=list(list_heads()))
    p.add_argument('--name', default='head_cost')
    args = p.parse_args()
    rows = [cost(m, h) for m in args.models for h in args.heads]
    for r in rows:
        print(f"{r['model']:16s} {r['head']:9s} head params {r['head_params'] / 1e6:6.2f}M  "
              f"head MFLOPs/img {r['head_flops'] / 1e6:8.2f}  ({100 * r['head_flops_over_backbone']:.1f}% of the backbone's "
              f"{r['backbone_flops'] / 1e6:.0f})")
    path = write_result(args.name, dict(provenance(0), rows=rows))
    print(f'-> {path}')


if __name__ == '__main__':
    main()
