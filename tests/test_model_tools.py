"""timm's tools on every registered model: forward_intermediates, pruning, feature wrappers, FX, compile, export.

Driven by the registry like tests/test_models.py: every ``ff_*`` / ``dtgff_*`` model, batch 2, 16x16 images.
"""
import copy

import pytest
import timm
import torch

import timm_ff  # noqa: F401  (registers the models)
from timm_ff import ConfigError
from timm_ff.layers import DynamicTemperature

MODELS = timm.list_models(['ff_*', 'dtgff_*'])
NON_SPATIAL = {'ff_mlp', 'dtgff_mlp'}


def _input(model, batch: int = 2) -> torch.Tensor:
    """A small input: 16x16 images (every spatial model has total stride 8), the MLPs' own 28x28."""
    c, h, w = model.pretrained_cfg['input_size']
    if model.spatial:
        h, w = min(h, 16), min(w, 16)
    return torch.randn(batch, c, h, w)


def _label_free_units(model, x):
    """Each unit's raw activation, calling the units directly (no label code for classic FF)."""
    out = []
    for unit in model.local_units():
        x = unit(x)
        out.append(x)
    return out


def _check_shapes(model_name, feats, info, x):
    assert len(feats) == len(info)
    for f, fi in zip(feats, info):
        assert f.shape[:2] == (x.shape[0], fi['num_chs'])
        if model_name in NON_SPATIAL:
            assert f.ndim == 2
        else:
            assert f.ndim == 4 and f.shape[-1] == x.shape[-1] // fi['reduction']


@pytest.mark.timeout(120)
@pytest.mark.parametrize('model_name', MODELS)
def test_forward_intermediates(model_name):
    model = timm.create_model(model_name).eval()
    n = len(model.local_units())
    x = _input(model)
    with torch.no_grad():
        units = _label_free_units(model, x)
        final, inter = model.forward_intermediates(x)
        _check_shapes(model_name, inter, model.feature_info, x)
        for a, b in zip(inter, units):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)

        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert isinstance(last2, list) and len(last2) == 2
        torch.testing.assert_close(last2[0], units[n - 2], rtol=0, atol=0)
        picked = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
        torch.testing.assert_close(picked[0], units[0], rtol=0, atol=0)
        torch.testing.assert_close(picked[1], units[-1], rtol=0, atol=0)

        early, early_inter = model.forward_intermediates(x, indices=[1], stop_early=True)
        assert len(early_inter) == 1
        torch.testing.assert_close(early, units[1], rtol=0, atol=0)  # stopped at unit 1, not the last unit
        torch.testing.assert_close(early_inter[0], units[1], rtol=0, atol=0)
        # norm is accepted (timm's signature) and changes nothing: there is no final norm
        normed = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
        torch.testing.assert_close(normed[0], units[-1], rtol=0, atol=0)


@pytest.mark.parametrize('model_name', ['dtgff_cnn_s', 'ff_mlp', 'dtgff_resnet18'])
def test_forward_intermediates_bad_input(model_name):
    """Out-of-range indices raise timm's own error (naming the allowed range); a bad format names the allowed one."""
    model = timm.create_model(model_name).eval()
    n = len(model.local_units())
    x = _input(model)
    with pytest.raises(AssertionError, match=rf'feature index {n} is out of range \(0 to {n - 1}\)'):
        model.forward_intermediates(x, indices=[n])
    with pytest.raises(AssertionError, match=rf'feature index -1 is out of range \(0 to {n - 1}\)'):
        model.forward_intermediates(x, indices=[-n - 1])
    with pytest.raises(AssertionError, match=rf'last-n \({n + 1}\) is out of range \(1 to {n}\)'):
        model.forward_intermediates(x, indices=n + 1)
    with pytest.raises(ConfigError, match="unknown output_fmt 'NHWC'; allowed: NCHW"):
        model.forward_intermediates(x, output_fmt='NHWC')
    with pytest.raises(AssertionError, match='out of range'):
        model.prune_intermediate_layers([n])


@pytest.mark.timeout(120)
@pytest.mark.parametrize('model_name', MODELS)
def test_prune_intermediate_layers(model_name):
    model = timm.create_model(model_name).eval()
    x = _input(model)
    with torch.no_grad():
        units = _label_free_units(model, x)
    info = list(model.feature_info)

    kept = copy.deepcopy(model)
    assert kept.prune_intermediate_layers(len(info), prune_head=False) == list(range(len(info)))
    assert len(kept.local_units()) == len(info) and kept.num_classes == model.num_classes  # nothing to cut

    assert model.prune_intermediate_layers([0, 1]) == [0, 1]
    assert len(model.local_units()) == 2 and len(model.feature_info) == 2
    assert model.num_classes == 0 and model.num_features == info[1]['num_chs']
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(inter[1], units[1], rtol=0, atol=0)
        torch.testing.assert_close(final, units[1], rtol=0, atol=0)
        out = model(x)  # no classifier, no pooling: the last kept unit's activation
    torch.testing.assert_close(out, units[1], rtol=0, atol=0)
    # the pruned model can be given a new classifier and trained
    model.reset_classifier(3)
    model.train()
    model(x).sum().backward()


@pytest.mark.timeout(120)
@pytest.mark.parametrize('model_name', MODELS)
def test_features_only_list_getter_fx_agree(model_name):
    """features_only with the default (module list), 'getter' (forward_intermediates) and 'fx' wrappers."""
    ref = None
    for feature_cls in (None, 'getter', 'fx'):
        torch.manual_seed(0)  # same init for every wrapper
        kwargs = dict(feature_cls=feature_cls) if feature_cls else {}
        model = timm.create_model(model_name, features_only=True, **kwargs).eval()
        torch.manual_seed(1)
        x = _input(timm.create_model(model_name))
        with torch.no_grad():
            outs = model(x)
        infos = [dict(num_chs=c, reduction=r) for c, r in zip(model.feature_info.channels(),
                                                               model.feature_info.reduction())]
        _check_shapes(model_name, outs, infos, x)
        if ref is None:
            ref = outs
        else:
            for a, b in zip(outs, ref):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


class _Method(torch.nn.Module):
    """Trace one method of a model (symbolic_trace traces ``forward`` only)."""

    def __init__(self, model, method: str):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, x):
        return getattr(self.model, self.method)(x)


@pytest.mark.timeout(180)
@pytest.mark.parametrize('train', [False, True], ids=['eval', 'train'])
@pytest.mark.parametrize('model_name', MODELS)
def test_fx_symbolic_trace_matches_eager(model_name, train):
    """forward, forward_features and forward_unit_logits trace with torch.fx and compute what eager does,
    including the training-time buffer updates (BatchNorm statistics, dynamic temperature history)."""
    model = timm.create_model(model_name).train(train)
    for m in model.modules():
        if isinstance(m, DynamicTemperature):  # at init T is exactly t_init, so the history would not move
            torch.nn.init.normal_(m.net[2].weight)
    x = _input(model)
    for method in ('forward', 'forward_features', 'forward_unit_logits'):
        eager, traced_model = copy.deepcopy(model), copy.deepcopy(model)
        graph = torch.fx.symbolic_trace(_Method(traced_model, method))
        expected, got = getattr(eager, method)(x), graph(x)
        expected = expected if isinstance(expected, list) else [expected]
        got = got if isinstance(got, list) else [got]
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b)
        for (name, a), b in zip(traced_model.state_dict().items(), eager.state_dict().values()):
            torch.testing.assert_close(a, b, msg=f'{method}: buffer {name} differs after the traced call')
    if train and model.ff_cfg['temperature'] == 'dynamic' and not model.label_embed_enabled:
        moved = [n for n, v in eager.state_dict().items() if n.endswith('t_history') and v.item() != 1.0]
        assert moved, 'the dynamic temperature history was not updated: the buffer check could not fail'
    graph = torch.fx.symbolic_trace(model.eval())
    bad = torch.randn(2, 7) if model_name in NON_SPATIAL else torch.randn(2, x.shape[1] + 1, *x.shape[2:])
    with pytest.raises(ValueError, match='expected'):  # the input check is a graph leaf: it still runs
        graph(bad)


@pytest.mark.timeout(180)
@pytest.mark.parametrize('model_name', MODELS)
def test_torch_compile_fullgraph(model_name):
    """Dynamo captures the eval forward as one graph (aot_eager: graph capture and AOT tracing, no C++ build)."""
    torch._dynamo.reset()
    model = timm.create_model(model_name).eval()
    x = _input(model)
    with torch.no_grad():
        expected = model(x)
        got = torch.compile(model, fullgraph=True, backend='aot_eager')(x)
    torch.testing.assert_close(got, expected)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_torch_compile_inductor():
    """The default (inductor) backend on one model: generated code gives the eager logits."""
    torch._dynamo.reset()
    model = timm.create_model('dtgff_mlp').eval()
    x = _input(model)
    with torch.no_grad():
        expected = model(x)
        got = torch.compile(model, fullgraph=True)(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.timeout(180)
@pytest.mark.parametrize('model_name', MODELS)
def test_torch_export(model_name):
    model = timm.create_model(model_name).eval()
    x = _input(model)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        expected = model(x)
        got = program.module()(x)
    torch.testing.assert_close(got, expected)
