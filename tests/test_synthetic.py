"""Tests for timm_ff.synthetic: teacher-student tasks, deterministic per seed, balanced, through the data path."""
import pytest
import torch

from timm_ff.data import create_loaders, load_image_datasets
from timm_ff.errors import DataError
from timm_ff.synthetic import PIXEL_CENTER, PIXEL_SCALE, _draw, _rows, synthetic_dataset, teacher_labels
from timm_ff.data.tensor import decode_split

SMALL = dict(num_classes=3, train_per_class=6, test_per_class=4)


def _split(kind, params, split):
    from timm_ff.synthetic import _check
    return list(_rows(kind, _check(kind, params), split))


@pytest.mark.timeout(300)
def test_same_seed_same_task_other_seed_other_task():
    a, b = _split('image', dict(SMALL, seed=3), 'train'), _split('image', dict(SMALL, seed=3), 'train')
    assert [r['label'] for r in a] == [r['label'] for r in b]
    assert all((ra['img'] == rb['img']).all() for ra, rb in zip(a, b))
    c = _split('image', dict(SMALL, seed=4), 'train')
    assert not all((ra['img'] == rc['img']).all() for ra, rc in zip(a, c))
    test = _split('image', dict(SMALL, seed=3), 'test')
    assert not any((ra['img'] == rt['img']).all() for ra in a for rt in test)  # the splits draw different inputs


@pytest.mark.timeout(300)
@pytest.mark.parametrize('kind', ['image', 'vector'])
def test_teacher_labels_are_balanced_and_depend_on_the_input(kind):
    from timm_ff.synthetic import _check
    params = _check(kind, dict(num_classes=8, seed=1))
    _, label = teacher_labels(kind, params)
    x = _draw(kind, 4096, torch.Generator().manual_seed(123), params)
    freq = torch.bincount(label(x), minlength=8).float() / len(x)
    assert freq.min() > 0.5 / 8 and freq.max() < 1.5 / 8, freq  # calibrated: chance is about 1/K
    assert torch.equal(label(x[:256]), label(x[:256].clone()))  # a function of the input alone


@pytest.mark.timeout(300)
def test_dataset_columns_balance_and_label_noise():
    dd = synthetic_dataset('image', **dict(SMALL, train_per_class=40, label_noise=0.3, seed=2))
    train, test = dd['train'], dd['test']
    assert (len(train), len(test)) == (120, 12)
    assert train.features['label'].names == ['class_0', 'class_1', 'class_2']
    assert torch.bincount(torch.tensor(train['teacher_label'])).tolist() == [40, 40, 40]
    assert torch.bincount(torch.tensor(test['label'])).tolist() == [4, 4, 4]
    flipped = sum(a != b for a, b in zip(train['label'], train['teacher_label']))
    assert 15 <= flipped <= 60  # about 30% of 120 replaced by another class
    assert test['label'] == test['teacher_label']  # test labels stay clean
    assert train[0]['img'].size == (32, 32) and train[0]['img'].mode == 'RGB'
    again = synthetic_dataset('image', **dict(SMALL, train_per_class=40, label_noise=0.3, seed=2))
    assert again['train']._fingerprint == train._fingerprint  # same parameters: the cached task


@pytest.mark.timeout(300)
def test_vector_task_through_the_data_path_is_lossless():
    data = load_image_datasets('synthetic_vector', dataset_kwargs=dict(SMALL, vector_dim=64, seed=5))
    assert data.num_classes == 3 and data.label_column == 'label' and 'vector_dim=64' in data.source
    decoded = decode_split(data.train, data.image_column, data.label_column, 'L', cache=False)
    assert decoded.images.shape == (18, 1, 8, 8)
    rows = _split('vector', dict(SMALL, vector_dim=64, seed=5), 'train')
    assert torch.equal(decoded.images[:, 0], torch.stack([torch.from_numpy(r['img']) for r in rows]))
    # what the student sees, un-normalised, is exactly what the teacher labelled
    from timm_ff.synthetic import _check
    _, label = teacher_labels('vector', _check('vector', dict(SMALL, vector_dim=64, seed=5)))
    assert torch.equal(label(decoded.images), decoded.labels)
    config = {'input_size': (1, 8, 8), 'mean': (PIXEL_CENTER / 255,), 'std': (PIXEL_SCALE / 255,)}
    train, _ = create_loaders(data, data_config=config, batch_size=6, in_chans=1, pipeline='tensor', aug='none',
                              train_transform_kwargs={'hflip': 0.0})
    x, y = next(iter(train))
    assert x.shape == (6, 1, 8, 8) and y.max() < 3


@pytest.mark.parametrize('kwargs,match', [
    ({'classes': 4}, r"unknown synthetic dataset kwarg 'classes'; allowed: num_classes"),
    ({'num_classes': 1}, r'num_classes must be an integer >= 2, got 1'),
    ({'label_noise': 1.0}, r'label_noise must be a probability in \[0, 1\), got 1.0'),
    ({'teacher_depth': 6}, r'teacher_depth must be at most 5.*got 6'),
])
def test_bad_parameters(kwargs, match):
    with pytest.raises(DataError, match=match):
        synthetic_dataset('image', **kwargs)


def test_bad_vector_dim_and_routes():
    with pytest.raises(DataError, match=r'vector_dim must be a perfect square.*got 50; e.g. 49 or 64'):
        load_image_datasets('synthetic_vector', dataset_kwargs={'vector_dim': 50})
    with pytest.raises(DataError, match=r"only apply to the generated datasets synthetic, synthetic_vector, not to 'cifar10'"):
        load_image_datasets('cifar10', dataset_kwargs={'num_classes': 4})
    with pytest.raises(DataError, match=r"dataset 'synthetic' is generated.*drop data_dir"):
        load_image_datasets('synthetic', data_dir='somewhere')
