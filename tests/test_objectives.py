"""Every registered objective under LocalTask: finite losses, learning, and where gradients may flow.

Locality is the point of FF: for a local objective (``dtg``, ``ff``) no gradient may cross a unit
boundary, and the two backward schedules (``summed``, ``per_unit``) must give the same gradients.
The BP baselines (``bp``, ``bp_deepsup``) are the opposite: gradients reach unit 0 from the last
unit's loss.
"""
import copy
import math

import pytest
import timm
import torch

import timm_ff  # noqa: F401  (registers the models)
from timm_ff import ConfigError, create_objective, get_method, list_objectives
from timm_ff.task import LocalTask

OBJECTIVES = list_objectives()
LOCAL = [o for o in OBJECTIVES if create_objective(o).local]


def _models_for(objective: str):
    """The small models each objective runs on: classic FF needs label_embed=True models."""
    return ('ff_cnn_s', 'ff_mlp') if objective == 'ff' else ('dtgff_cnn_s', 'dtgff_mlp')


# model kwargs an objective needs beyond the defaults: cwcomp reads logits from K equal channel groups (K = 8 divides
# the default widths)
_MODEL_KWARGS = {'cwcomp': dict(get_method('cwcomp').model_kwargs, num_classes=8)}


def _create(objective: str, model_name: str):
    """The model ``objective`` trains, with its training-only modules added as train_ff.py adds them."""
    model = timm.create_model(model_name, **_MODEL_KWARGS.get(objective, {}))
    return create_objective(objective).prepare_model(model)


CASES = [(o, m) for o in OBJECTIVES for m in _models_for(o)]
LOCAL_CASES = [(o, m) for o, m in CASES if o in LOCAL]


def _batch(model, b: int = 4, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, *model.pretrained_cfg['input_size'], generator=gen)
    y = torch.arange(b) % model.num_classes
    return x, y


def _task(model, objective, mode: str = 'summed') -> LocalTask:
    return LocalTask(model.local_units(), objective, model.num_classes, fusion=model.fusion, mode=mode)


def _step(model, objective, x, y, mode='summed', only=None, seed=0):
    """One LocalTask step from fresh grads; ``only=k`` backpropagates just the k-th backward call.

    Returns (result, number of backward calls). The seed fixes the classic-FF negative labels.
    """
    model.zero_grad(set_to_none=True)
    calls = []

    def backward(loss):
        if only is None or len(calls) == only:
            loss.backward()
        calls.append(float(loss.detach()))

    torch.manual_seed(seed)
    result = _task(model, objective, mode).step(x, y, backward=backward)
    return result, len(calls)


def _grads(module):
    return {n: (None if p.grad is None else p.grad.clone()) for n, p in module.named_parameters()}


def _has_grad(p) -> bool:
    return p.grad is not None and bool(p.grad.abs().sum() > 0)


def test_registry():
    assert set(OBJECTIVES) >= {'dtg', 'ff', 'bp', 'bp_deepsup'}
    assert {'dtg', 'ff'} <= set(LOCAL) and not {'bp', 'bp_deepsup'} & set(LOCAL)


@pytest.mark.timeout(60)
@pytest.mark.parametrize('objective,model_name', CASES)
def test_objective_step_finite(objective, model_name):
    obj = create_objective(objective)
    model = _create(objective, model_name).train()
    obj.check_model(model)
    x, y = _batch(model)
    result, calls = _step(model, obj, x, y)
    n = len(model.local_units())
    assert calls == 1  # summed: one backward
    assert len(result.unit_losses) == (1 if objective == 'bp' else n)
    host = result.read()  # the losses stay on the device until read
    assert all(math.isfinite(v) for v in host.unit_losses)
    assert math.isfinite(host.loss) and host.loss > 0
    has_logits = obj.unit_logits(torch.zeros(1)) is not None
    learned_fusion = any(p.requires_grad for p in model.fusion.parameters())
    assert (result.fusion_loss is not None) == (has_logits and learned_fusion)
    for p in model.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


@pytest.mark.timeout(60)
@pytest.mark.parametrize('objective,model_name', CASES)
def test_find_unused_parameters_is_honest(objective, model_name):
    """DDP's find_unused_parameters flag matches which parameters actually get no gradient."""
    obj = create_objective(objective)
    model = _create(objective, model_name).train()
    x, y = _batch(model)
    _step(model, obj, x, y)
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    if obj.find_unused_parameters:
        assert unused, 'find_unused_parameters=True but every parameter got a gradient'
    else:
        assert not unused, f'parameters without gradient: {unused}'


def test_classic_ff_rejects_learned_fusion():
    """Classic FF has no per-pass logits to fit learned fusion weights on, so the combination is refused
    (rather than a config saying 'learned' over weights that never move)."""
    with pytest.raises(ConfigError, match="fusion='learned'") as e:
        timm.create_model('ff_mlp', fusion='learned')
    assert "'mean'" in str(e.value) and "'last'" in str(e.value)


@pytest.mark.timeout(120)
@pytest.mark.parametrize('objective', OBJECTIVES)
def test_objective_learns(objective):
    """Loss falls on a fixed tiny batch (16 random 1x28x28 inputs, fixed labels) in 25 Adam steps."""
    model_name = _models_for(objective)[1]  # the MLP: fast
    obj = create_objective(objective)
    model = _create(objective, model_name).train()
    x, y = _batch(model, b=16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        result, _ = _step(model, obj, x, y, seed=0)  # same seed: the same FF negatives every step
        opt.step()
        losses.append(sum(result.read().unit_losses))  # the units' own losses (fusion loss excluded)
    start, end = losses[0], sum(losses[-3:]) / 3
    assert all(math.isfinite(v) for v in losses)
    assert end < 0.8 * start, f'loss did not fall: {start:.4f} -> {end:.4f}'


# ------------------------------------------------------------------------------------- locality
@pytest.mark.timeout(120)
@pytest.mark.parametrize('objective,model_name', LOCAL_CASES)
def test_local_loss_reaches_only_its_unit(objective, model_name):
    obj = create_objective(objective)
    base = _create(objective, model_name).train()
    units = base.local_units()
    n = len(units)
    learned_fusion = any(p.requires_grad for p in base.fusion.parameters())
    has_logits = obj.unit_logits(torch.zeros(1)) is not None
    x, y = _batch(base)
    for k in range(n):
        model = copy.deepcopy(base)
        _, calls = _step(model, obj, x, y, mode='per_unit', only=k)
        # per_unit: one backward per unit, plus one for the fusion weights
        assert calls == n + (1 if learned_fusion and has_logits else 0)
        for u, unit in enumerate(model.local_units()):
            params = list(unit.named_parameters())
            if u == k:
                assert any(_has_grad(p) for _, p in params), f'unit {k} got no gradient from its own loss'
            else:
                leaked = [name for name, p in params if p.grad is not None and p.grad.abs().sum() > 0]
                assert not leaked, f'unit {k} loss reached unit {u}: {leaked}'
        assert all(p.grad is None for p in model.fusion.parameters())


@pytest.mark.timeout(120)
@pytest.mark.parametrize('objective,model_name', LOCAL_CASES)
def test_unit_gradient_independent_of_other_losses(objective, model_name):
    """Unit k's gradient in a summed step equals its gradient from its own loss alone."""
    obj = create_objective(objective)
    base = _create(objective, model_name).train()
    x, y = _batch(base)
    summed = copy.deepcopy(base)
    _step(summed, obj, x, y, mode='summed')
    for k in range(len(base.local_units())):
        alone = copy.deepcopy(base)
        _step(alone, obj, x, y, mode='per_unit', only=k)
        g_sum = _grads(summed.local_units()[k])
        g_alone = _grads(alone.local_units()[k])
        assert g_sum.keys() == g_alone.keys()
        for name in g_sum:
            assert (g_sum[name] is None) == (g_alone[name] is None), name
            if g_sum[name] is not None:
                torch.testing.assert_close(g_sum[name], g_alone[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.timeout(120)
@pytest.mark.parametrize('objective,model_name', LOCAL_CASES)
def test_summed_and_per_unit_agree(objective, model_name):
    obj = create_objective(objective)
    a = _create(objective, model_name).train()
    b = copy.deepcopy(a)  # dynamic temperature and BN buffers change on every forward
    x, y = _batch(a)
    ra, calls_a = _step(a, obj, x, y, mode='summed')
    rb, calls_b = _step(b, obj, x, y, mode='per_unit')
    assert calls_a == 1 and calls_b >= len(a.local_units())
    assert ra.read().unit_losses == pytest.approx(rb.read().unit_losses, rel=1e-6)
    ga, gb = _grads(a), _grads(b)
    assert ga.keys() == gb.keys()
    for name in ga:
        assert (ga[name] is None) == (gb[name] is None), name
        if ga[name] is not None:
            torch.testing.assert_close(ga[name], gb[name], rtol=1e-5, atol=1e-7, msg=name)
    for (name, ba), bb in zip(a.named_buffers(), b.buffers()):
        torch.testing.assert_close(ba, bb, msg=name)


@pytest.mark.timeout(60)
@pytest.mark.parametrize('objective', [o for o in OBJECTIVES if o not in LOCAL])
def test_end_to_end_objectives_reach_unit_zero(objective):
    """BP baselines: the last unit's loss alone sends gradient into unit 0 (no detach)."""
    obj = create_objective(objective)
    model = timm.create_model('dtgff_cnn_s').train()
    x, y = _batch(model)
    units = model.local_units()
    n = len(units)
    # run the units the way LocalTask does for a non-local objective, backpropagate only the last loss
    state = obj.init_state(x, y, model.num_classes)
    last = None
    for u, unit in enumerate(units):
        state, out = obj.unit_forward(unit, u, state)
        loss = obj.unit_loss(u, n, out, y)
        if u == n - 1:
            last = loss
    last.backward()
    stem = list(units[0].stem.parameters())  # dtgff_cnn_s: unit 0 is its stem conv-BN-ReLU
    assert stem and all(_has_grad(p) for p in stem)
    # and through LocalTask itself: unit 0 gets gradient from the later units' losses
    model.zero_grad(set_to_none=True)
    _step(model, obj, x, y)
    assert all(_has_grad(p) for p in stem)
    # a local objective on the same model keeps unit 0 out of the last unit's loss
    dtg = create_objective('dtg')
    model.zero_grad(set_to_none=True)
    _step(model, dtg, x, y, mode='per_unit', only=n - 1)
    assert all(p.grad is None or not p.grad.any() for p in units[0].parameters())


@pytest.mark.parametrize('objective', [o for o in OBJECTIVES if o not in LOCAL])
def test_per_unit_rejects_end_to_end(objective):
    model = timm.create_model('dtgff_mlp')
    with pytest.raises(ConfigError) as e:
        _task(model, create_objective(objective), mode='per_unit')
    assert 'per_unit' in str(e.value) and 'summed' in str(e.value) and objective in str(e.value)


def test_local_task_bad_mode():
    model = timm.create_model('dtgff_mlp')
    with pytest.raises(ConfigError, match="'streaming'.*per_unit.*summed"):
        _task(model, create_objective('dtg'), mode='streaming')


# ------------------------------------------------------------------------------------- bad input
def test_create_objective_unknown_name():
    with pytest.raises(ConfigError) as e:
        create_objective('dtgg')
    msg = str(e.value)
    assert "'dtgg'" in msg
    for name in OBJECTIVES:
        assert name in msg


@pytest.mark.parametrize('objective', OBJECTIVES)
def test_create_objective_unknown_kwarg(objective):
    with pytest.raises(ConfigError) as e:
        create_objective(objective, label_smothing=0.1)
    msg = str(e.value)
    assert "'label_smothing'" in msg and objective in msg
    allowed = 'threshold' if objective == 'ff' else 'label_smoothing'
    assert allowed in msg
    create_objective(objective, **{allowed: 0.1})  # the allowed kwarg works


@pytest.mark.parametrize('objective', OBJECTIVES)
def test_check_model_rejects_mismatch(objective):
    obj = create_objective(objective)
    good, _ = _models_for(objective)
    bad = 'dtgff_cnn_s' if objective == 'ff' else 'ff_cnn_s'
    obj.check_model(_create(objective, good))
    with pytest.raises(ConfigError, match='label_embed') as e:
        obj.check_model(timm.create_model(bad))
    assert objective in str(e.value)
    with pytest.raises(ConfigError, match='num_classes'):
        obj.check_model(timm.create_model(good, num_classes=0))


def test_ff_symba_loss_values_and_learning():
    obj = create_objective('ff', loss='symba', alpha=2.0)
    gp, gn = torch.tensor([3.0, 1.0]), torch.tensor([1.0, 1.0])
    expected = torch.nn.functional.softplus(2.0 * (gn - gp)).mean()
    torch.testing.assert_close(obj.unit_loss(0, 4, (gp, gn), None), expected)
    model = timm.create_model('ff_mlp').train()
    x, y = _batch(model, b=16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        result, _ = _step(model, obj, x, y, seed=0)
        opt.step()
        losses.append(sum(result.read().unit_losses))
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0]
    with pytest.raises(ConfigError, match="unknown ff loss 'hinge'; allowed: symba, threshold"):
        create_objective('ff', loss='hinge')


def test_ff_default_loss_is_symba_and_threshold_stays_available():
    gp, gn = torch.tensor([3.0, 0.5]), torch.tensor([1.0, 2.0])
    torch.testing.assert_close(create_objective('ff').unit_loss(0, 4, (gp, gn), None),
                               torch.nn.functional.softplus(4.0 * (gn - gp)).mean())
    sp = torch.nn.functional.softplus
    torch.testing.assert_close(create_objective('ff', loss='threshold', threshold=1.5).unit_loss(0, 4, (gp, gn), None),
                               (sp(1.5 - gp) + sp(gn - 1.5)).mean())
