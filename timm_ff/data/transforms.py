"""Per-image transforms of the PIL data path, fitted to the model's channels and seeded per sample.

:func:`make_transform` builds timm's transform for the model's data config with mean/std fitted to
1 or 3 channels; :class:`_BatchTransform` applies it inside ``Dataset.with_transform`` with each
sample's random draws seeded by ``(seed, epoch, row index)``, so a resumed run sees the same images;
:func:`set_augmentation_epoch` moves it to the next epoch.
"""
from __future__ import annotations

import inspect
import random
from dataclasses import dataclass
from typing import Any

import timm.data
import torch
from torch.utils.data import DataLoader

from ..errors import DataError

__all__ = ['make_transform', 'set_augmentation_epoch']


def _fit_channels(values: Any, in_chans: int, key: str) -> tuple[float, ...]:
    """Make a per-channel ``mean``/``std`` tuple match ``in_chans``."""
    values = tuple(float(v) for v in (values if isinstance(values, (tuple, list)) else (values,)))
    if len(values) == in_chans:
        return values
    if len(values) == 1:
        return values * in_chans
    if in_chans == 1:
        return (sum(values) / len(values),)
    raise DataError(f"data_config {key} {values} has {len(values)} channels, model has in_chans={in_chans}")


_TRANSFORM_ARGS = frozenset(inspect.signature(timm.data.create_transform).parameters)


def make_transform(data_config: dict, is_training: bool, in_chans: int = 3, **kwargs: Any):
    """Build a timm transform for ``data_config`` with mean/std fitted to ``in_chans`` channels.

    Args:
        data_config: Output of ``timm.data.resolve_data_config(model=model)``.
        is_training: Training (augmenting) transform if True, else the eval transform.
        in_chans: Number of image channels the model takes (1 or 3).
        **kwargs: Extra ``timm.data.create_transform`` arguments (e.g. ``scale``, ``hflip``).

    Returns:
        A callable mapping a PIL image to a float tensor of shape ``(in_chans, H, W)``.
    """
    if in_chans not in (1, 3):
        raise DataError(f"in_chans must be 1 (grayscale) or 3 (RGB), got {in_chans!r}")
    bad = sorted(set(data_config) - _TRANSFORM_ARGS) + sorted(set(kwargs) - _TRANSFORM_ARGS)
    if bad or 'is_training' in kwargs:
        raise DataError(f"unknown transform argument(s) {bad or ['is_training']}; allowed: "
                        f"{', '.join(sorted(_TRANSFORM_ARGS - {'is_training'}))}")
    cfg = dict(data_config)
    for key in ('mean', 'std'):
        if key in cfg:
            cfg[key] = _fit_channels(cfg[key], in_chans, key)
    size = cfg.get('input_size')
    if isinstance(size, (tuple, list)) and len(size) == 3:
        cfg['input_size'] = (in_chans, *size[1:])
    return timm.data.create_transform(**cfg, is_training=is_training, **kwargs)


_INDEX_COLUMN = '__row_index__'


@dataclass
class _BatchTransform:
    """Picklable ``Dataset.with_transform`` function: PIL images -> tensors, labels passed through.

    With ``seed`` set, each sample's random augmentation is drawn from generators seeded by
    ``(seed, epoch, row index)`` instead of the process-global ones. Augmentation then does not
    depend on worker count or on how far the loader prefetched, which is what makes a resumed run
    (``accelerator.skip_first_batches``) see exactly the images an uninterrupted run saw.
    """

    transform: Any
    image_column: str
    label_column: str
    mode: str
    seed: int | None = None
    epoch: int = 0

    def _one(self, img: Any, index: int | None) -> torch.Tensor:
        img = img.convert(self.mode)
        if self.seed is None or index is None:
            return self.transform(img)
        sample_seed = hash((self.seed, self.epoch, int(index))) & 0x7FFF_FFFF
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            random.seed(sample_seed)
            torch.manual_seed(sample_seed)
            out = self.transform(img)
        random.setstate(py_state)
        return out

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        indices = batch.get(_INDEX_COLUMN) or [None] * len(batch[self.image_column])
        images = [self._one(img, i) for img, i in zip(batch[self.image_column], indices)]
        return {'pixel_values': images, 'label': batch[self.label_column]}


def set_augmentation_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell the training loader's transform which epoch it is in (seeds per-sample augmentation)."""
    tf = getattr(loader, 'batch_transform', None)
    if tf is not None:
        tf.epoch = epoch
