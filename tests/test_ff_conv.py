"""Classic FF on conv nets and DTG-FF on ResNets: joint positive/negative batches, the label plane,
goodness read on the residual branch, and the fusion check's held-out images."""
import collections
import copy

import pytest
import timm
import torch
import torch.nn.functional as F

import timm_ff  # noqa: F401  (registers the models)
from timm_ff import ConfigError, create_objective
from timm_ff.errors import DataError
from timm_ff.data import hold_out_check, load_image_datasets
from timm_ff.models.ff_resnet import BranchBlock, PadShortcut
from timm_ff.task import LocalTask


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _ff_step(model, objective, x, y, seed=0):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same negative labels for both runs
    task = LocalTask(model.local_units(), objective, model.num_classes, fusion=model.fusion)
    return task.step(x, y, backward=lambda loss: loss.backward())


@pytest.mark.parametrize('model_name', ['ff_cnn_s', 'ff_resnet18'])
def test_joint_passes_equal_separate_without_batchnorm(model_name):
    """Without BatchNorm one 2B batch computes exactly what two B batches do: losses and gradients agree."""
    torch.manual_seed(0)
    model = timm.create_model(model_name, norm='none', unit_norm='length').train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    joint = _ff_step(model, create_objective('ff', passes='joint'), x, y)
    g_joint = _grads(model)
    separate = _ff_step(model, create_objective('ff', passes='separate'), x, y)
    g_sep = _grads(model)
    torch.testing.assert_close(joint.losses(), separate.losses(), rtol=1e-4, atol=1e-5)
    assert g_joint.keys() == g_sep.keys() and g_joint
    for n in g_joint:
        torch.testing.assert_close(g_joint[n], g_sep[n], rtol=1e-3, atol=1e-5, msg=n)


def test_joint_passes_share_batchnorm_statistics():
    """With BatchNorm the joint pass normalises positives and negatives together: unit 0's BN sees the
    mean over both passes (what a separate negative pass would have recorded differs)."""
    torch.manual_seed(0)
    model = timm.create_model('ff_cnn_s', norm='batchnorm').train()
    bn = model.units[1].body[1].bn  # the first BN whose input depends on the label
    bn.momentum = 1.0  # running_mean = the last batch's mean
    x, y = torch.randn(6, 3, 32, 32), torch.arange(6) % 10
    seen = []
    hook = bn.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    _ff_step(model, create_objective('ff'), x, y)
    hook.remove()
    assert seen == [12]  # one batch of 2B
    joint_mean = bn.running_mean.clone()
    _ff_step(model, create_objective('ff', passes='separate'), x, y)
    neg_mean = bn.running_mean.clone()
    assert not torch.allclose(joint_mean, neg_mean)
    with pytest.raises(ConfigError, match="unknown ff passes 'both'; allowed: joint, separate"):
        create_objective('ff', passes='both')


@pytest.mark.parametrize('model_name', ['ff_cnn_s', 'ff_resnet18', 'ff_resnet18.imagenet100'])
def test_label_plane_is_an_extra_input_channel(model_name):
    """label_code='plane' adds what concatenating the class's learned plane to the image as one more
    input channel would add after the stem conv (the stem conv's kernel extended by the plane's)."""
    torch.manual_seed(0)
    model = timm.create_model(model_name, label_code='plane').eval()
    unit = model.units[0]
    size = model.pretrained_cfg['input_size'][-1]
    x, y = torch.randn(3, 3, size, size), torch.tensor([0, 4, 9])
    plane = unit.label_embed
    conv = unit.stem.conv
    wide = torch.nn.Conv2d(4, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
    with torch.no_grad():
        wide.weight.copy_(torch.cat([conv.weight, plane.conv.weight], dim=1))
        if conv.bias is not None:
            wide.bias.copy_(conv.bias)
        planes = plane.weight[y].reshape(3, 1, plane.size, plane.size)
        planes = F.interpolate(planes, size=(size, size), mode='bilinear', align_corners=False) \
            if plane.size != size else planes
        pre = wide(torch.cat([x, planes], dim=1))
        rest = dict(unit.stem.named_children())
        want = pre
        for name, module in rest.items():
            if name != 'conv':
                want = module(want)
        want = unit.body(want)
        want = want[0] if isinstance(want, tuple) else want
        got = unit(x, labels=y)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # the code varies over the image (a bias code could not) and the label changes the output
    code = plane(y, x)
    assert code[:, :, 1:-1, 1:-1].flatten(2).std(-1).mean() > 0
    with torch.no_grad():
        assert not torch.allclose(got, unit(x, labels=(y + 1) % 10))


def test_label_plane_trains_and_round_trips(tmp_path):
    """The plane and its kernel get FF gradients, and the saved model rebuilds with the same scores."""
    from timm_ff.hub import save_model_folder
    torch.manual_seed(0)
    model = timm.create_model('ff_cnn_s', label_code='plane', norm='batchnorm').train()
    _ff_step(model, create_objective('ff'), torch.randn(4, 3, 32, 32), torch.arange(4))
    plane = model.units[0].label_embed
    assert plane.weight.grad.abs().sum() > 0 and plane.conv.weight.grad.abs().sum() > 0
    save_model_folder(model.eval(), tmp_path)
    again = timm.create_model('ff_cnn_s', pretrained=True, pretrained_cfg_overlay=dict(
        file=str(tmp_path / 'model.safetensors')), **{k: v for k, v in model.model_args.items()
                                                      if k not in ('num_classes', 'in_chans', 'global_pool')}).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), again(x))


@pytest.mark.parametrize('unit_size', ['block', 'stage'])
def test_branch_goodness_reads_the_residual_branch(unit_size):
    """goodness_at='branch': each unit's head reads f(x) before the add, the next unit still gets
    relu(shortcut(x) + f(x)), the stride-2 shortcuts have no parameters and every parameter learns."""
    torch.manual_seed(0)
    model = timm.create_model('dtgff_resnet18', goodness_at='branch', unit_size=unit_size).eval()
    x = torch.randn(2, 3, 32, 32)
    unit = model.units[1]
    h0 = model.units[0](x)
    block = unit.body if unit_size == 'block' else unit.body[-1]
    with torch.no_grad():
        inp = unit.in_norm(h0)
        if unit_size == 'stage':
            inp = unit.body[0](inp)[0]
        f = block.bn2(block.conv2(block.act1(block.bn1(block.conv1(inp)))))
        short = block.downsample(inp) if block.downsample is not None else inp
        out, logits = unit(h0, with_logits=True)
    torch.testing.assert_close(out, torch.relu(f + short))
    torch.testing.assert_close(logits, unit.head(f))
    assert not torch.allclose(unit.head(f), unit.head(out))  # not what goodness at the output gives
    downs = [m.downsample for m in model.modules() if isinstance(m, BranchBlock) and m.downsample is not None]
    assert len(downs) == 3 and all(isinstance(d, PadShortcut) and not list(d.parameters()) for d in downs)
    model.train()
    task = LocalTask(model.local_units(), create_objective('dtg'), 10, fusion=model.fusion)
    task.step(torch.randn(4, 3, 32, 32), torch.arange(4), backward=lambda loss: loss.backward())
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    feats = model.forward_intermediates(x, intermediates_only=True)
    assert [t.shape[1] for t in feats] == [c['num_chs'] for c in model.feature_info]


def test_pad_shortcut():
    x = torch.randn(2, 4, 8, 8)
    y = PadShortcut(4, 6, 2)(x)
    assert y.shape == (2, 6, 4, 4)
    torch.testing.assert_close(y[:, :4], F.avg_pool2d(x, 2))
    assert (y[:, 4:] == 0).all()


def test_fusion_check_images_are_held_out_of_training():
    """The check images are stratified, disjoint from the train split and the same for every run; a cap
    then applies to what is left, and a bad count is one clear error."""
    full = load_image_datasets('cifar10')  # the bundled sample offline
    data = load_image_datasets('cifar10', check_images=50)
    assert len(data.check) == 50 and len(data.train) == len(full.train) - 50
    ids = lambda ds: set(ds['orig_index'])  # noqa: E731
    assert not ids(data.check) & ids(data.train) and ids(data.check) | ids(data.train) == ids(full.train)
    assert set(collections.Counter(data.check['label']).values()) == {5}
    again = load_image_datasets('cifar10', check_images=50)
    assert data.check['orig_index'] == again.check['orig_index']
    capped = load_image_datasets('cifar10', check_images=50, max_per_class=20)
    assert len(capped.train) == 200 and len(capped.check) == 50
    assert not ids(capped.check) & ids(capped.train)
    small = load_image_datasets('cifar10', check_images=10_000)  # at most a tenth of the split
    assert len(small.check) == len(full.train) // 10
    sub = load_image_datasets('cifar10', check_images=50, classes=[3, 5])
    assert set(sub.check['label']) == {0, 1} and len(sub.check) == 10
    with pytest.raises(DataError, match='must be a positive integer, got -3'):
        hold_out_check(copy.copy(full), -3)
    tiny = load_image_datasets('cifar10', max_per_class=2)  # 20 images: a tenth cannot hold one per class
    kept = hold_out_check(tiny, 5)
    assert kept.check is None and len(kept.train) == 20 and 'no fusion check' in kept.source


@pytest.mark.parametrize('model_name', ['ff_cnn_s', 'ff_resnet18', 'ff_mlp'])
def test_label_units_all_gives_every_unit_its_own_code(model_name):
    """label_units='all': unit u > 0 adds its own per-class code to its normalised input; with 'first' a
    later unit ignores the labels. Scoring runs every unit with the label."""
    torch.manual_seed(0)
    model = timm.create_model(model_name, label_units='all').eval()
    x = torch.randn(3, *model.pretrained_cfg['input_size'])
    y = torch.tensor([1, 5, 8])
    unit = model.units[2]
    with torch.no_grad():
        h = model.units[1](model.units[0](x, labels=y), labels=y)
        inp = unit.in_norm(h)
        code = unit.label_embed.weight[y]
        want = unit.body(inp + (code[:, :, None, None] if inp.ndim == 4 else code))
        want = want[0] if isinstance(want, tuple) else want
        torch.testing.assert_close(unit(h, labels=y), want)
        assert not torch.allclose(unit(h, labels=y), unit(h, labels=(y + 1) % 10))
        # scoring passes each label to every unit: the fused logits equal a manual per-label run
        scores = torch.stack([sum(g for g in _unit_goodness(model, x, torch.full((3,), k))) for k in range(10)], 1)
        torch.testing.assert_close(model(x), scores / len(model.units), rtol=1e-4, atol=1e-5)
    first = timm.create_model(model_name).eval()
    assert first.units[2].label_embed is None
    with torch.no_grad():
        torch.testing.assert_close(first.units[2](h, labels=y), first.units[2](h))


def _unit_goodness(model, x, labels):
    out = []
    for unit in model.units:
        x, g = unit(x, labels=labels, with_logits=True)
        out.append(g)
    return out


def test_per_location_loss_is_the_loss_of_each_cell():
    """per_location=True: each unit's SymBa loss is the mean over the goodness grid's cells of each cell's
    loss (not the loss of the cells' mean); the scalar goodness that scores labels stays their mean."""
    torch.manual_seed(0)
    model = timm.create_model('ff_cnn_s', goodness='patch', goodness_patches=2).train()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    per_cell = _ff_step(model, create_objective('ff', per_location=True), x, y).losses()
    whole = _ff_step(model, create_objective('ff'), x, y).losses()
    torch.manual_seed(0)
    neg = (y + torch.randint(1, 10, y.shape)) % 10
    h, labels = torch.cat([x, x]), torch.cat([y, neg])
    for u, unit in enumerate(model.units):
        h_next, cells = unit(h, labels=labels, with_logits=True, goodness_vector=True)
        _, scalar = unit(h, labels=labels, with_logits=True)
        assert cells.shape == (8, 4)
        torch.testing.assert_close(scalar, cells.mean(1))
        torch.testing.assert_close(per_cell[u], F.softplus(4.0 * (cells[4:] - cells[:4])).mean())
        torch.testing.assert_close(whole[u], F.softplus(4.0 * (scalar[4:] - scalar[:4])).mean())
        h = h_next.detach()
    assert not torch.allclose(per_cell, whole)


def test_per_location_needs_a_per_location_goodness():
    objective = create_objective('ff', per_location=True)
    with pytest.raises(ConfigError, match="goodness is 'channel'; pass e.g. --model-kwargs"):
        objective.check_model(timm.create_model('ff_cnn_s'))
    objective.check_model(timm.create_model('ff_cnn_s', goodness='grid'))
    with pytest.raises(ConfigError, match="per_location must be true or false, got 'yes'"):
        create_objective('ff', per_location='yes')


def test_goodness_patches_per_unit():
    """A list gives each unit its own goodness grid; a DTG-FF ResNet's default grid keeps every cell at least
    2x2 positions wide, so stage 4 of a CIFAR ResNet-18 (4x4 maps) reads 2x2 cells, not single positions."""
    sides = [4, 4, 4, 4, 4, 4, 2, 2]
    assert [u.head.patches for u in timm.create_model('dtgff_resnet18').units] == sides
    assert [u.head.patches for u in timm.create_model('dtgff_resnet18.imagenet100').units] == [4] * 6 + [3, 3]  # 7x7
    assert [u.head.patches for u in timm.create_model('dtgff_resnet18', unit_size='stage').units] == [4, 4, 4, 2]
    assert [u.head.patches for u in timm.create_model('dtgff_resnet18', goodness_patches=4).units] == [4] * 8
    model = timm.create_model('dtgff_resnet18', goodness_patches=sides).eval()
    assert [unit.head.patches for unit in model.units] == sides
    assert [unit.head.num_goodness for unit in model.units][-2:] == [512 * 4, 512 * 4]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h = model.units[0](x)
        for unit in model.units[1:7]:
            h = unit(h)
        cells = model.units[7].head.goodness(model.units[7](h))
        assert cells.shape == (2, 512 * 4)
        out = model.units[7](h)
        torch.testing.assert_close(cells, F.avg_pool2d(out.square(), 2).flatten(1))
        assert model(x).shape == (2, 10)
    again = timm.create_model('dtgff_resnet18', **{k: v for k, v in model.model_args.items() if k != 'layers'})
    assert [unit.head.patches for unit in again.units] == sides
    with pytest.raises(ConfigError, match=r'a list of 8 positive integers \(one grid side per unit\), got \[4, 4\]'):
        timm.create_model('dtgff_resnet18', goodness_patches=[4, 4])


def test_head_norm_standardises_the_goodness_and_is_affine_at_eval():
    """head_norm='batchnorm': in training each goodness value is standardised over the batch before the map;
    at eval the head is a fixed affine map of the goodness (running statistics)."""
    torch.manual_seed(0)
    model = timm.create_model('dtgff_cnn_s', head_norm='batchnorm', temperature='fixed')
    head = model.units[3].head
    assert isinstance(head.norm, torch.nn.BatchNorm1d) and not head.norm.affine
    h = torch.randn(16, 256, 4, 4) * 3 + 1
    g = head.goodness(h)
    head.train()
    torch.testing.assert_close(head(h), head.proj((g - g.mean(0)) / torch.sqrt(g.var(0, unbiased=False) + 1e-5)))
    head.eval()
    mean, var = head.norm.running_mean, head.norm.running_var
    torch.testing.assert_close(head(h), head.proj((g - mean) / torch.sqrt(var + 1e-5)))
    assert timm.create_model('dtgff_cnn_s').units[3].head.norm is None
    resnet = timm.create_model('dtgff_resnet18')  # the DTG-FF ResNets' default (DTGFF_RESNET_DEFAULTS)
    assert all(isinstance(u.head.norm, torch.nn.BatchNorm1d) for u in resnet.units)
    assert timm.create_model('dtgff_resnet18', head_norm='none').units[0].head.norm is None
    with pytest.raises(ConfigError, match="classic FF models .* use head_norm='none'"):
        timm.create_model('ff_cnn_s', head_norm='batchnorm')
    with pytest.raises(ValueError, match="unknown value for head_norm 'layer'"):
        timm.create_model('dtgff_cnn_s', head_norm='layer')


@pytest.mark.parametrize('model_name', ['ff_cnn_s', 'ff_resnet18'])
def test_label_sweep_in_passes_scores_like_one_pass(model_name):
    """Classic FF's eval scores B*K (image, label) pairs; on a CPU in eval mode they go through each unit in passes
    of label_sweep_pairs (whole images), which must give every unit's logits of the one-pass sweep."""
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=10)
    x = torch.randn(13, 3, 32, 32)
    model.train()
    for _ in range(2):  # running statistics away from their init, so that eval-mode BN is not the identity
        model.forward_unit_logits(x)
    model.eval()
    with torch.no_grad():
        model.label_sweep_pairs = 10_000
        whole = model.forward_unit_logits(x)
        for pairs in (25, 64, 1):  # 2 images a pass (the last pass 1 image), 6 a pass, and 1 (below K)
            model.label_sweep_pairs = pairs
            chunked = model.forward_unit_logits(x)
            for u, (a, b) in enumerate(zip(whole, chunked)):
                assert a.shape == b.shape == (13, 10)
                torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4, msg=f'{model_name} unit {u}, {pairs} pairs')
