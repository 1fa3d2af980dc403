"""DTG-FF layers on known tensors: goodness, dynamic/fixed temperature, logit fusion, unit norms."""
import pytest
import timm
import torch

import timm_ff  # noqa: F401  (registers the models)
from timm_ff import ConfigError
from timm_ff.layers import (
    ChannelLayerNorm, DynamicTemperature, FixedTemperature, GoodnessHead, LengthNorm, LogitFusion,
    clarity_stats, create_temperature, create_unit_norm, goodness_vector,
)


# ------------------------------------------------------------------------------------- goodness
def _cells(h: torch.Tensor, p: int, reduce: str) -> torch.Tensor:
    """Reference patch goodness by explicit loops: energy of each cell of a p x p grid."""
    B, _, H, W = h.shape
    sh, sw = H // p, W // p
    out = torch.zeros(B, p * p)
    for i in range(p):
        for j in range(p):
            cell = h[:, :, i * sh:(i + 1) * sh, j * sw:(j + 1) * sw].double().square().flatten(1)
            out[:, i * p + j] = (cell.mean(1) if reduce == 'mean' else cell.sum(1)).float()
    return out


def test_goodness_channel_known_values():
    h = torch.arange(16.).reshape(1, 4, 2, 2)  # channel c holds 4c..4c+3
    torch.testing.assert_close(goodness_vector(h), torch.tensor([[3.5, 31.5, 91.5, 183.5]]))
    torch.testing.assert_close(goodness_vector(h, reduce='sum'), torch.tensor([[14., 126., 366., 734.]]))
    torch.testing.assert_close(goodness_vector(h, groups=2), torch.tensor([[17.5, 137.5]]))
    torch.testing.assert_close(goodness_vector(h, groups=2, reduce='sum'), torch.tensor([[140., 1100.]]))
    torch.testing.assert_close(goodness_vector(h, groups=1), h.square().mean().reshape(1, 1))
    # sign does not matter, the batch dimension is kept apart
    hb = torch.cat([h, -2 * h])
    torch.testing.assert_close(goodness_vector(hb)[1], 4 * goodness_vector(h)[0])


def test_goodness_non_spatial():
    h = torch.tensor([[1., -2., 3., 0.], [0., 0., 0., 5.]])
    torch.testing.assert_close(goodness_vector(h), h.square())
    torch.testing.assert_close(goodness_vector(h, groups=2), torch.tensor([[2.5, 4.5], [0., 12.5]]))
    with pytest.raises(ValueError, match='spatial'):
        goodness_vector(h, mode='patch')


@pytest.mark.parametrize('reduce', ['mean', 'sum'])
def test_goodness_patches_known_values(reduce):
    h = torch.randn(2, 3, 4, 6)
    g = goodness_vector(h, mode='patch', patches=2, reduce=reduce)
    assert g.shape == (2, 4)
    torch.testing.assert_close(g, _cells(h, 2, reduce))
    both = goodness_vector(h, mode='channel_patch', patches=2, reduce=reduce)
    assert both.shape == (2, 3 + 4)
    torch.testing.assert_close(both[:, :3], goodness_vector(h, reduce=reduce))
    torch.testing.assert_close(both[:, 3:], g)


@pytest.mark.parametrize('reduce', ['mean', 'sum'])
def test_goodness_grid_keeps_each_channel_per_cell(reduce):
    h = torch.randn(2, 3, 4, 6)
    g = goodness_vector(h, mode='grid', patches=2, reduce=reduce)
    assert g.shape == (2, 3 * 4)
    cells = g.reshape(2, 3, 2, 2)
    for c in range(3):  # channel c, cell (i, j) is the energy of that channel inside that 2x3 block only
        for i in range(2):
            for j in range(2):
                block = h[:, c, 2 * i:2 * i + 2, 3 * j:3 * j + 3].square().flatten(1)
                torch.testing.assert_close(cells[:, c, i, j], block.mean(1) if reduce == 'mean' else block.sum(1))
    grouped = goodness_vector(h[:, :2], mode='grid', groups=1, patches=2, reduce=reduce)
    torch.testing.assert_close(grouped, _cells(h[:, :2], 2, reduce))
    assert GoodnessHead(3, num_classes=5, mode='grid', patches=2)(h).shape == (2, 5)
    with pytest.raises(ConfigError, match="goodness mode for a non-spatial.*'grid'"):
        GoodnessHead(3, num_classes=5, mode='grid', spatial=False)


def test_goodness_bad_arguments():
    h = torch.randn(2, 4, 2, 2)
    with pytest.raises(ConfigError, match="'x'.*channel"):
        goodness_vector(h, mode='x')
    with pytest.raises(ConfigError, match="'max'.*mean"):
        goodness_vector(h, reduce='max')
    with pytest.raises(ValueError, match='groups=3'):
        goodness_vector(h, groups=3)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_goodness_fp32_for_low_precision_input(dtype):
    h = torch.randn(2, 8, 4, 4).to(dtype)
    h[0, 0, 0, 0] = 300.  # 300**2 overflows fp16 (max 65504)
    for mode in ('channel', 'patch', 'channel_patch', 'grid'):
        g = goodness_vector(h, mode=mode)
        assert g.dtype == torch.float32 and torch.isfinite(g).all()
        torch.testing.assert_close(g, goodness_vector(h.float(), mode=mode))


def test_goodness_head_shapes_and_autocast():
    head = GoodnessHead(8, num_classes=5, mode='channel_patch', patches=2)
    assert head.num_goodness == 8 + 4
    h = torch.randn(3, 8, 4, 4)
    assert head(h).shape == (3, 5)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert head(h.bfloat16()).dtype == torch.float32
    scalar = GoodnessHead(8, num_classes=0)
    torch.testing.assert_close(scalar(h), goodness_vector(h).mean(1))
    with pytest.raises(ConfigError, match='non-spatial'):
        GoodnessHead(8, num_classes=5, mode='patch', spatial=False)
    with pytest.raises(ConfigError, match="'x'"):
        GoodnessHead(8, num_classes=5, proj='x')


@pytest.mark.parametrize('model_name', ['dtgff_cnn_s', 'dtgff_mlp'])
def test_goodness_depends_on_sample(model_name):
    model = timm.create_model(model_name).eval()
    x = torch.randn(2, *model.pretrained_cfg['input_size'])
    with torch.no_grad():
        for unit in model.local_units():
            x, _ = unit(x, with_logits=True)
            g = unit.head.goodness(x)
            assert not torch.allclose(g[0], g[1], rtol=1e-3, atol=1e-5), 'same goodness for two samples'


@pytest.mark.parametrize('model_name', ['dtgff_cnn_s', 'dtgff_mlp'])
def test_coupled_length_norm_goodness_is_constant(model_name):
    """The documented ablation failure mode (DESIGN.md 3.2): goodness read after length norm.

    With ``decoupled=False, unit_norm='length', goodness_groups=1`` each position has unit RMS, so
    the single goodness value is 1 for every sample and the head cannot tell samples apart.
    """
    model = timm.create_model(model_name, decoupled=False, unit_norm='length', goodness_groups=1).eval()
    x = torch.randn(4, *model.pretrained_cfg['input_size'])
    with torch.no_grad():
        for unit in model.local_units():
            x, z = unit(x, with_logits=True)
            g = unit.head.goodness(x)
            torch.testing.assert_close(g, torch.ones_like(g), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(z, z[:1].expand_as(z))  # so are the logits
            # the decoupled default reads the raw activation instead
            assert not torch.allclose(goodness_vector(x, groups=1), torch.ones(4, 1), rtol=1e-3)


# ------------------------------------------------------------------------------------- temperature
def _random_batch(b: int = 8, g: int = 16, k: int = 10):
    return torch.rand(b, g) * 3, torch.randn(b, k) * 2


def _active_temperature(**kwargs) -> DynamicTemperature:
    """A DynamicTemperature whose net output depends on its input (the last layer starts at zero)."""
    t = DynamicTemperature(**kwargs)
    with torch.no_grad():
        t.net[2].weight.normal_(0, 2.0)
    return t


def test_dynamic_temperature_eval_uses_history():
    t = _active_temperature().eval()
    t.t_history.fill_(1.7)
    g, z = _random_batch()
    for _ in range(3):
        out = t(g, z)
        assert out.item() == pytest.approx(1.7) and torch.equal(out, t.t_history.float())
    assert t.t_history.item() == pytest.approx(1.7)
    # and eval does not depend on the batch
    g2, z2 = _random_batch(b=3)
    assert torch.equal(t(g2, z2), out)


def test_dynamic_temperature_train_ema_closed_form():
    m = 0.7
    t = _active_temperature(t_min=0.5, t_max=4.0, t_init=1.0, momentum=m).train()
    expected = 1.0
    raws = []
    for _ in range(3):
        g, z = _random_batch()
        with torch.no_grad():
            raw = t.raw(g, z).item()
        raws.append(raw)
        expected = m * expected + (1 - m) * raw
        out = t(g, z)
        assert out.item() == pytest.approx(expected, rel=1e-5)
        assert t.t_history.item() == pytest.approx(expected, rel=1e-5)
        assert 0.5 <= t.t_history.item() <= 4.0
        assert out.requires_grad  # T is trained through the net
    assert len({round(r, 6) for r in raws}) > 1, 'raw T did not change: the test could not fail'
    assert abs(raws[0] - 1.0) > 1e-3


def test_dynamic_temperature_bounded():
    t = _active_temperature(t_min=0.5, t_max=4.0, momentum=0.0).train()
    g, z = _random_batch()
    for bias, bound in ((50.0, 4.0), (-50.0, 0.5)):
        with torch.no_grad():
            t.net[2].bias.fill_(bias)
        out = t(g, z)
        assert 0.5 <= out.item() <= 4.0
        assert out.item() == pytest.approx(bound, abs=1e-4)


def test_dynamic_temperature_state_and_batch_one():
    t = DynamicTemperature(t_init=1.5)
    assert 't_history' in t.state_dict() and t.t_history.item() == 1.5
    g, z = _random_batch(b=1)
    assert torch.isfinite(clarity_stats(g, z)).all()
    out = t.train()(g, z)
    assert torch.isfinite(out) and 0.5 <= out.item() <= 4.0
    zeros = torch.zeros(1, 16), torch.zeros(1, 10)  # an all-zero batch (dead unit)
    assert torch.isfinite(clarity_stats(*zeros)).all() and torch.isfinite(t(*zeros))


def test_dynamic_temperature_bad_args():
    with pytest.raises(ValueError):
        DynamicTemperature(t_min=2.0, t_init=1.0)
    with pytest.raises(ValueError):
        DynamicTemperature(momentum=1.0)


def test_fixed_temperature():
    t = FixedTemperature(t_init=2.0)
    g, z = _random_batch()
    for mode in (True, False):
        t.train(mode)
        assert t(g, z).item() == 2.0 and t(*_random_batch(b=3)).item() == 2.0
    assert t.t_history.item() == 2.0 and not list(t.parameters())
    with pytest.raises(ValueError):
        FixedTemperature(t_init=0.0)


def test_create_temperature():
    assert isinstance(create_temperature('fixed', t_init=1.0), FixedTemperature)
    assert isinstance(create_temperature('dynamic', t_init=1.0), DynamicTemperature)
    with pytest.raises(ConfigError, match="'warm'.*dynamic.*fixed"):
        create_temperature('warm')


# ------------------------------------------------------------------------------------- fusion
def _unit_logits(n: int = 4, b: int = 3, k: int = 5):
    return [torch.randn(b, k) for _ in range(n)]


def test_fusion_mean():
    z = _unit_logits()
    torch.testing.assert_close(LogitFusion(4, 'mean')(z), torch.stack(z).mean(0))
    torch.testing.assert_close(LogitFusion(4, 'mean', fuse_last=2)(z), (z[2] + z[3]) / 2)
    assert not list(LogitFusion(4, 'mean').parameters())


def test_fusion_last():
    z = _unit_logits()
    fusion = LogitFusion(4, 'last', fuse_last=3)  # 'last' ignores M
    torch.testing.assert_close(fusion(z), z[3])
    assert fusion.fused_units == [3]


def test_fusion_learned():
    z = _unit_logits()
    fusion = LogitFusion(4, 'learned', fuse_last=3)
    assert fusion.fused_units == [1, 2, 3]
    with torch.no_grad():
        fusion.logit_weights.copy_(torch.tensor([0.0, 1.0, 2.0]))
    w = torch.tensor([0.0, 1.0, 2.0]).softmax(0)
    torch.testing.assert_close(fusion.weights().sum(), torch.tensor(1.0))
    torch.testing.assert_close(fusion(z), w[0] * z[1] + w[1] * z[2] + w[2] * z[3])
    # the weights are trainable from the fused output
    fusion(z).sum().backward()
    assert fusion.logit_weights.grad is not None


def test_fusion_bad_args():
    with pytest.raises(ConfigError, match="'bad'.*learned"):
        LogitFusion(4, 'bad')
    for m in (5, -1):
        with pytest.raises(ValueError, match='fuse_last'):
            LogitFusion(4, 'mean', fuse_last=m)
    with pytest.raises(ValueError, match='4 units'):
        LogitFusion(4, 'mean')(_unit_logits(3))


# ------------------------------------------------------------------------------------- unit norms
@pytest.mark.parametrize('shape', [(2, 8, 3, 5), (4, 16)])
def test_length_norm_unit_rms(shape):
    x = torch.randn(*shape) * 5 + 1
    y = LengthNorm()(x)
    rms = y.square().mean(1)
    torch.testing.assert_close(rms, torch.ones_like(rms), rtol=1e-4, atol=1e-4)
    # a per-position rescale: direction is kept
    torch.testing.assert_close(y / y.norm(dim=1, keepdim=True), x / x.norm(dim=1, keepdim=True))


@pytest.mark.parametrize('shape', [(2, 8, 3, 5), (4, 16)])
def test_channel_layer_norm(shape):
    x = torch.randn(*shape) * 5 + 3
    y = ChannelLayerNorm()(x)
    assert y.shape == x.shape
    mean, var = y.mean(1), y.var(1, unbiased=False)
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-5, rtol=0)
    torch.testing.assert_close(var, torch.ones_like(var), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('kind', ['length', 'layernorm', 'none'])
def test_unit_norms_parameter_free(kind):
    norm = create_unit_norm(kind)
    assert not list(norm.parameters()) and not list(norm.buffers())
    if kind == 'none':
        x = torch.randn(2, 3)
        assert torch.equal(norm(x), x)


def test_unit_norm_unknown():
    with pytest.raises(ConfigError, match="'x'.*layernorm.*length.*none"):
        create_unit_norm('x')
