"""DeeperForward, SCFF and Trifecta's overlapping local updates: each defining computation against its formula
written from the paper on a fixed batch, where each loss's gradient goes, training through train_ff.py with a
plain timm reload, and bad input."""
import copy
import json

import pytest
import timm
import torch
import torch.nn.functional as F

from timm_ff import ConfigError, create_objective, get_method
from timm_ff.hub import model_card
from timm_ff.pipeline import check_pipeline
from timm_ff.task import LocalTask

from _cli import assert_ok, run_train
import _locality

K = 10
DF_TINY = dict(channels=(20, 20, 40, 40))  # DeeperForward: a multiple of K channels per unit
TINY = dict(channels=(8, 8, 16, 16))


def batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 0, 1, 3][:n])


def build(method, model_name='dtgff_cnn_s', objective_kwargs=None, **kwargs):
    m = get_method(method)
    torch.manual_seed(0)
    model = timm.create_model(model_name, **{**m.model_kwargs, **kwargs}).train()
    obj = create_objective(m.objective, **{**m.objective_kwargs, **(objective_kwargs or {})})
    obj.check_model(model)
    return model, obj


def touched_per_backward(model, obj, x, y, mode='per_unit'):
    return _locality.touched_per_backward(model, obj, x, y, K, mode)


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------------------------- DeeperForward
def test_deeperforward_is_the_papers_computation():
    """Class k's logit is the mean ReLU output of channel group k (not squared); CE per unit; the next unit receives
    GroupNorm(K) (no affine) of the raw output; the prediction is the mean of the units' logits."""
    model, obj = build('deeperforward', **DF_TINY)
    x, y = batch()
    result = LocalTask(model.local_units(), obj, K, mode='per_unit').step(x, y, backward=lambda loss: None)
    expected, logits, h = [], [], x
    with torch.no_grad():
        for u, unit in enumerate(model.units):
            inp = x if u == 0 else F.group_norm(h, K, eps=1e-5)
            h = unit.body(unit.stem(inp) if unit.stem is not None else inp)
            z = h.relu().reshape(h.shape[0], K, -1).mean(2)
            logits.append(z)
            expected.append(F.cross_entropy(z, y))
        torch.testing.assert_close(torch.stack(result.unit_losses), torch.stack(expected), rtol=1e-5, atol=1e-6)
        model.eval()
        torch.testing.assert_close(model(x), torch.stack(logits).mean(0), rtol=1e-5, atol=1e-6)
    assert isinstance(model.units[1].in_norm, torch.nn.GroupNorm) and not list(model.units[1].in_norm.parameters())


def test_deeperforward_is_layer_local():
    model, obj = build('deeperforward', **DF_TINY)
    x, y = batch()
    assert touched_per_backward(model, obj, x, y) == [{0}, {1}, {2}, {3}]


def test_deeperforward_needs_k_groups_of_channels():
    with pytest.raises(ConfigError, match=r"'relu_mean' splits a unit's 32 channels into goodness_groups=10 .*"
                                          r'multiples of 10'):
        build('deeperforward')
    assert type(timm.create_model('dtgff_cnn_s').units[1].in_norm).__name__ == 'ChannelLayerNorm'  # default


# ------------------------------------------------------------------------------------- SCFF
def scff_terms(hp, hn, th_pos=0.0, th_neg=1.0, lam=0.0012):
    """The source's loss: y = mean over channels of relu(h)^2 per position; threshold terms and the L2 term."""
    yp, yn = hp.relu().pow(2).mean(1), hn.relu().pow(2).mean(1)
    return (torch.log(1 + torch.exp(th_pos - yp)).mean([1, 2]).mean()
            + torch.log(1 + torch.exp(yn - th_neg)).mean([1, 2]).mean()
            + lam * torch.norm(yp, p=2, dim=(1, 2)).mean())


def find_shift(pos, neg):
    """The k with neg = (pos + pos[i + k]) / 2 for every sample i (None if there is none)."""
    for k in range(1, pos.shape[0]):
        if torch.allclose(neg, (pos + pos.roll(-k, 0)) / 2, atol=1e-6):
            return k
    return None


def test_scff_loss_is_the_papers_formula():
    """Positive: an image with itself; negative: with another image of the batch (both averaged, see scff.py);
    every later unit pairs its positive input again; loss = SCFF terms + the class head's CE on detached features."""
    model, obj = build('scff', **TINY)
    x, y = batch()
    inputs = {}
    for u, unit in enumerate(model.units):
        unit.register_forward_pre_hook(lambda m, args, u=u: inputs.__setitem__(u, args[0].detach().clone()))
    torch.manual_seed(1)
    result = LocalTask(model.local_units(), obj, K, mode='per_unit').step(x, y, backward=lambda loss: None)
    b = x.shape[0]
    with torch.no_grad():
        for u, unit in enumerate(model.units):
            pos, neg = inputs[u][:b], inputs[u][b:]
            assert find_shift(pos, neg) is not None, f'unit {u} was not given self/other pairs'
            if u == 0:
                assert torch.equal(pos, x)
            h = unit(inputs[u])  # train mode: BatchNorm over positives and negatives together
            ce = F.cross_entropy(unit.head(h[:b]), y)
            torch.testing.assert_close(result.unit_losses[u], scff_terms(h[:b], h[b:]) + ce, rtol=1e-5, atol=1e-6)
            if u + 1 < len(model.units):
                torch.testing.assert_close(inputs[u + 1][:b], h[:b])


# the preset's 'pred' head starts at zero, which alone would stop its loss at the head in the first step
OPEN_HEAD = dict(TINY, head='linear')


def test_scff_units_never_see_a_label():
    """Shuffled labels change the heads' gradients only; every other unit parameter gets the same gradient."""
    x, y = batch()
    got = []
    for labels in (y, y.flip(0)):
        model, obj = build('scff', **OPEN_HEAD)
        torch.manual_seed(1)
        LocalTask(model.local_units(), obj, K, fusion=model.fusion).step(x, labels, backward=lambda loss: loss.backward())
        got.append(grads(model))
    assert got[0].keys() == got[1].keys()
    changed = {n for n in got[0] if not torch.equal(got[0][n], got[1][n])}
    assert changed and all('.head.' in n or n.startswith('fusion') for n in changed), changed


def test_scff_is_layer_local_and_pairs_need_two_images():
    model, obj = build('scff', **OPEN_HEAD)
    x, y = batch()
    assert touched_per_backward(model, obj, x, y) == [{0}, {1}, {2}, {3}, {'fusion'}]
    with pytest.raises(ConfigError, match='scff pairs each image with another image of its batch, but a batch holds '
                                          '1 image; allowed: batches of 2 or more'):
        LocalTask(model.local_units(), obj, K).step(x[:1], y[:1], backward=lambda loss: None)
    with pytest.raises(ConfigError, match='scff lam has 2 values, but the model has 4 units'):
        create_objective('scff', lam=[0.1, 0.2]).check_model(model)
    with pytest.raises(ConfigError, match="needs a model with class heads"):
        create_objective('scff').check_model(timm.create_model('ff_cnn_s', **TINY))


# ------------------------------------------------------------------------------------- Trifecta OLU
def symba(h_pos, h_neg, alpha=4.0):
    """SymBa on mean-square goodness over C x H x W: softplus(alpha * (g_neg - g_pos))."""
    return F.softplus(alpha * (h_neg.pow(2).mean((1, 2, 3)) - h_pos.pow(2).mean((1, 2, 3)))).mean()


def has_loss(u, t):
    """Trifecta's should_detach(olu=True): in batch t, block u has a loss (and hands on detached) iff this holds."""
    return (u % 2 == 0) ^ (t % 2 == 0)


def test_trifecta_overlap_is_the_sources_schedule_and_gradient():
    """Batch t: the units with has_loss(u, t) have a SymBa loss, which also updates unit u - 1 (its output reaches
    unit u undetached) and no unit before it; the other units' losses are only logged."""
    base, obj = build('trifecta_olu', 'ff_cnn_s', **TINY)
    assert not obj.local and obj.per_unit_backward
    x, y = batch()
    b = x.shape[0]
    for t in range(2):
        model, seen = copy.deepcopy(base), {}
        model.units[0].register_forward_pre_hook(
            lambda m, args, kwargs: seen.update(labels=kwargs['labels']), with_kwargs=True)
        result = LocalTask(model.local_units(), obj, K).step(x, y, backward=lambda loss: loss.backward())
        ref, h, expected = copy.deepcopy(base), torch.cat([x, x]), {}
        for u, unit in enumerate(ref.units):
            if u > 0 and has_loss(u - 1, t):
                h = h.detach()
            h = unit(h, labels=seen['labels'])
            if has_loss(u, t):
                loss = symba(h[:b], h[b:])
                loss.backward(retain_graph=True)
                expected[u] = loss.detach()
        assert sorted(expected) == ([1, 3] if t == 0 else [0, 2])
        torch.testing.assert_close(torch.stack([result.unit_losses[u] for u in expected]),
                                   torch.stack(list(expected.values())), rtol=1e-5, atol=1e-6)
        got, want = grads(model), grads(ref)
        assert got.keys() == want.keys()
        for n, g in want.items():
            torch.testing.assert_close(got[n], g, rtol=1e-4, atol=1e-6, msg=n)
        if t == 1:
            assert all(p.grad is None for p in model.units[3].parameters())  # no loss reaches the last unit


@pytest.mark.parametrize('mode', ['per_unit', 'summed'])
def test_trifecta_overlap_is_not_layer_local(mode):
    """Unit u's loss touches units u and u - 1 only (per_unit), and summed gives the same gradients."""
    base, obj = build('trifecta_olu', 'ff_cnn_s', **TINY)
    x, y = batch()
    per_step, got = [], []
    for t in range(2):
        model = copy.deepcopy(base)
        torch.manual_seed(t)
        per_step.append(touched_per_backward(model, obj, x, y, mode=mode))
        got.append(grads(model))
    if mode == 'per_unit':
        assert per_step == [[{0, 1}, {2, 3}], [{0}, {1, 2}]]
    else:
        assert per_step == [[{0, 1, 2, 3}], [{0, 1, 2}]]
        _, obj_pu = build('trifecta_olu', 'ff_cnn_s', **TINY)
        for t in range(2):
            model = copy.deepcopy(base)
            torch.manual_seed(t)
            LocalTask(model.local_units(), obj_pu, K, mode='per_unit').step(x, y, lambda loss: loss.backward())
            for n, g in got[t].items():
                torch.testing.assert_close(grads(model)[n], g, rtol=1e-5, atol=1e-7, msg=n)
    default = create_objective('ff')
    assert default.local and all(default.detach_input(u) for u in range(1, 4))


def test_trifecta_overlap_refuses_the_pipeline_and_unit_micro_batches():
    obj = create_objective('ff', overlap=True)
    with pytest.raises(ConfigError, match=r"--pipeline-stages: objective 'ff' with overlap=true \(Trifecta's "
                                          r"overlapping local updates.*allowed: 'ff' without it"):
        check_pipeline(stages=2, num_processes=1, num_units=4, objective=obj, grad_accum_steps=1,
                       mixed_precision='no', data_pipeline='tensor')
    model = timm.create_model('ff_cnn_s', **TINY)
    with pytest.raises(ConfigError, match="--unit-micro-batches .* objective 'ff' with overlap=true"):
        LocalTask(model.local_units(), obj, K, mode='per_unit', micro_batches={0: 2})
    with pytest.raises(ConfigError, match='ff overlap must be true or false'):
        create_objective('ff', overlap='yes')
    restored = create_objective('ff', overlap=True)
    restored.load_state_dict(dict(batches=3))
    restored.init_state(*batch(), K)
    assert restored.trains(0) and not restored.trains(1)  # the fourth batch (odd): even units have the loss


# ------------------------------------------------------------------------------------- train_ff.py
def reload(out):
    return timm.create_model(f'local-dir:{out}', pretrained=True).eval()


@pytest.mark.timeout(300)
def test_cli_deeperforward(tmp_path):
    out = tmp_path / 'df'
    # 13 images per class: one epoch of 2 steps, which ends in the fusion check (the layer-range readout)
    proc = run_train('--method', 'deeperforward', '--model', 'dtgff_cnn_s', '--model-kwargs', json.dumps(DF_TINY),
                     '--epochs', '1', '--max-per-class', '13', '--output', out)
    assert_ok(proc)
    assert 'fusion check on 95 training images' in proc.stdout, proc.stdout
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['method'] == 'deeperforward' and metrics['local'] is True and metrics['global_step'] == 2
    model, (x, _) = reload(out), batch(2)
    assert model.ff_cfg['goodness'] == 'relu_mean' and model.ff_cfg['unit_norm'] == 'groupnorm'
    with torch.no_grad():
        h = model.units[0](x)
        torch.testing.assert_close(model.forward_unit_logits(x)[0], h.relu().reshape(2, K, -1).mean(2))


@pytest.mark.timeout(300)
def test_cli_scff_then_a_linear_probe_on_its_checkpoint(tmp_path):
    out, probe = tmp_path / 'scff', tmp_path / 'probe'
    kwargs = json.dumps(TINY)
    assert_ok(run_train('--method', 'scff', '--model', 'dtgff_cnn_s', '--model-kwargs', kwargs, '--epochs', '1',
                        '--max-train-steps', '2', '--output', out))
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['method'] == 'scff' and metrics['local'] is True and 0 <= metrics['accuracy'] <= 100
    model = reload(out)
    assert model.ff_cfg['head'] == 'pred' and model(batch(2)[0]).shape == (2, K)
    # the source's protocol: a readout fitted on the final, frozen features
    proc = run_train('--model', 'dtgff_cnn_s', '--model-kwargs', json.dumps({**TINY, **get_method('scff').model_kwargs}),
                     '--initial-checkpoint', out, '--linear-probe', '--objective', 'dtg', '--epochs', '1',
                     '--max-train-steps', '2', '--output', probe)
    assert_ok(proc)
    a, b = reload(out).state_dict(), reload(probe).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if '.head.proj.' not in k and not k.startswith('fusion'))


@pytest.mark.timeout(300)
def test_cli_trifecta_olu_records_that_it_is_not_local(tmp_path):
    out = tmp_path / 'olu'
    assert_ok(run_train('--method', 'trifecta_olu', '--model', 'ff_cnn_s', '--model-kwargs', json.dumps(TINY),
                        '--epochs', '1', '--max-train-steps', '2', '--checkpoint-steps', '2', '--output', out))
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['method'] == 'trifecta_olu' and metrics['local'] is False
    cfg = json.loads((out / 'config.json').read_text())
    assert cfg['timm_ff']['metrics']['local'] is False and cfg['timm_ff']['recipe']['objective_kwargs'] == {'overlap': True}
    card = model_card(out, 'someorg/olu')
    assert '- **Method:** trifecta_olu' in card and '- **Local:** `false`' in card and 'layer-locally' not in card
    saved = [torch.load(p) for p in (out / 'checkpoints').glob('step_*/custom_checkpoint_*.pkl')]
    assert {'batches': 2} in saved  # the batch parity survives a resume
    model = reload(out)
    assert model.ff_cfg['label_code'] == 'plane' and model(batch(2)[0]).shape == (2, K)
