"""Train and eval loaders for either data path: DataLoaders with timm transforms, or batch-tensor loaders.

:func:`create_loaders` builds the PIL path here (a ``DataLoader`` over ``Dataset.with_transform``,
seeded shuffling and per-sample augmentation) and hands ``pipeline='tensor'`` to
:func:`~timm_ff.data.tensor.create_tensor_loaders`. Both yield ``(images float32 [B, C, H, W],
labels int64 [B])``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from ..errors import DataError, unknown_choice
from .splits import ImageData
from .tensor import TensorLoader, check_augmentation, check_color_jitter, create_tensor_loaders
from .transforms import _INDEX_COLUMN, _BatchTransform, _fit_channels, make_transform

__all__ = ['create_loaders', 'batches_per_process']


def _collate(rows: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack rows into ``(images[B, C, H, W] float32, labels[B] int64)``."""
    images = torch.stack([r['pixel_values'] for r in rows]).float()
    labels = torch.tensor([int(r['label']) for r in rows], dtype=torch.long)
    return images, labels


def create_loaders(data: ImageData, *, data_config: dict, batch_size: int, eval_batch_size: int | None = None,
                   num_workers: int = 0, in_chans: int = 3, train_transform_kwargs: dict | None = None,
                   seed: int = 0, drop_last: bool = True, pipeline: str = 'pil', aug: str = 'rrc',
                   crop_padding: int = 4, device: Any = None, process_index: int = 0, num_processes: int = 1,
                   channels_last: bool = False) -> tuple[Any, Any]:
    """Build the train and eval loaders: batch-tensor loaders or DataLoaders with timm transforms.

    Args:
        data: Splits from :func:`load_image_datasets`.
        data_config: Output of ``timm.data.resolve_data_config(model=model)``.
        batch_size: Training batch size.
        eval_batch_size: Eval batch size (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        in_chans: Model input channels; images are converted to 'RGB' (3) or 'L' (1).
        train_transform_kwargs: Extra ``timm.data.create_transform`` arguments for training only. ``scale``,
            ``hflip`` and ``color_jitter`` (a strength >= 0, default 0: off) work with every ``aug`` on both
            paths; the others only with ``pipeline='pil'`` and ``aug`` 'rrc' or 'none' (timm's transform).
        seed: Seed of the generator that shuffles the training set and of per-sample augmentation.
        drop_last: Drop the last incomplete training batch.
        pipeline: 'pil' (DataLoader, per-image transforms) or 'tensor' (see :func:`create_tensor_loaders`);
            resolve 'auto' with :func:`choose_pipeline` first.
        aug: Training augmentation: 'rrc' (timm RandomResizedCrop), 'crop_flip' (random crop of the
            zero-padded image) or 'none'; each with a horizontal flip (``hflip`` in
            ``train_transform_kwargs``, default 0.5).
        crop_padding: Zero padding in pixels for 'crop_flip'.
        device: Tensor path: device holding the images (the training device).
        process_index: Tensor path: this process's rank (DataLoaders are sharded by Accelerate instead).
        num_processes: Tensor path: processes sharing the data.
        channels_last: Tensor path: channels_last batches.

    Returns:
        ``(train_loader, eval_loader)``, each yielding ``(images float32 [B, C, H, W], labels int64 [B])``.
    """
    if pipeline not in ('pil', 'tensor'):
        raise unknown_choice('data pipeline (resolve auto with choose_pipeline)', pipeline, ('pil', 'tensor'))
    check_augmentation(aug, crop_padding)
    eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
    for key, value in (('batch_size', batch_size), ('eval_batch_size', eval_batch_size)):
        if not isinstance(value, int) or value < 1:
            raise DataError(f"{key} must be a positive integer, got {value!r}")
    if num_workers < 0:
        raise DataError(f"num_workers must be >= 0, got {num_workers!r}")
    if drop_last and len(data.train) < batch_size:
        raise DataError(f"train split has {len(data.train)} rows, fewer than batch_size {batch_size}, so "
                        "no full batch exists; lower the batch size or pass drop_last=False")
    tf_kwargs = dict(train_transform_kwargs or {})
    jitter = check_color_jitter(tf_kwargs.get('color_jitter'))
    tf_kwargs['color_jitter'] = jitter or None  # off unless given (timm's own default would be 0.4)
    if pipeline == 'tensor' or aug == 'crop_flip':
        extra = sorted(k for k, v in tf_kwargs.items() if k not in ('scale', 'hflip', 'color_jitter') and v is not None)
        if extra:
            where = 'the tensor data path' if pipeline == 'tensor' else "--aug crop_flip"
            raise DataError(f"{where} supports the transform arguments scale, hflip and color_jitter, not {extra}; "
                            "use --data-pipeline pil with --aug rrc or none for timm's full transform set")
    if pipeline == 'tensor':
        return create_tensor_loaders(
            data, data_config=data_config, batch_size=batch_size, eval_batch_size=eval_batch_size, in_chans=in_chans,
            seed=seed, drop_last=drop_last, aug=aug, crop_padding=crop_padding, hflip=tf_kwargs.get('hflip', 0.5),
            scale=tuple(tf_kwargs.get('scale', (0.08, 1.0))), color_jitter=jitter, device=device,
            process_index=process_index, num_processes=num_processes, channels_last=channels_last)
    mode = 'L' if in_chans == 1 else 'RGB'
    if aug == 'crop_flip':  # timm has no padded random crop: torchvision's, as the CIFAR papers use
        from torchvision import transforms as T
        size = tuple(data_config['input_size'][-2:])
        jitter_tf = [T.ColorJitter(jitter, jitter, jitter)] if jitter else []  # as timm's float color_jitter
        train_tf = T.Compose([T.Resize(size), T.RandomCrop(size, padding=crop_padding),
                              T.RandomHorizontalFlip(tf_kwargs.get('hflip', 0.5)), *jitter_tf, T.ToTensor(),
                              T.Normalize(_fit_channels(data_config.get('mean', (0.5,)), in_chans, 'mean'),
                                          _fit_channels(data_config.get('std', (0.5,)), in_chans, 'std'))])
    else:
        if aug == 'none':
            tf_kwargs.update(scale=(1.0, 1.0), ratio=(1.0, 1.0))
        train_tf = make_transform(data_config, True, in_chans, **tf_kwargs)
    eval_tf = make_transform(data_config, False, in_chans)
    cols = [data.image_column, data.label_column]
    train_split = data.train
    if _INDEX_COLUMN not in train_split.column_names:
        train_split = train_split.add_column(_INDEX_COLUMN, list(range(len(train_split))))
    train_tf_fn = _BatchTransform(train_tf, *cols, mode, seed=seed)
    train_ds = train_split.with_transform(train_tf_fn, columns=cols + [_INDEX_COLUMN])
    eval_ds = data.eval.with_transform(_BatchTransform(eval_tf, *cols, mode), columns=cols)
    # workers are not persistent: each epoch's workers must see the transform's new epoch
    common = dict(num_workers=num_workers, collate_fn=_collate, pin_memory=torch.cuda.is_available())
    train_loader = DataLoader(train_ds, batch_size=batch_size, shuffle=True, drop_last=drop_last,
                              generator=torch.Generator().manual_seed(seed), **common)
    train_loader.batch_transform = train_tf_fn
    eval_loader = DataLoader(eval_ds, batch_size=eval_batch_size, shuffle=False, drop_last=False, **common)
    return train_loader, eval_loader


def batches_per_process(loader: Any, num_processes: int) -> int:
    """Steps per epoch one process takes from ``loader`` (before Accelerate shards a DataLoader)."""
    if isinstance(loader, TensorLoader):
        return len(loader)
    return max(1, len(loader) // num_processes)
