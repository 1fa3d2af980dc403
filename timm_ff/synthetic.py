"""Synthetic teacher-student classification tasks: K classes labelled by a fixed random teacher network.

The reference paper's title finding is that such tasks overstate how well Forward-Forward scales with
the number of classes K; this module makes them so that the same K-sweep can be run on them and on
real images (``benchmarks/bench_ksweep.py``).

A task is a ``datasets.DatasetDict`` (``train`` / ``test``) with columns ``img`` (a lossless PNG
``datasets.Image``), ``label`` (the training label, with label noise on the train split) and
``teacher_label`` (the teacher's clean label). It goes through the normal data path:
``train_ff.py --dataset synthetic --dataset-kwargs '{"num_classes": 16}'``.

* ``image`` tasks (dataset ``synthetic``): 3x32x32 inputs, so every backbone applies. Each pixel is
  ``clip(round(128 + 32 z), 0, 255)``, where ``z`` is i.i.d. ``N(0, 1)`` noise on a ``latent_size`` grid
  upsampled bilinearly to 32x32 and rescaled to unit variance (low-frequency images, which a small CNN
  learns from a few hundred examples per class; ``latent_size=32`` gives i.i.d. pixels); the teacher is a random CNN
  (``teacher_depth`` 3x3 stride-2 convolutions of ``teacher_width`` channels with ReLU, global average
  pooling, a linear map to K logits) applied to ``(pixel - 128) / 32``, so it labels exactly the
  quantised values the student sees.
* ``vector`` tasks (dataset ``synthetic_vector``): ``vector_dim`` i.i.d. values (a perfect square,
  default 784), stored as one grayscale ``side x side`` image so they use the same data path; the
  teacher is a random MLP (``teacher_depth`` ReLU layers of ``teacher_width``, then K logits) on the
  flattened vector. Students flatten it too (``dtgff_mlp``).

Labels are the argmax of the teacher's logits after each logit is standardised and given a bias fitted
on a calibration pool so that every class wins about 1/K of the inputs; each split then keeps the first
``train_per_class`` / ``test_per_class`` inputs of every class in draw order, so the classes are exactly
balanced and chance is 1/K. With ``label_noise`` p, each training label is replaced, with probability p,
by a uniformly drawn *other* class; the test labels are the teacher's. Everything is a pure function of
the parameters (the teacher runs in float64 on the CPU), and the dataset's fingerprint is derived from
them, so a task is generated once and cached by ``datasets`` (and its decoded form by
:mod:`timm_ff.data.tensor`). Crop or flip augmentation changes what the teacher would say: train these
tasks with ``--aug none --hflip 0``.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from typing import Callable, Iterator

import datasets
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import DataError, unknown_choice

__all__ = ['SYNTHETIC_KINDS', 'SYNTHETIC_DEFAULTS', 'synthetic_dataset', 'build_teacher', 'teacher_labels', 'describe',
           'fingerprint']

SYNTHETIC_KINDS = ('image', 'vector')
SYNTHETIC_DEFAULTS = dict(
    num_classes=10,  # K
    train_per_class=500,  # training inputs per class (exactly balanced)
    test_per_class=100,  # test inputs per class
    teacher_depth=2,  # hidden layers of the teacher (image: stride-2 convs, at most 5; vector: linear layers)
    teacher_width=32,  # channels (image) or units (vector) of each hidden teacher layer
    label_noise=0.0,  # probability that a training label is replaced by another class (test labels stay clean)
    seed=0,  # teacher weights, calibration pool and every split's inputs
    latent_size=8,  # image tasks: side of the i.i.d. noise grid, upsampled bilinearly to 32x32 (32: i.i.d. pixels)
    vector_dim=784,  # vector tasks: input size, a perfect square (stored as a side x side grayscale image)
)
IMAGE_SHAPE = (3, 32, 32)
PIXEL_CENTER, PIXEL_SCALE = 128.0, 32.0  # pixel = clip(round(128 + 32 z)): +-4 sigma fits in [0, 255]
_VERSION = '1'  # bump when the generator's output changes, so cached tasks are regenerated
_CHUNK = 4096  # at most this many inputs drawn (and labelled) at a time
_MAX_DRAWS = 200  # give up when a split needs more than this many times its size in draws
_SPLIT_STREAM = {'calibration': 1, 'train': 2, 'test': 3, 'noise': 4}


def _check(kind: str, params: dict) -> dict:
    """Validate the parameters; every error names the bad value and what is allowed."""
    if kind not in SYNTHETIC_KINDS:
        raise unknown_choice('synthetic input kind', kind, SYNTHETIC_KINDS)
    unknown = [k for k in params if k not in SYNTHETIC_DEFAULTS]
    if unknown:
        raise DataError(f"unknown synthetic dataset kwarg {unknown[0]!r}; allowed: {', '.join(SYNTHETIC_DEFAULTS)}")
    p = dict(SYNTHETIC_DEFAULTS, **params)
    for key, low in (('num_classes', 2), ('train_per_class', 1), ('test_per_class', 1), ('teacher_depth', 1),
                     ('teacher_width', 1), ('seed', 0), ('latent_size', 1), ('vector_dim', 1)):
        value = p[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise DataError(f'synthetic dataset kwarg {key} must be an integer >= {low}, got {value!r}')
    if kind == 'image' and p['teacher_depth'] > 5:
        raise DataError(f"synthetic dataset kwarg teacher_depth must be at most 5 for 32x32 images (five stride-2 "
                        f"convolutions reach 1x1), got {p['teacher_depth']!r}")
    noise = p['label_noise']
    if not isinstance(noise, (int, float)) or isinstance(noise, bool) or not 0 <= noise < 1:
        raise DataError(f'synthetic dataset kwarg label_noise must be a probability in [0, 1), got {noise!r}')
    p['label_noise'] = float(noise)
    side = math.isqrt(p['vector_dim'])
    if kind == 'vector' and side * side != p['vector_dim']:
        raise DataError(f"synthetic dataset kwarg vector_dim must be a perfect square (it is stored as a side x side "
                        f"image), got {p['vector_dim']!r}; e.g. {side * side} or {(side + 1) ** 2}")
    if kind == 'image' and p['latent_size'] > IMAGE_SHAPE[-1]:
        raise DataError(f"synthetic dataset kwarg latent_size must be at most {IMAGE_SHAPE[-1]} (the image side), "
                        f"got {p['latent_size']!r}")
    p.pop('vector_dim' if kind == 'image' else 'latent_size')
    return p


def build_teacher(kind: str, num_classes: int, teacher_depth: int, teacher_width: int, seed: int,
                  vector_dim: int = 784) -> nn.Module:
    """The random teacher network (float64, eval mode), a pure function of its arguments."""
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    if kind == 'image':
        cin = IMAGE_SHAPE[0]
        for _ in range(teacher_depth):
            layers += [nn.Conv2d(cin, teacher_width, 3, 2, 1, bias=False), nn.ReLU()]
            cin = teacher_width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(1)]
    else:
        cin = vector_dim
        layers.append(nn.Flatten(1))
        for _ in range(teacher_depth):
            layers += [nn.Linear(cin, teacher_width, bias=False), nn.ReLU()]
            cin = teacher_width
    layers.append(nn.Linear(cin, num_classes, bias=False))
    teacher = nn.Sequential(*layers).double().eval()
    with torch.no_grad():
        for m in teacher.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                gain = 1.0 if m is layers[-1] else 2.0  # He init keeps the ReLU activations' scale with depth
                m.weight.copy_(torch.randn(m.weight.shape, generator=g, dtype=torch.float64) * math.sqrt(gain / fan_in))
    teacher.requires_grad_(False)
    return teacher


def _draw(kind: str, n: int, g: torch.Generator, params: dict) -> torch.Tensor:
    """``n`` uint8 inputs: (n, 3, 32, 32) images or (n, 1, side, side) stored vectors."""
    if kind == 'image':
        s = params['latent_size']
        z = torch.randn((n, IMAGE_SHAPE[0], s, s), generator=g, dtype=torch.float64)
        if s != IMAGE_SHAPE[-1]:  # low-frequency images: unit variance again after the smoothing upsample
            z = F.interpolate(z, size=IMAGE_SHAPE[1:], mode='bilinear', align_corners=False)
            z = z / _upsampled_std(s)
    else:
        side = math.isqrt(params['vector_dim'])
        z = torch.randn((n, 1, side, side), generator=g, dtype=torch.float64)
    return (PIXEL_CENTER + PIXEL_SCALE * z).round().clamp(0, 255).to(torch.uint8)


@functools.lru_cache(maxsize=8)
def _upsampled_std(latent_size: int) -> float:
    """Average per-pixel std of unit-variance noise upsampled from ``latent_size`` to 32 (exact, from the weights)."""
    eye = torch.eye(latent_size * latent_size, dtype=torch.float64).reshape(-1, 1, latent_size, latent_size)
    weights = F.interpolate(eye, size=IMAGE_SHAPE[1:], mode='bilinear', align_corners=False)  # one map per latent
    return float(weights.pow(2).sum(0).mean().sqrt())


def _logits(teacher: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return teacher((pixels.double() - PIXEL_CENTER) / PIXEL_SCALE)


def _calibrate(logits: torch.Tensor, steps: int = 300) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class (mean, std, bias) so that argmax((z - mean) / std + bias) picks each class ~1/K of the time."""
    mean, std = logits.mean(0), logits.std(0).clamp_min(1e-12)
    z = (logits - mean) / std
    k = z.shape[1]
    bias = torch.zeros(k, dtype=torch.float64)
    for _ in range(steps):  # multiplicative-weights style: raise rare classes, lower common ones
        freq = torch.bincount((z + bias).argmax(1), minlength=k).double() / len(z)
        bias -= 0.1 * torch.log((freq + 0.1 / k) / (1.0 / k + 0.1 / k))
    return mean, std, bias


def teacher_labels(kind: str, params: dict) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """The teacher and a function mapping uint8 inputs to its calibrated labels."""
    return _teacher_labels(kind, json.dumps(params, sort_keys=True))


@functools.lru_cache(maxsize=4)  # the train and test splits share one teacher and calibration
def _teacher_labels(kind: str, params_json: str):
    params = json.loads(params_json)
    teacher = build_teacher(kind, params['num_classes'], params['teacher_depth'], params['teacher_width'],
                            params['seed'], params.get('vector_dim', 784))
    g = torch.Generator().manual_seed(_stream(params['seed'], 'calibration'))
    pool = _draw(kind, max(4096, 64 * params['num_classes']), g, params)
    mean, std, bias = _calibrate(_logits(teacher, pool))

    def label(pixels: torch.Tensor) -> torch.Tensor:
        return ((_logits(teacher, pixels) - mean) / std + bias).argmax(1)
    return teacher, label


def _stream(seed: int, what: str) -> int:
    return seed * 16 + _SPLIT_STREAM[what]


def _balanced_split(kind: str, params: dict, split: str, label) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``<split>_per_class`` inputs of every class, in draw order."""
    k, per_class = params['num_classes'], params[f'{split}_per_class']
    g = torch.Generator().manual_seed(_stream(params['seed'], split))
    kept_x, kept_y = [], []
    counts = torch.zeros(k, dtype=torch.long)
    drawn = 0
    chunk = min(_CHUNK, max(256, 2 * k * per_class))  # a function of the parameters, so the draws are too
    while int(counts.min()) < per_class:
        if drawn > _MAX_DRAWS * k * per_class:
            rare = int(counts.argmin())
            raise DataError(f'the teacher labels class {rare} too rarely ({int(counts[rare])} of {per_class} after '
                            f'{drawn} draws); pick another seed, teacher_depth or teacher_width')
        x = _draw(kind, chunk, g, params)
        y = label(x)
        drawn += chunk
        keep = torch.zeros(len(y), dtype=torch.bool)
        for i, c in enumerate(y.tolist()):  # first come, first kept
            if counts[c] < per_class:
                counts[c] += 1
                keep[i] = True
        kept_x.append(x[keep])
        kept_y.append(y[keep])
    return torch.cat(kept_x), torch.cat(kept_y)


def _noisy(labels: torch.Tensor, noise: float, num_classes: int, seed: int) -> torch.Tensor:
    """Replace each label, with probability ``noise``, by a uniformly drawn other class."""
    if noise == 0:
        return labels.clone()
    g = torch.Generator().manual_seed(_stream(seed, 'noise'))
    flip = torch.rand(len(labels), generator=g, dtype=torch.float64) < noise
    shift = torch.randint(1, num_classes, (len(labels),), generator=g)
    return torch.where(flip, (labels + shift) % num_classes, labels)


def _rows(kind: str, params: dict, split: str) -> Iterator[dict]:
    """Generator of one split's rows (what ``Dataset.from_generator`` calls on a cache miss)."""
    _, label = teacher_labels(kind, params)
    x, y = _balanced_split(kind, params, split, label)
    noisy = _noisy(y, params['label_noise'], params['num_classes'], params['seed']) if split == 'train' else y
    images = x.permute(0, 2, 3, 1).numpy() if kind == 'image' else x[:, 0].numpy()
    for img, lab, clean in zip(images, noisy.tolist(), y.tolist()):
        yield {'img': np.ascontiguousarray(img), 'label': lab, 'teacher_label': clean}


def fingerprint(kind: str, params: dict, split: str) -> str:
    """The split's ``datasets`` fingerprint: a hash of the generator version, the kind, the parameters and the split."""
    key = json.dumps(dict(version=_VERSION, kind=kind, split=split, **params), sort_keys=True)
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def synthetic_dataset(kind: str = 'image', **params) -> datasets.DatasetDict:
    """Generate (or load from the ``datasets`` cache) a teacher-student task.

    Args:
        kind: 'image' (3x32x32 inputs, CNN teacher) or 'vector' (``vector_dim`` inputs, MLP teacher).
        **params: Any of :data:`SYNTHETIC_DEFAULTS` (K, per-class counts, teacher depth/width, label
            noise, seed, vector size).

    Returns:
        ``DatasetDict`` with ``train`` and ``test`` splits: columns ``img``, ``label``, ``teacher_label``.

    Raises:
        DataError: For an unknown parameter or a value out of range (the message names it).
    """
    p = _check(kind, params)
    names = [f'class_{c}' for c in range(p['num_classes'])]
    features = datasets.Features({'img': datasets.Image(), 'label': datasets.ClassLabel(names=names),
                                  'teacher_label': datasets.ClassLabel(names=names)})
    return datasets.DatasetDict({
        split: datasets.Dataset.from_generator(_rows, features=features, gen_kwargs=dict(kind=kind, params=p, split=split),
                                               split=datasets.NamedSplit(split), fingerprint=fingerprint(kind, p, split))
        for split in ('train', 'test')})


def describe(kind: str, params: dict) -> str:
    """One line naming the task and its parameters (for the CLI's data line and results files)."""
    p = _check(kind, params)
    shape = '3x32x32 images' if kind == 'image' else f"{p['vector_dim']}-d vectors"
    return ('synthetic teacher-student task (' + shape + ', ' +
            ', '.join(f'{k}={v}' for k, v in p.items()) + ')')
