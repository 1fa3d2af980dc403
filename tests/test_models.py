"""The timm model contract for every registered timm_ff backbone (after timm's own tests/test_models.py).

Driven by the registry: every model timm lists under ``ff_*`` / ``dtgff_*`` and every pretrained tag
gets every check, on batch 1-2 at the model's default input size.
"""
import json
import subprocess
import sys

import pytest
import timm
import torch

import timm_ff
from timm_ff import ConfigError, create_objective
from timm_ff.models._ffnet import _CHOICES
from timm_ff.task import LocalTask

# Never '*ff*': that pattern also matches timm's own efficientnets.
MODELS = timm.list_models(['ff_*', 'dtgff_*'])
PRETRAINED = timm.list_pretrained(['ff_*', 'dtgff_*'])
NON_SPATIAL = {'ff_mlp', 'dtgff_mlp'}
DTGFF = [m for m in MODELS if m.startswith('dtgff_')]
CLASSIC_FF = [m for m in MODELS if m.startswith('ff_')]

# Expected data settings of each pretrained tag.
TAG_SPEC = {
    'cifar10': dict(num_classes=10, input_size=(3, 32, 32), mean=(0.4914, 0.4822, 0.4465)),
    'cifar100': dict(num_classes=100, input_size=(3, 32, 32), mean=(0.5071, 0.4865, 0.4409)),
    'imagenet100': dict(num_classes=100, input_size=(3, 224, 224), mean=(0.485, 0.456, 0.406)),
    'mnist': dict(num_classes=10, input_size=(1, 28, 28), mean=(0.1307,)),
}


def _input(model, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *model.pretrained_cfg['input_size'])


def _perturb(model: torch.nn.Module):
    """Move every parameter and float buffer off its init, so a save/load that drops any of them shows."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
        for name, b in model.named_buffers():
            if not b.is_floating_point():
                continue
            if name.endswith('t_history'):
                b.fill_(2.5)  # the dynamic temperature's history must round-trip, not reset to t_init
            elif name.endswith('running_var'):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))
            else:
                b.add_(0.1 * torch.randn(b.shape, generator=gen))


def test_registry():
    assert {'dtgff_resnet18', 'ff_resnet18', 'dtgff_cnn_s', 'ff_cnn_s', 'dtgff_mlp', 'ff_mlp'} <= set(MODELS)
    assert NON_SPATIAL <= set(MODELS)
    for name in MODELS:
        assert timm.is_model(name) and 'timm_ff' in timm.models.model_entrypoint(name).__module__
        assert any(p.split('.')[0] == name for p in PRETRAINED), f'{name} has no pretrained tag'
    assert set(DTGFF) | set(CLASSIC_FF) == set(MODELS)


@pytest.mark.timeout(120)
@pytest.mark.parametrize('batch', [1, 2])
@pytest.mark.parametrize('model_name', MODELS)
def test_model_forward(model_name, batch):
    model = timm.create_model(model_name).eval()
    with torch.no_grad():
        out = model(_input(model, batch))
    assert out.shape == (batch, model.num_classes)
    assert not torch.isnan(out).any() and torch.isfinite(out).all()


@pytest.mark.timeout(180)
@pytest.mark.parametrize('model_name', MODELS)
def test_model_backward(model_name):
    model = timm.create_model(model_name, num_classes=42).train()
    out = model(_input(model, 2))
    assert out.shape[-1] == 42
    out.float().pow(2).mean().backward()
    params = dict(model.named_parameters())
    assert params
    no_grad = [n for n, p in params.items() if p.grad is None]
    assert not no_grad, f'parameters without gradient: {no_grad}'
    assert all(torch.isfinite(p.grad).all() for p in params.values())


@pytest.mark.timeout(120)
@pytest.mark.parametrize('model_name', MODELS)
def test_model_default_cfgs(model_name):
    model = timm.create_model(model_name).eval()
    cfg = model.pretrained_cfg
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    assert model.num_classes == cfg['num_classes']
    # timm's checkpoint helpers (classifier reset, in_chans adaptation) find these by name
    state_dict = model.state_dict()
    classifiers = cfg['classifier'] if isinstance(cfg['classifier'], (tuple, list)) else (cfg['classifier'],)
    for c in classifiers:
        assert c + '.weight' in state_dict, f'classifier {c} not in the state dict'
    assert cfg['first_conv'] + '.weight' in state_dict
    c, h, w = cfg['input_size']
    first = model.get_submodule(cfg['first_conv']).weight
    assert first.shape[1] == (c if model_name not in NON_SPATIAL else c * h * w)

    x = _input(model, 2)
    spatial = model_name not in NON_SPATIAL
    with torch.no_grad():
        feats = model.forward_features(x)
        if spatial:
            assert feats.ndim == 4
            assert feats.shape[-2:] == tuple(cfg['pool_size'])
            assert feats.shape[1] == model.num_features
        else:
            assert cfg['pool_size'] is None
            assert feats.shape == (2, model.num_features)
        pre_logits = model.forward_head(feats, pre_logits=True)
        assert pre_logits.shape == (2, model.head_hidden_size)

        model.reset_classifier(0)
        assert model.num_classes == 0
        out = model(x)
        assert out.shape == (2, model.num_features) == pre_logits.shape
        torch.testing.assert_close(out, pre_logits)
        if spatial:
            model.reset_classifier(0, '')
            out = model(x)
            assert out.ndim == 4 and out.shape[-2:] == tuple(cfg['pool_size'])
            assert out.shape[1] == model.num_features


@pytest.mark.timeout(60)
@pytest.mark.parametrize('model_name', MODELS)
def test_model_no_classifier_no_pool(model_name):
    model = timm.create_model(model_name, num_classes=0, global_pool='').eval()
    x = _input(model, 2)
    with torch.no_grad():
        out = model(x)
    if model_name in NON_SPATIAL:
        assert out.shape == (2, model.num_features)
    else:
        assert out.ndim == 4 and out.shape[:2] == (2, model.num_features)
        assert out.shape[-2:] == tuple(model.pretrained_cfg['pool_size'])
    with pytest.raises(ConfigError, match='num_classes=0'):
        model.forward_unit_logits(x)


@pytest.mark.timeout(60)
@pytest.mark.parametrize('model_name', MODELS)
def test_model_reset_classifier(model_name):
    model = timm.create_model(model_name)
    model.reset_classifier(5)
    assert model.num_classes == 5 and model.model_args['num_classes'] == 5
    model.eval()
    x = _input(model, 2)
    with torch.no_grad():
        assert model(x).shape == (2, 5)


@pytest.mark.timeout(60)
@pytest.mark.parametrize('model_name', MODELS)
def test_model_feature_info(model_name):
    model = timm.create_model(model_name)
    info = model.feature_info
    assert len(info) == len(model.local_units()) >= 4
    assert info[-1]['num_chs'] == model.num_features
    for i, fi in enumerate(info):
        assert fi['module'] == f'units.{i}'
        model.get_submodule(fi['module'])  # names a real module


@pytest.mark.timeout(120)
@pytest.mark.parametrize('model_name', MODELS)
def test_model_features_only(model_name):
    model = timm.create_model(model_name, features_only=True).eval()
    channels = model.feature_info.channels()
    reductions = model.feature_info.reduction()
    assert len(channels) >= 4
    x = torch.randn(2, *timm.create_model(model_name).pretrained_cfg['input_size'])
    with torch.no_grad():
        outs = model(x)
    assert len(outs) == len(channels)
    for o, c, r in zip(outs, channels, reductions):
        assert o.shape[:2] == (2, c)
        if model_name not in NON_SPATIAL:
            assert o.shape[-1] == x.shape[-1] // r


# every DTG-FF switch (FF_KWARGS) and each of its values, on the two small DTG-FF models
SWITCHES = [(k, v) for k, vals in _CHOICES.items() for v in vals] + [
    ('label_embed', True), ('label_plane_size', 16), ('decoupled', False), ('goodness_groups', 4), ('goodness_patches', 3),
    ('fuse_last', 2), ('t_min', 0.25), ('t_max', 8.0), ('t_init', 2.0), ('t_momentum', 0.0)] + [
    ('head', h) for h in timm_ff.layers.HEADS[1:]] + [('head_kwargs', {}), ('head_img_size', 64)]


def test_switches_cover_ff_kwargs():
    assert {k for k, _ in SWITCHES} == set(timm_ff.FF_KWARGS)


@pytest.mark.timeout(60)
@pytest.mark.parametrize('key,value', SWITCHES, ids=[f'{k}={v}' for k, v in SWITCHES])
@pytest.mark.parametrize('model_name', ['dtgff_cnn_s', 'dtgff_mlp'])
def test_ff_switch(model_name, key, value):
    """Each switch builds, trains one LocalTask step with finite loss, predicts, and is recorded."""
    if model_name in NON_SPATIAL and ((key == 'goodness' and value != 'channel') or
                                      (key == 'head' and value not in ('goodness', 'linear'))):
        with pytest.raises(ConfigError, match='non-spatial'):
            timm.create_model(model_name, **{key: value})
        return
    extra = {}
    if key == 'label_embed' and value:
        # classic FF scores labels only at eval, so nothing could train learned fusion weights
        with pytest.raises(ConfigError, match="fusion='learned'"):
            timm.create_model(model_name, **{key: value})
        extra = dict(fusion='mean')
    if key == 'head_proj' and value == 'class_groups':
        # class k's logit is the energy of the k-th of K channel groups: every width a multiple of K, one value per channel
        with pytest.raises(ConfigError, match='class_groups'):
            timm.create_model(model_name, **{key: value})
        widths = [20, 40, 60, 80]
        extra = dict(goodness='channel', **({'widths': widths} if model_name in NON_SPATIAL else {'channels': widths}))
    model = timm.create_model(model_name, **{key: value}, **extra).train()
    assert model.model_args[key] == value and model.ff_cfg[key] == value
    objective = create_objective('ff' if model.label_embed_enabled else 'dtg')
    x = _input(model, 4)
    y = torch.arange(4) % model.num_classes
    task = LocalTask(model.local_units(), objective, model.num_classes, fusion=model.fusion)
    result = task.step(x, y, backward=lambda loss: loss.backward())
    assert torch.isfinite(result.loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (4, model.num_classes) and torch.isfinite(out).all()


@pytest.mark.parametrize('model_name', DTGFF)
def test_forward_head_is_last_unit(model_name):
    """With fusion='last', model(x) equals forward_head(forward_features(x)) (timm's composition)."""
    model = timm.create_model(model_name, fusion='last').eval()
    x = _input(model, 2)
    with torch.no_grad():
        fused = model(x)
        composed = model.forward_head(model.forward_features(x))
    torch.testing.assert_close(fused, composed)


@pytest.mark.parametrize('model_name', CLASSIC_FF)
def test_classic_ff_forward_head_explains(model_name):
    model = timm.create_model(model_name).eval()
    x = _input(model, 1)
    with torch.no_grad():
        feats = model.forward_features(x)
        with pytest.raises(ConfigError, match='forward_unit_logits'):
            model.forward_head(feats)


@pytest.mark.timeout(120)
@pytest.mark.parametrize('tag_name', PRETRAINED)
def test_pretrained_tags(tag_name):
    arch, tag = tag_name.split('.')
    spec = TAG_SPEC[tag]
    model = timm.create_model(tag_name).eval()
    cfg = model.pretrained_cfg
    assert cfg['architecture'] == arch and cfg['tag'] == tag
    assert cfg['hf_hub_id'] == f'{timm_ff.HUB_ORG}/{arch}.{tag}'
    assert model.num_classes == cfg['num_classes'] == spec['num_classes']
    assert tuple(cfg['input_size']) == spec['input_size']
    assert tuple(cfg['mean']) == spec['mean']
    assert len(cfg['std']) == len(cfg['mean']) == spec['input_size'][0]
    assert model.model_args['in_chans'] == spec['input_size'][0]
    data_cfg = timm.data.resolve_data_config({}, model=model)  # what timm's loaders will use
    assert data_cfg['input_size'] == spec['input_size'] and data_cfg['mean'] == spec['mean']
    assert model.model_args['num_classes'] == spec['num_classes']
    if cfg.get('label_names') is not None:
        assert len(cfg['label_names']) == spec['num_classes']
    if model.label_embed_enabled:
        assert model.units[0].label_embed.num_embeddings == spec['num_classes']
    else:
        assert all(u.head.proj.out_features == spec['num_classes'] for u in model.local_units())
    if '_resnet' in arch:
        assert model.model_args['stem'] == ('imagenet' if tag == 'imagenet100' else 'cifar')
    # the tag's own input size works and gives its pool size (batch 1: cheap even at 224x224)
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, *cfg['input_size']))
    if cfg['pool_size'] is not None:
        assert feats.shape[-2:] == tuple(cfg['pool_size'])
    assert feats.shape[1] == model.num_features


@pytest.mark.timeout(180)
@pytest.mark.parametrize('model_name', MODELS)
def test_save_for_hf_round_trip(model_name, tmp_path):
    model = timm.create_model(model_name)
    _perturb(model)
    model.eval()
    args = json.loads(json.dumps(model.model_args))  # must be JSON-serialisable for config.json
    assert args == {k: list(v) if isinstance(v, tuple) else v for k, v in model.model_args.items()}
    timm.models.save_for_hf(model, tmp_path, model_args=model.model_args, safe_serialization=True)
    assert (tmp_path / 'model.safetensors').is_file()
    config = json.loads((tmp_path / 'config.json').read_text())
    assert config['architecture'] == model_name
    assert config['model_args'] == args

    # weights only here (the model's own defaults); recreating from model_args is the next test
    loaded = timm.create_model(model_name, pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(tmp_path / 'model.safetensors'))).eval()
    for name, b in loaded.named_buffers():
        if name.endswith('t_history'):
            assert b.item() == 2.5, f'{name} did not round-trip'
    x = _input(model, 2)
    with torch.no_grad():
        ref = model(x)
        out = loaded(x)
        fresh = timm.create_model(model_name).eval()(x)
    assert torch.equal(ref, out)
    assert not torch.allclose(ref, fresh), 'a fresh model matches too: the test could not fail'


@pytest.mark.timeout(120)
@pytest.mark.parametrize('model_name', MODELS)
def test_model_args_recreate_model(model_name, tmp_path):
    """config.json's model_args rebuild the same model (what timm does for 'hf-hub:' ids).

    timm merges config['model_args'] into the kwargs of the entry point, so every key there must
    be accepted by ``timm.create_model(name, **model_args)``.
    """
    model = timm.create_model(model_name, goodness_groups=4, fusion='mean')  # non-default kwargs too
    _perturb(model)
    model.eval()
    timm.models.save_for_hf(model, tmp_path, model_args=model.model_args, safe_serialization=True)
    config = json.loads((tmp_path / 'config.json').read_text())
    kwargs = {k: v for k, v in config['model_args'].items() if k != 'num_classes'}
    loaded = timm.create_model(model_name, pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(tmp_path / 'model.safetensors')),
                               **kwargs).eval()
    assert loaded.model_args == model.model_args
    x = _input(model, 2)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


# ------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize('model_name', MODELS)
def test_unknown_model_kwarg(model_name):
    with pytest.raises(ConfigError) as e:
        timm.create_model(model_name, goodnes='x')
    msg = str(e.value)
    assert "'goodnes'" in msg
    for allowed in ('goodness', 'temperature', 'fusion', 'num_classes'):
        assert allowed in msg


_BAD_CHOICES = [
    ('temperature', 'warm', ('dynamic', 'fixed')),
    ('fusion', 'bad', ('learned', 'mean', 'last')),
    ('goodness', 'x', ('channel', 'patch', 'channel_patch')),
    ('unit_norm', 'x', ('layernorm', 'length', 'none')),
    ('goodness_reduce', 'x', ('mean', 'sum')),
    ('head_proj', 'x', ('learned', 'fixed')),
    ('label_code', 'corner', ('bias', 'plane')),
]
_RESNET_CHOICES = [('stem', 'x', ('cifar', 'imagenet')), ('unit_size', 'x', ('block', 'stage')),
                   ('goodness_at', 'pre_add', ('output', 'branch'))]
_BAD_CHOICE_CASES = [(m, *c) for m in ('dtgff_resnet18', 'ff_resnet18', 'dtgff_cnn_s', 'dtgff_mlp')
                     for c in _BAD_CHOICES + (_RESNET_CHOICES if '_resnet' in m else [])]


@pytest.mark.parametrize('model_name,key,value,allowed', _BAD_CHOICE_CASES,
                         ids=[f'{m}-{k}' for m, k, _, _ in _BAD_CHOICE_CASES])
def test_bad_choice_value(model_name, key, value, allowed):
    with pytest.raises(ConfigError) as e:
        timm.create_model(model_name, **{key: value})
    msg = str(e.value)
    assert repr(value) in msg and key in msg
    for a in allowed:
        assert a in msg


@pytest.mark.parametrize('model_name', ['dtgff_cnn_s', 'dtgff_mlp'])
def test_resnet_only_kwargs_are_unknown_elsewhere(model_name):
    for key in ('stem', 'unit_size', 'goodness_at'):
        with pytest.raises(ConfigError, match=f"unknown model kwarg '{key}'"):
            timm.create_model(model_name, **{key: 'cifar'})


@pytest.mark.parametrize('model_name', MODELS)
def test_bad_input_shape(model_name):
    """Wrong channels / too small / wrong vector length: a ValueError naming the caller's shape
    (for classic FF models too, whose forward repeats the batch once per label)."""
    model = timm.create_model(model_name).eval()
    c, h, w = model.pretrained_cfg['input_size']
    bad = [(torch.randn(2, c + 1, h, w), '(2, %d, %d, %d)' % (c + 1, h, w))]
    if model_name in NON_SPATIAL:
        bad.append((torch.randn(2, c * h * w - 1), '(2, %d)' % (c * h * w - 1)))  # wrong vector length
    else:
        bad.append((torch.randn(2, c, 4, 4), '(4, 4)'))  # smaller than the total stride
    with torch.no_grad():
        for x, shape in bad:
            for fn in (model.forward_features, model):
                with pytest.raises(ValueError) as e:
                    fn(x)
                # the message names the shape the caller passed (not an internal, label-repeated batch)
                assert shape in str(e.value), f'{getattr(fn, "__name__", "model(x)")}: {e.value}'


def test_unknown_model_name():
    with pytest.raises(RuntimeError, match='Unknown model'):
        timm.create_model('dtgff_resnet99')


@pytest.mark.timeout(120)
def test_import_timm_ff_registers_models():
    code = ("import timm\n"
            "try:\n"
            "    timm.create_model('ff_resnet18')\n"
            "except RuntimeError as e:\n"
            "    assert 'Unknown model' in str(e), e\n"
            "    print('UNKNOWN')\n"
            "import timm_ff\n"
            "timm.create_model('ff_resnet18')\n"
            "print('REGISTERED')\n")
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=110)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ['UNKNOWN', 'REGISTERED']


@pytest.mark.parametrize('model_name', ['ff_cnn_s', 'ff_resnet18', 'ff_mlp'])
def test_label_code_enters_before_the_stem_nonlinearity(model_name):
    """Classic FF: the label code is a per-class bias on the stem conv's pre-activation (one-hot label
    planes through the first conv), so unit 0 mixes label and image nonlinearly; an MLP adds it to the input."""
    torch.manual_seed(0)
    model = timm.create_model(model_name).eval()
    unit = model.units[0]
    x = _input(model, 3)
    y = torch.tensor([0, 3, 7])
    code = unit.label_embed.weight[y]
    with torch.no_grad():
        got = unit(x, labels=y)
        if model_name == 'ff_mlp':
            want = unit.body(x.flatten(1) + code)
        else:
            pre = unit.stem.bn(unit.stem.conv(x)) + code[:, :, None, None]
            want = unit.body(unit.stem[2:](pre))  # act (+ pool for the ImageNet stem), then the body
        assert torch.allclose(got, want, atol=1e-5)
        other = unit(x, labels=(y + 1) % model.num_classes)
    assert not torch.allclose(got, other)  # the label changes the unit's output
