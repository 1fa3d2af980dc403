"""The dataset registry: the named datasets timm_ff knows, where each lives and how its columns are called.

A :class:`DatasetSpec` gives a dataset's Hub id, image and label columns, default splits and input
channels; the generated datasets (``synthetic``, ``synthetic_vector``) have a ``builder`` instead of
a Hub id. Nothing here loads data.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import datasets

from ..errors import DataError
from ..synthetic import synthetic_dataset

__all__ = ['DatasetSpec', 'GENERATED', 'list_datasets', 'get_dataset_spec']


@dataclass(frozen=True)
class DatasetSpec:
    """Where a named dataset lives on the Hub and how its columns and splits are called."""

    hub_id: str
    image_column: str
    label_columns: tuple[str, ...]
    train_split: str = 'train'
    eval_split: str = 'test'
    in_chans: int = 3
    description: str = ''
    config: str | None = None
    builder: Callable[..., datasets.DatasetDict] | None = None
    """Generates the dataset locally from ``dataset_kwargs`` (no Hub id): the synthetic tasks."""


_REGISTRY: dict[str, DatasetSpec] = {
    'cifar10': DatasetSpec('uoft-cs/cifar10', 'img', ('label',), description='CIFAR-10, 10 classes, 32x32'),
    'cifar100': DatasetSpec('uoft-cs/cifar100', 'img', ('fine_label', 'coarse_label'),
                            description='CIFAR-100, 100 fine / 20 coarse classes, 32x32'),
    'imagenet100': DatasetSpec('clane9/imagenet-100', 'image', ('label',), eval_split='validation',
                               description='ImageNet-100 (CMC class list), full resolution'),
    'mnist': DatasetSpec('ylecun/mnist', 'image', ('label',), in_chans=1,
                         description='MNIST digits, 10 classes, 28x28 grayscale'),
    'fashion_mnist': DatasetSpec('zalando-datasets/fashion_mnist', 'image', ('label',), in_chans=1,
                                 description='Fashion-MNIST, 10 classes, 28x28 grayscale'),
    'svhn': DatasetSpec('ufldl-stanford/svhn', 'image', ('label',), config='cropped_digits',
                        description='SVHN cropped digits, 10 classes, 32x32'),
    'stl10': DatasetSpec('tanganke/stl10', 'image', ('label',), description='STL-10, 10 classes, 96x96'),
    'tiny_imagenet': DatasetSpec('zh-plus/tiny-imagenet', 'image', ('label',), eval_split='valid',
                                 description='Tiny ImageNet, 200 classes, 64x64'),
    'synthetic': DatasetSpec('', 'img', ('label', 'teacher_label'), builder=functools.partial(synthetic_dataset, 'image'),
                             description='teacher-student task, 3x32x32 inputs labelled by a random CNN '
                                         '(timm_ff.synthetic; parameters via dataset_kwargs)'),
    'synthetic_vector': DatasetSpec('', 'img', ('label', 'teacher_label'), in_chans=1,
                                    builder=functools.partial(synthetic_dataset, 'vector'),
                                    description='teacher-student task, vector inputs labelled by a random MLP '
                                                '(timm_ff.synthetic; parameters via dataset_kwargs)'),
}
GENERATED = tuple(n for n, s in _REGISTRY.items() if s.builder is not None)


def list_datasets() -> list[str]:
    """Return the registered dataset names, sorted."""
    return sorted(_REGISTRY)


def get_dataset_spec(name: str) -> DatasetSpec:
    """Return the :class:`DatasetSpec` registered under ``name``.

    Raises:
        DataError: If ``name`` is not registered; the message lists the allowed names.
    """
    if name not in _REGISTRY:
        raise DataError(f"unknown dataset {name!r}; allowed: {', '.join(list_datasets())} "
                        "(or pass --data-dir with a local parquet or image folder)")
    return _REGISTRY[name]
