"""PredSim / sim (Nøkland & Eidnes 2019) and CwComp (Papachristodoulou et al. 2024): each loss against its formula
written from the paper, locality, training through train_ff.py with a plain timm reload, and bad input."""
import json

import pytest
import timm
import torch
import torch.nn.functional as F

from timm_ff import ConfigError, create_objective, get_method
from timm_ff.task import LocalTask

from _cli import assert_ok, run_train, weights

K = 10
TINY = dict(channels=(8, 16, 32, 64))  # dtgff_cnn_s: 4 units of 32, 16, 8, 4 pixels
CW_TINY = dict(channels=(10, 20, 30, 40))  # CwComp: a multiple of K channels per unit


def batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 0, 1, 3][:n])


def model_for(method, **kwargs):
    torch.manual_seed(0)
    model = timm.create_model('dtgff_cnn_s', **{**get_method(method).model_kwargs, **kwargs}).train()
    obj = create_objective(get_method(method).objective, **get_method(method).objective_kwargs)
    obj.check_model(model)
    obj.prepare_model(model)
    return model, obj


def unit_losses(model, obj, x, y):
    result = LocalTask(model.local_units(), obj, K, mode='per_unit').step(x, y, backward=lambda loss: None)
    return torch.stack(result.unit_losses)


def paper_similarity(a):
    """Nøkland & Eidnes: rows = per-channel standard deviation over positions, centred; cosine of every pair."""
    rows = a.flatten(2)
    mean = rows.mean(2, keepdim=True)
    rows = ((rows - mean).pow(2).sum(2) / (rows.shape[2] - 1)).sqrt()
    rows = rows - rows.mean(1, keepdim=True)
    return F.cosine_similarity(rows[:, None, :], rows[None, :, :], dim=2)


def label_similarity(y):
    """The similarity of centred one-hot labels: 1 for the same class, -1 / (K - 1) for another."""
    same = (y[:, None] == y[None, :]).float()
    return same + (1 - same) * (-1.0 / (K - 1))


@pytest.mark.parametrize('method', ['predsim', 'sim'])
def test_unit_loss_is_the_papers_formula(method):
    """predsim: 0.01 * CE(pred head) + 0.99 * MSE(S(conv3x3(h)), S(onehot)); sim: MSE + the head's CE."""
    model, obj = model_for(method, **TINY)
    assert get_method('predsim').objective_kwargs['beta'] == 0.99
    x, y = batch()
    got = unit_losses(model, obj, x, y)
    state, expected = x, []
    with torch.no_grad():
        for unit in model.units:
            state = unit(state)
            conv = unit.decoder.proj
            assert conv.kernel_size == (3, 3) and conv.bias is None and conv.in_channels == conv.out_channels
            sim = (paper_similarity(F.conv2d(state, conv.weight, padding=1)) - label_similarity(y)).pow(2).mean()
            ce = F.cross_entropy(unit.head(state), y)
            expected.append(0.01 * ce + 0.99 * sim if method == 'predsim' else sim + ce)
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-4, atol=1e-6)


def test_sim_heads_learn_from_detached_features_only():
    """sim: the head's cross-entropy trains the head; the unit body learns from the similarity loss alone."""
    model, _ = model_for('sim', **TINY)
    x, y = batch()
    unit = model.units[0]
    _, logits = unit(x, with_logits=True)
    body = list(unit.stem.parameters())
    assert all(g is None for g in torch.autograd.grad(F.cross_entropy(logits, y), body, allow_unused=True,
                                                      retain_graph=True))
    assert torch.autograd.grad(F.cross_entropy(logits, y), unit.head.proj.weight)[0].abs().sum() > 0


def test_cwcomp_logits_are_the_class_group_energies():
    """g_k = mean over the k-th block of C / K consecutive channels and all positions of h ** 2; loss CE(g, y)."""
    model, obj = model_for('cwcomp', **CW_TINY)
    x, y = batch()
    got = unit_losses(model, obj, x, y)
    with torch.no_grad():
        feats = model.forward_intermediates(x, intermediates_only=True)
        energies = [h.reshape(h.shape[0], K, h.shape[1] // K, *h.shape[2:]).pow(2).mean((2, 3, 4)) for h in feats]
        torch.testing.assert_close(got, torch.stack([F.cross_entropy(g, y) for g in energies]), rtol=1e-5, atol=1e-6)
        model.eval()
        for z, g in zip(model.forward_unit_logits(x), model.forward_intermediates(x, intermediates_only=True)):
            torch.testing.assert_close(z, g.reshape(6, K, -1).pow(2).mean(2))
    assert not any('head' in n for n, _ in model.named_parameters())  # no learned map from energies to logits


@pytest.mark.parametrize('method,kwargs', [('predsim', TINY), ('sim', TINY), ('cwcomp', CW_TINY)])
def test_no_gradient_crosses_a_unit(method, kwargs):
    """per_unit: the backward of unit u's loss touches unit u's parameters only (then the fusion's alone)."""
    model, obj = model_for(method, **kwargs)
    touched = []

    def backward(loss):
        before = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
        loss.backward()
        touched.append({int(n.split('.')[1]) if n.startswith('units.') else None for n, p in model.named_parameters()
                        if p.grad is not None and (before[n] is None or not torch.equal(before[n], p.grad))})

    x, y = batch()
    LocalTask(model.local_units(), obj, K, fusion=model.fusion, mode='per_unit').step(x, y, backward=backward)
    assert touched == [{0}, {1}, {2}, {3}, {None}]
    if method != 'cwcomp':
        assert all(u.decoder.proj.weight.grad.abs().sum() > 0 for u in model.units)


@pytest.mark.timeout(300)
@pytest.mark.parametrize('method,extra', [('predsim', []), ('sim', []),
                                          ('cwcomp', ['--model-kwargs', '{"channels": [20, 40, 60, 80]}'])])
def test_method_trains_and_reloads_with_plain_timm(method, extra, tmp_path):
    out = tmp_path / 'run'
    proc = run_train('--method', method, '--model', 'dtgff_cnn_s', *extra, '--epochs', '1', '--max-train-steps', '2',
                     '--output', out)
    assert_ok(proc)
    assert not any('decoder' in k for k in weights(out))
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['timm_ff']['recipe']['method'] == method and cfg['timm_ff']['recipe']['objective'] == method
    model = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    x, _ = batch(2)
    with torch.no_grad():
        logits = model.forward_unit_logits(x)
        if method == 'cwcomp':
            h = model.forward_intermediates(x, intermediates_only=True)[-1]
            torch.testing.assert_close(logits[-1], h.reshape(2, K, -1).pow(2).mean(2))
    assert all(z.shape == (2, K) and torch.isfinite(z).all() for z in logits)


@pytest.mark.parametrize('kwargs,match', [
    (dict(channels=(8, 16, 32, 64)), r"a unit has 8, allowed: a positive multiple of 10 \(10, 20, \.\.\.\)"),
    (dict(channels=(15, 20, 30, 40)), 'a unit has 15, allowed: a positive multiple of 10'),
    (dict(channels=(10, 20, 30, 40), goodness='grid'), "goodness mode for head_proj='class_groups'.*'grid'.*channel"),
])
def test_cwcomp_bad_widths_are_one_clear_line(kwargs, match):
    with pytest.raises(ConfigError, match=match) as e:
        timm.create_model('dtgff_cnn_s', **{**get_method('cwcomp').model_kwargs, **kwargs})
    assert '\n' not in str(e.value)


def test_cwcomp_refuses_other_logits_and_bad_beta():
    with pytest.raises(ConfigError, match="model has head_proj='learned', allowed: head_proj='class_groups'"):
        create_objective('cwcomp').check_model(timm.create_model('dtgff_cnn_s', goodness='channel', **CW_TINY))
    with pytest.raises(ConfigError, match=r'predsim beta=1.5: must be a number in \[0, 1\]'):
        create_objective('predsim', beta=1.5)
