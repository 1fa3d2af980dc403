"""The head registry and InfoPro's reconstruction term: every head under every head-based objective, locality,
the published head shapes, save/load, timm's contract, user heads and bad input."""
import json

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import timm_ff
from timm_ff import ConfigError, create_objective
from timm_ff.hub import save_model_folder
from timm_ff.layers import list_heads, register_head
from timm_ff.layers.heads import pred_pool_size
from timm_ff.task import LocalTask

from _cli import assert_ok, run_train, weights
from _locality import touched_per_backward


@register_head('test_mean_mlp', spatial_only=False)
def _mean_mlp(in_chs, feat_side, hidden: int = 16):
    """A user head: channel means (spatial units) or the vector, then one hidden layer."""
    mods = [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)] if feat_side else []
    trunk = nn.Sequential(*mods, nn.Linear(in_chs, hidden), nn.ReLU())
    trunk.out_features = hidden
    return trunk


HEADS = list_heads()
TINY = dict(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64))  # a 4-unit ResNet; every head shape still applies


def tiny(head, **kwargs):
    return timm.create_model('dtgff_resnet18', head=head, **TINY, **kwargs)


def batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 10


def test_registry_lists_builtins_then_user_heads():
    assert HEADS[:5] == ('goodness', 'linear', 'pred', 'dgl', 'infopro') and 'test_mean_mlp' in HEADS


@pytest.mark.parametrize('objective', ['dtg', 'bp', 'bp_deepsup'])
@pytest.mark.parametrize('head', HEADS)
def test_every_head_trains_under_every_head_objective(head, objective):
    torch.manual_seed(0)
    model = tiny(head).train()
    obj = create_objective(objective)
    obj.check_model(model)
    x, y = batch()
    task = LocalTask(model.local_units(), obj, 10, fusion=model.fusion)
    result = task.step(x, y, backward=lambda loss: loss.backward())
    assert torch.isfinite(result.loss)
    got = [u.head.proj.weight.grad is not None and u.head.proj.weight.grad.abs().sum() > 0 for u in model.units]
    assert got == ([False] * 3 + [True] if objective == 'bp' else [True] * 4)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (8, 10) and torch.isfinite(out).all()


def _grads(head, mode, recon=None):
    torch.manual_seed(0)
    model = tiny(head, temperature='fixed').train()
    obj = create_objective('dtg', **({'recon': recon} if recon else {}))
    obj.check_model(model)
    obj.prepare_model(model)
    x, y = batch()
    task = LocalTask(model.local_units(), obj, 10, fusion=model.fusion, mode=mode)
    task.step(x, y, backward=lambda loss: loss.backward())
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize('recon', [None, [2.0, 0.5]])
@pytest.mark.parametrize('head', HEADS)
def test_per_unit_and_summed_give_the_same_gradients(head, recon):
    a, b = _grads(head, 'summed', recon), _grads(head, 'per_unit', recon)
    assert a.keys() == b.keys() and any('decoder' in k for k in a) == bool(recon)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('recon', [None, [3.0, 1.0]])
@pytest.mark.parametrize('head', HEADS)
def test_no_gradient_crosses_a_unit(head, recon):
    """per_unit: the backward of unit u's loss (its head and, with recon, its decoder) touches unit u only."""
    torch.manual_seed(0)
    model = tiny(head).train()
    obj = create_objective('dtg', **({'recon': recon} if recon else {}))
    obj.prepare_model(model)
    x, y = batch()
    touched = touched_per_backward(model, obj, x, y, 10)
    assert touched == [{0}, {1}, {2}, {3}, {'fusion'}]  # then the fusion weights alone


def test_decoder_reads_its_own_unit_output_only():
    model = tiny('pred').train()
    obj = create_objective('dtg', recon=[1.0, 1.0])
    obj.prepare_model(model)
    outputs, decoded = {}, {}
    for u, unit in enumerate(model.units):
        unit.register_forward_hook(lambda m, a, k, out, u=u: outputs.__setitem__(u, out[0]), with_kwargs=True)
        unit.decoder.register_forward_hook(lambda m, args, out, u=u: decoded.__setitem__(u, args[0]))
    x, y = batch()
    LocalTask(model.local_units(), obj, 10, fusion=model.fusion).step(x, y, backward=lambda loss: loss.backward())
    assert sorted(decoded) == [0, 1, 2, 3]
    assert all(decoded[u] is outputs[u] for u in range(4))


def test_recon_loss_is_the_infopro_formula():
    """unit u: CE(logits, y) + w_u * BCE(sigmoid(decoder(h_u)), image in [0, 1]), w_u linear from a to b."""
    torch.manual_seed(0)
    model = tiny('infopro', temperature='fixed').train()
    obj = create_objective('dtg', recon=[4.0, 1.0])
    obj.prepare_model(model)
    x, y = batch()
    result = LocalTask(model.local_units(), obj, 10, mode='per_unit').step(x, y, backward=lambda loss: None)
    mean = torch.tensor(model.pretrained_cfg['mean']).reshape(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg['std']).reshape(1, 3, 1, 1)
    image = (x * std + mean).clamp(0, 1)
    state, expected = x, []
    with torch.no_grad():
        for u, unit in enumerate(model.units):
            state, logits, r = unit(state, with_logits=True, reconstruct=(32, 32))
            w = 4.0 - u  # 4, 3, 2, 1
            expected.append(F.cross_entropy(logits, y) + w * F.binary_cross_entropy(torch.sigmoid(r), image))
    torch.testing.assert_close(torch.stack(result.unit_losses), torch.stack(expected), rtol=1e-4, atol=1e-5)


def test_published_head_shapes():
    # Nøkland & Eidnes: halve height then width in turn until C*h*w <= dim_in_decoder
    assert pred_pool_size(64, 32, 4096) == (8, 8)
    assert pred_pool_size(512, 4, 4096) == (2, 4)
    assert pred_pool_size(128, 16, 4096) == (4, 8)
    assert pred_pool_size(512, 4, 256) == (1, 1)
    model = timm.create_model('dtgff_resnet18', head='pred')
    assert model.units[0].head.proj.in_features == 4096 and not model.units[0].head.proj.weight.any()
    # DGL MLP-SR: 3 x (1x1 conv at the unit's width), pool to 2x2, 3 x linear of width 4C, then the map
    dgl = timm.create_model('dtgff_resnet18', head='dgl').units[7].head
    convs = [m for m in dgl.trunk if isinstance(m, nn.Conv2d)]
    linears = [m for m in dgl.trunk if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(512, 512, (1, 1))] * 3
    assert [(fc.in_features, fc.out_features) for fc in linears] == [(2048, 2048)] * 3
    assert dgl.proj.in_features == 2048
    assert timm.create_model('dtgff_resnet18', head='dgl', head_kwargs={'mlp_width': 64}).units[0].head.proj.in_features == 64
    # InfoPro 1c2f: stride-2 conv to 2C on maps larger than 8x8, else stride 1 at C; GAP; hidden 128
    info = timm.create_model('dtgff_resnet18', head='infopro')
    c0 = info.units[0].head.trunk[0]
    c7 = info.units[7].head.trunk[0]
    assert (c0.in_channels, c0.out_channels, c0.stride) == (64, 128, (2, 2))
    assert (c7.in_channels, c7.out_channels, c7.stride) == (512, 512, (1, 1))
    assert info.units[0].head.proj.in_features == 128


@pytest.mark.parametrize('head', HEADS)
def test_save_load_round_trip(head, tmp_path):
    torch.manual_seed(0)
    model = tiny(head)
    obj = create_objective('dtg', recon=[1.0, 0.0])
    obj.prepare_model(model)
    x, y = batch()
    LocalTask(model.local_units(), obj, 10, fusion=model.fusion).step(x, y, backward=lambda loss: loss.backward())
    save_model_folder(model, tmp_path)
    assert not any('decoder' in k for k in weights(tmp_path)) and all(u.decoder is not None for u in model.units)
    cfg = json.loads((tmp_path / 'config.json').read_text())
    assert cfg['model_args']['head'] == head
    loaded = timm.create_model(f'local-dir:{tmp_path}', pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))


@pytest.mark.parametrize('head', HEADS)
def test_timm_contract_with_every_head(head):
    model = tiny(head, fusion='last').eval()
    x, _ = batch(2)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), model(x))
        traced = torch.fx.symbolic_trace(model)
        torch.testing.assert_close(traced(x), model(x))
    assert model.get_classifier() is model.units[-1].head.proj
    model.reset_classifier(5)
    assert model(x).shape == (2, 5)
    feats = timm.create_model('dtgff_resnet18', head=head, features_only=True, **TINY)
    assert [f.shape[1] for f in feats(x)] == [8, 16, 32, 64]


def test_head_kwargs_and_input_size_reach_the_heads():
    big = timm.create_model('dtgff_resnet18', head='pred', pretrained_cfg_overlay=dict(input_size=(3, 64, 64)))
    assert big.model_args['head_img_size'] == 64 and big.units[0].head.proj.in_features == 4096
    assert timm.create_model('dtgff_resnet18', head='pred', head_kwargs={'dim_in_decoder': 1024}).units[0].head.proj.in_features == 1024
    mixed = timm.create_model('dtgff_resnet18', head=['goodness'] * 6 + ['dgl'] * 2, head_kwargs={'mlp_width': 32})
    assert [type(u.head).__name__ for u in mixed.units] == ['GoodnessHead'] * 6 + ['ClassHead'] * 2
    assert mixed.units[0].head.norm is not None and mixed.units[7].head.proj.in_features == 32  # head_norm: goodness heads
    assert timm.create_model('dtgff_resnet18').model_args.get('head_img_size') is None  # goodness: no change
    mlp = timm.create_model('dtgff_mlp', head='test_mean_mlp', head_kwargs={'hidden': 8})
    assert mlp.units[0].head.proj.in_features == 8


@pytest.mark.parametrize('kwargs,match', [
    (dict(head='nope'), "unknown head 'nope'; allowed: dgl, goodness, infopro, linear, pred"),
    (dict(head='dgl', head_kwargs={'width': 3}), "kwarg for head 'dgl' 'width'.*mlp_width"),
    (dict(head='dgl', head_kwargs={'mlp_width': -1}), 'mlp_width=-1'),
    (dict(head='goodness', head_kwargs={'mlp_width': 8}), "kwarg for head 'goodness'"),
    (dict(head='pred', head_kwargs=[1]), 'head_kwargs must be a dict'),
    (dict(head='pred', head_img_size=0), 'head_img_size must be a positive integer'),
    (dict(head=['pred'] * 3), 'head must be one head name or a list of 8'),
    (dict(head=['pred'] * 7 + ['nope']), "unknown head 'nope'"),
])
def test_bad_head_input_is_one_clear_line(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        timm.create_model('dtgff_resnet18', **kwargs)


def test_heads_that_cannot_serve_the_model():
    with pytest.raises(ConfigError, match="classic FF models.*use head='goodness'"):
        timm.create_model('ff_resnet18', head='dgl')
    with pytest.raises(ConfigError, match="head for a non-spatial.*'dgl'"):
        timm.create_model('dtgff_mlp', head='dgl')


@pytest.mark.parametrize('recon', [[1.0], 'ab', [-1, 0], [1, float('nan')], [True, 1]])
def test_bad_recon_weights(recon):
    with pytest.raises(ConfigError, match='recon must be a pair of non-negative numbers'):
        create_objective('dtg', recon=recon)


def test_recon_needs_a_head_objective_and_an_image_model():
    with pytest.raises(ConfigError, match="recon.*'ff' is not one"):
        create_objective('ff', recon=[1, 0])
    with pytest.raises(ConfigError, match="kwarg for objective 'dtg' 'recn'.*recon"):
        create_objective('dtg', recn=[1, 0])
    with pytest.raises(ConfigError, match='needs an image model'):
        create_objective('dtg', recon=[1, 0]).check_model(timm.create_model('dtgff_mlp'))


@pytest.mark.timeout(300)
def test_cli_trains_a_head_with_recon_and_saves_a_plain_timm_model(tmp_path):
    out = tmp_path / 'run'
    proc = run_train('--model', 'dtgff_cnn_s', '--model-kwargs', '{"head": "infopro"}', '--objective-kwargs',
                     '{"recon": [5, 0]}', '--epochs', '1', '--max-train-steps', '2', '--output', out)
    assert_ok(proc)
    assert not any('decoder' in k for k in weights(out))
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['model_args']['head'] == 'infopro' and cfg['timm_ff']['recipe']['objective_kwargs'] == {'recon': [5, 0]}
    model = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert isinstance(model, timm_ff.FFCNN) and all(u.decoder is None for u in model.units)
