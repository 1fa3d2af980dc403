"""FF pretraining, then fine-tuning (--objective bp --initial-checkpoint) or linear probing (--linear-probe)."""
import pytest
import timm
import torch

import timm_ff  # noqa: F401
from timm_ff import ConfigError, create_objective
from timm_ff.probe import freeze_for_linear_probe
from timm_ff.task import LocalTask

from _cli import assert_ok, run_train, weights


def _is_classifier(name: str) -> bool:
    return name.startswith('fusion.') or '.head.proj.' in name


@pytest.mark.parametrize('model_name', ['dtgff_cnn_s', 'dtgff_mlp', 'dtgff_resnet18'])
def test_linear_probe_trains_only_the_classifier(model_name):
    model = timm.create_model(model_name, num_classes=5)
    trainable = freeze_for_linear_probe(model)
    assert trainable and all(_is_classifier(n) for n in trainable)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(trainable)
    assert {f'units.{u}.head.proj.weight' for u in range(len(model.local_units()))} <= set(trainable)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    c, h, w = model.pretrained_cfg['input_size']
    size = (16, 16) if model.spatial else (h, w)  # small images; the MLPs need their own 28x28
    x, y = torch.randn(8, c, *size), torch.arange(8) % 5
    task = LocalTask(model.local_units(), create_objective('dtg'), 5, fusion=model.fusion)
    for _ in range(2):
        task.step(x, y, lambda loss: loss.backward())
        opt.step()
        opt.zero_grad()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any('.head.proj.' in k for k in changed)
    # backbone weights and BatchNorm statistics stay as they were (BN runs in eval mode while probing);
    # only the temperature history moves, as it does in any training step
    assert not [k for k in changed if not _is_classifier(k) and not k.endswith('t_history')], changed


@pytest.mark.parametrize('model_name,kwargs,match', [
    ('ff_cnn_s', {}, 'classic FF model'),
    ('dtgff_cnn_s', dict(head_proj='fixed'), 'fixed'),
    ('dtgff_cnn_s', dict(num_classes=0), 'num_classes > 0'),
])
def test_linear_probe_refuses_models_without_a_trainable_classifier(model_name, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        freeze_for_linear_probe(timm.create_model(model_name, **kwargs))


def _three_class_copy(tmp_path):
    """The bundled CIFAR-10 sample relabelled to 3 classes: 'another dataset' with another class count."""
    import datasets
    from timm_ff.data import SAMPLE_DIR
    out = tmp_path / 'three'
    out.mkdir()
    for split in ('train', 'test'):
        ds = datasets.load_dataset('parquet', data_files=str(next(SAMPLE_DIR.glob(f'{split}-*.parquet'))))['train']
        ds = ds.map(lambda row: {'label': row['label'] % 3})
        ds = ds.cast_column('label', datasets.ClassLabel(names=['a', 'b', 'c']))
        ds.to_parquet(str(out / f'{split}-00000-of-00001.parquet'))
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_pretrain_then_finetune_and_linear_probe(tmp_path):
    common = ('--model', 'dtgff_cnn_s', '--epochs', '1', '--max-train-steps', '2')
    pre = tmp_path / 'pretrain'
    assert_ok(run_train(*common, '--output', pre))
    w0 = weights(pre)

    # fine-tune end to end from the FF-pretrained weights: every backbone weight moves
    ft = tmp_path / 'finetune'
    assert_ok(run_train(*common, '--objective', 'bp', '--initial-checkpoint', pre, '--output', ft))
    w_ft = weights(ft)
    body = [k for k in w0 if k.endswith('conv.weight')]
    assert body and all(not torch.equal(w0[k], w_ft[k]) for k in body)

    # linear probe on another dataset with 3 classes: classifier re-initialised at the new size, the rest frozen
    probe = tmp_path / 'probe'
    proc = run_train(*common, '--linear-probe', '--initial-checkpoint', pre, '--data-dir', _three_class_copy(tmp_path),
                     '--dataset', '', '--output', probe)
    assert_ok(proc)
    assert 'linear probe: training' in proc.stdout
    w_probe = weights(probe)
    assert w_probe['units.0.head.proj.weight'].shape[0] == 3 and w0['units.0.head.proj.weight'].shape[0] == 10
    frozen = [k for k in w0 if not _is_classifier(k) and not k.endswith('t_history')]
    assert frozen and all(torch.equal(w0[k], w_probe[k]) for k in frozen), \
        [k for k in frozen if not torch.equal(w0[k], w_probe[k])]
    model = timm.create_model(f'local-dir:{probe}', pretrained=True)  # loads as a plain 3-class timm model
    assert model.num_classes == 3
