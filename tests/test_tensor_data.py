"""The batch-tensor data path: decoding and its cache, sharding, per-image seeded augmentation, resume."""
import pytest
import torch
from datasets import load_dataset

import timm_ff.data as data_mod
from timm_ff.data import SAMPLE_DIR, choose_pipeline, create_loaders, load_image_datasets
from timm_ff.errors import ConfigError, DataError
from timm_ff.data.tensor import BatchAugment, DecodedSplit, TensorLoader, decode_split, per_image_uniform

CIFAR_CONFIG = {'input_size': (3, 32, 32), 'interpolation': 'bilinear', 'mean': (0.4914, 0.4822, 0.4465),
                'std': (0.2470, 0.2435, 0.2616), 'crop_pct': 1.0, 'crop_mode': 'center'}
IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255))  # normalisation that keeps pixel values


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv('TIMM_FF_CACHE', str(tmp_path / 'decoded'))


@pytest.fixture(scope='module')
def sample():
    return load_image_datasets(data_dir=str(SAMPLE_DIR))


def _ids_split(n: int) -> DecodedSplit:
    """Images whose every pixel and label is the image's index: batches show which rows they hold."""
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 3, 4, 4).contiguous()
    return DecodedSplit(images, torch.arange(n))


def _rows(loader) -> list:
    return [y.tolist() for _, y in loader]


@pytest.mark.parametrize('n,batch,drop_last', [(40, 4, False), (42, 4, False), (42, 4, True)])
def test_two_processes_see_every_image_once_per_epoch(n, batch, drop_last):
    tf = BatchAugment((4, 4), **IDENTITY, train=False)
    loaders = [TensorLoader(_ids_split(n), batch, tf, shuffle=True, drop_last=drop_last, seed=3,
                            process_index=r, num_processes=2) for r in range(2)]
    per_rank = [_rows(ld) for ld in loaders]
    assert len(per_rank[0]) == len(per_rank[1]) == len(loaders[0])  # same step count on every rank
    seen = [i for rows in per_rank for batch_rows in rows for i in batch_rows if i >= 0]
    expected = (n // (2 * batch)) * 2 * batch if drop_last else n
    assert len(seen) == expected and len(set(seen)) == expected  # nobody sees an image twice
    if not drop_last:
        assert sorted(seen) == list(range(n))
    # the global batch of a step is the same set of images as one process with twice the batch
    one = TensorLoader(_ids_split(n), 2 * batch, tf, shuffle=True, drop_last=drop_last, seed=3)
    for step, rows in enumerate(_rows(one)):
        assert sorted(rows) == sorted(per_rank[0][step] + per_rank[1][step])


def test_epochs_reshuffle_and_seed_matters():
    tf = BatchAugment((4, 4), **IDENTITY, train=False)
    ld = TensorLoader(_ids_split(32), 8, tf, shuffle=True, drop_last=True, seed=0)
    e0 = _rows(ld)
    ld.set_epoch(1)
    assert _rows(ld) != e0
    ld.set_epoch(0)
    assert _rows(ld) == e0
    other = TensorLoader(_ids_split(32), 8, tf, shuffle=True, drop_last=True, seed=1)
    assert _rows(other) != e0


def test_augmentation_is_per_image_whatever_the_batching(sample):
    split = decode_split(sample.train, 'img', 'label')
    tf = BatchAugment((32, 32), **IDENTITY, train=True, aug='crop_flip', padding=4)
    idx = torch.arange(16)
    whole = tf(split.images[idx], idx, seed=0, epoch=2)
    halves = torch.cat([tf(split.images[idx[:8]], idx[:8], 0, 2), tf(split.images[idx[8:]], idx[8:], 0, 2)])
    assert torch.equal(whole, halves)
    assert not torch.equal(whole, tf(split.images[idx], idx, seed=0, epoch=3))  # a new epoch, new draws
    assert not torch.equal(whole, split.images[idx].float())  # it did augment


def test_crop_flip_is_a_crop_of_the_padded_image(sample):
    split = decode_split(sample.train, 'img', 'label')
    p = 4
    tf = BatchAugment((32, 32), **IDENTITY, train=True, aug='crop_flip', padding=p, hflip=0.5)
    idx = torch.arange(12)
    out = tf(split.images[idx], idx, seed=5, epoch=0)
    padded = torch.nn.functional.pad(split.images[idx].float(), (p, p, p, p))
    flips = 0
    for b in range(len(idx)):
        matches = [(dy, dx, fl) for dy in range(2 * p + 1) for dx in range(2 * p + 1) for fl in (0, 1)
                   if torch.equal(out[b], (lambda c: c.flip(2) if fl else c)(padded[b, :, dy:dy + 32, dx:dx + 32]))]
        assert matches, f'image {b} is not a (flipped) crop of its padded version'
        flips += matches[0][2]
    assert 0 < flips < len(idx)
    plain = BatchAugment((32, 32), **IDENTITY, train=True, aug='crop_flip', padding=0, hflip=0.0)
    assert torch.equal(plain(split.images[idx], idx), split.images[idx].float())


def test_rrc_and_eval_resize_shapes(sample):
    split = decode_split(sample.train, 'img', 'label')
    idx = torch.arange(6)
    rrc = BatchAugment((24, 24), **IDENTITY, train=True, aug='rrc', scale=(0.3, 1.0))
    out = rrc(split.images[idx], idx)
    assert out.shape == (6, 3, 24, 24) and 0 <= out.min() and out.max() <= 255
    ev = BatchAugment((28, 28), mean=(0.5,) * 3, std=(0.25,) * 3, train=False, channels_last=True)
    out = ev(split.images[idx], idx)
    assert out.shape == (6, 3, 28, 28) and out.is_contiguous(memory_format=torch.channels_last)


def test_per_image_uniform_is_uniform_and_keyed():
    idx = torch.arange(20000)
    u = per_image_uniform(idx, 0, 0, 0)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert torch.histc(u, 10, 0, 1).min() > 1800  # no empty or starved bins
    assert not torch.equal(u, per_image_uniform(idx, 0, 0, 1))
    assert not torch.equal(u, per_image_uniform(idx, 1, 0, 0))
    assert torch.equal(u[100:200], per_image_uniform(idx[100:200], 0, 0, 0))


def test_resume_mid_epoch_yields_the_same_batches(sample):
    train, _ = create_loaders(sample, data_config=CIFAR_CONFIG, batch_size=64, pipeline='tensor', seed=1)
    train.set_epoch(1)
    full = list(train)
    tail = list(train.skip_first_batches(5))
    assert len(tail) == len(full) - 5
    for (xa, ya), (xb, yb) in zip(full[5:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_cache_is_reused_and_a_corrupt_or_changed_split_is_rebuilt(sample, tmp_path):
    first = decode_split(sample.eval, 'img', 'label')
    assert 'decoded 500 images once' in first.cache_note
    again = decode_split(sample.eval, 'img', 'label')
    assert 'hash checked' in again.cache_note and torch.equal(first.images, again.images)
    (cached,) = (tmp_path / 'decoded').glob('*.safetensors')
    raw = bytearray(cached.read_bytes())
    raw[-100] ^= 0xFF  # one flipped pixel byte: only the content hash can notice
    cached.write_bytes(bytes(raw))
    fixed = decode_split(sample.eval, 'img', 'label')
    assert 'stale or corrupt' in fixed.cache_note and torch.equal(fixed.images, first.images)
    cached.write_bytes(b'not a safetensors file')
    assert 'unreadable' in decode_split(sample.eval, 'img', 'label').cache_note
    smaller = decode_split(sample.eval.select(range(100)), 'img', 'label')  # another fingerprint, another file
    assert 'decoded 100 images once' in smaller.cache_note and len(list((tmp_path / 'decoded').glob('*'))) == 2


def test_tensor_loader_matches_the_pil_eval_path(sample):
    _, ev_t = create_loaders(sample, data_config=CIFAR_CONFIG, batch_size=50, pipeline='tensor')
    _, ev_p = create_loaders(sample, data_config=CIFAR_CONFIG, batch_size=50, pipeline='pil')
    (xt, yt), (xp, yp) = next(iter(ev_t)), next(iter(ev_p))
    assert torch.equal(yt, yp) and torch.allclose(xt, xp, atol=1e-5)


def test_grayscale_tensor_loader(sample):
    train, ev = create_loaders(sample, data_config=dict(CIFAR_CONFIG, input_size=(3, 28, 28)), batch_size=8,
                               in_chans=1, pipeline='tensor')
    for ld in (train, ev):
        x, y = next(iter(ld))
        assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long


def test_pipeline_choice_and_errors(sample, monkeypatch):
    assert choose_pipeline(sample, 'auto')[0] == 'tensor'
    assert choose_pipeline(sample, 'pil')[0] == 'pil'
    with pytest.raises(ConfigError, match="unknown data pipeline 'fast'.*auto, pil, tensor"):
        choose_pipeline(sample, 'fast')
    monkeypatch.setattr('timm_ff.data.tensor.TENSOR_MEMORY_BUDGET', 1 << 20)
    with pytest.raises(DataError, match=r'need 4 MiB \(3x32x32 images.*allows 1 MiB.*--data-pipeline pil'):
        choose_pipeline(sample, 'tensor')
    name, why = choose_pipeline(sample, 'auto')
    assert name == 'pil' and 'budget' in why


def test_mixed_image_sizes(tmp_path, sample):
    ds = sample.train.select(range(20))
    mixed = ds.map(lambda ex, i: {'img': ex['img'].resize((24, 24)) if i % 2 else ex['img']}, with_indices=True)
    data = data_mod.ImageData(mixed, mixed, 'img', 'label', 10, None, 'mixed')
    with pytest.raises(DataError, match=r'images differ in size.*\(24, 24\).*\(32, 32\).*--data-pipeline pil'):
        choose_pipeline(data, 'tensor')
    assert choose_pipeline(data, 'auto')[0] == 'pil'


@pytest.mark.parametrize('kwargs,match', [
    (dict(aug='cutmix'), "unknown augmentation 'cutmix'; allowed: crop_flip, none, rrc"),
    (dict(crop_padding=-2), 'crop padding must be a non-negative integer.*-2'),
    (dict(pipeline='tensor', train_transform_kwargs={'re_prob': 0.25}),
     r"the tensor data path supports the transform arguments scale, hflip and color_jitter, not \['re_prob'\]"),
    (dict(pipeline='pil', aug='crop_flip', train_transform_kwargs={'re_prob': 0.25}),
     r"--aug crop_flip supports the transform arguments scale, hflip and color_jitter, not \['re_prob'\]"),
    (dict(pipeline='tensor', train_transform_kwargs={'color_jitter': -0.4}),
     r'color jitter strength must be a number >= 0 \(0: off\), got -0.4'),
    (dict(pipeline='pil', aug='crop_flip', train_transform_kwargs={'color_jitter': -0.4}),
     r'color jitter strength must be a number >= 0 \(0: off\), got -0.4'),
    (dict(pipeline='pil', aug='rrc', train_transform_kwargs={'color_jitter': 'strong'}),
     r"color jitter strength must be a number >= 0 \(0: off\), got 'strong'"),
])
def test_bad_augmentation_arguments(sample, kwargs, match):
    with pytest.raises((ConfigError, DataError), match=match):
        create_loaders(sample, data_config=CIFAR_CONFIG, batch_size=8, **kwargs)


@pytest.mark.parametrize('pipeline,aug', [('pil', 'crop_flip'), ('tensor', 'crop_flip'), ('pil', 'rrc'),
                                          ('tensor', 'rrc'), ('tensor', 'none')])
def test_color_jitter_is_applied_on_both_paths(sample, pipeline, aug):
    """color_jitter changes the training images on either path with any augmentation (the same crops and flips,
    other colours), the same way on every run with the same seed; 0 is off."""
    def first_batch(jitter):
        train, _ = create_loaders(sample, data_config=CIFAR_CONFIG, batch_size=16, pipeline=pipeline, aug=aug,
                                  seed=3, train_transform_kwargs={'color_jitter': jitter})
        return next(iter(train))

    (plain, y0), (jit, y1), (again, _) = first_batch(0.0), first_batch(0.4), first_batch(0.4)
    assert torch.equal(y0, y1) and plain.shape == jit.shape
    assert torch.equal(jit, again)
    changed = (jit - plain).abs().flatten(1).amax(1) > 0.05
    assert changed.sum() >= 12, changed  # nearly every image recoloured (a factor can land near 1)
    # the jitter keeps the pixels in range: normalised values of pixels in [0, 255]
    mean, std = (torch.tensor(CIFAR_CONFIG[k])[None, :, None, None] for k in ('mean', 'std'))
    pixels = jit * std + mean
    assert pixels.min() >= -1e-4 and pixels.max() <= 1 + 1e-4


def test_tensor_color_jitter_is_per_image_and_keeps_grey_images_grey(sample):
    split = decode_split(sample.train, 'img', 'label')
    tf = BatchAugment((32, 32), **IDENTITY, train=True, aug='none', hflip=0.0, color_jitter=0.4)
    idx = torch.arange(16)
    whole = tf(split.images[idx], idx, seed=0, epoch=1)
    halves = torch.cat([tf(split.images[idx[:8]], idx[:8], 0, 1), tf(split.images[idx[8:]], idx[8:], 0, 1)])
    assert torch.equal(whole, halves) and not torch.equal(whole, split.images[idx].float())
    assert not torch.equal(whole, tf(split.images[idx], idx, seed=0, epoch=2))  # a new epoch, new factors
    grey = BatchAugment((32, 32), mean=(0.0,), std=(1 / 255,), train=True, aug='none', hflip=0.0, color_jitter=0.4)
    out = grey(split.images[idx, :1], idx)
    assert out.shape == (16, 1, 32, 32) and 0 <= out.min() and out.max() <= 255
    with pytest.raises(DataError, match=r'color jitter strength must be a number >= 0 \(0: off\), got -1'):
        BatchAugment((32, 32), **IDENTITY, train=True, color_jitter=-1)


def test_crop_flip_on_the_pil_path(sample):
    train, _ = create_loaders(sample, data_config=CIFAR_CONFIG, batch_size=8, pipeline='pil', aug='crop_flip')
    x, _ = next(iter(train))
    assert x.shape == (8, 3, 32, 32)
    # zero padding shows up as rows/columns at the normalised value of black somewhere in the batch
    black = torch.tensor([-m / s for m, s in zip(CIFAR_CONFIG['mean'], CIFAR_CONFIG['std'])])[None, :, None]
    edge_rows = torch.cat([x[:, :, 0, :], x[:, :, -1, :], x[:, :, :, 0], x[:, :, :, -1]], 2)
    assert torch.isclose(edge_rows, black, atol=1e-4).all(1).any()
