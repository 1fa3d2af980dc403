"""The batch-tensor data path: decode a split once, keep it in memory, augment whole batches.

For datasets of small fixed-size images (CIFAR-10/100, MNIST, Fashion-MNIST, SVHN, synthetic and
local parquet sets of the same kind) per-image PIL decoding and transforms, not the model, set the
training speed. Here each split is decoded once into a ``uint8`` tensor (N, C, H, W) plus labels,
the decoded form is cached on disk keyed by the ``datasets`` fingerprint of the split (a changed
dataset gets a new key; a corrupt or stale file is detected by its content hash and rebuilt), kept
in memory on the training device, and served by index.

Randomness never depends on how the work is split: each epoch's order is a permutation seeded by
``(seed, epoch)``; each image's augmentation draws (crop offsets, flip, resized-crop box) are a
counter-based hash of ``(seed, epoch, image index)``. A run therefore augments every image the same
way whatever the batch size, gradient accumulation, process count or resume point, which is what
keeps ``--resume`` exact and 2-process DDP equal to 1-process training on the same global batch.

:func:`choose_pipeline` decides when this path applies (small fixed-size images whose decoded
splits fit in :data:`TENSOR_MEMORY_BUDGET`) and :func:`create_tensor_loaders` builds its train and
eval :class:`TensorLoader` s from an :class:`~timm_ff.data.ImageData`.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import datasets
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import DataError, unknown_choice
from .splits import ImageData
from .transforms import _fit_channels

__all__ = ['TRAIN_AUGS', 'DATA_PIPELINES', 'check_augmentation', 'check_color_jitter', 'DecodedSplit',
           'decode_split', 'decoded_cache_dir', 'estimate_bytes', 'BatchAugment', 'TensorLoader', 'per_image_uniform',
           'TENSOR_MEMORY_BUDGET', 'choose_pipeline', 'create_tensor_loaders']

TRAIN_AUGS = ('crop_flip', 'rrc', 'none')
"""Training augmentations: random crop of the zero-padded image (the CIFAR papers' recipe), timm-style
RandomResizedCrop, or no crop; each followed by a horizontal flip with probability ``hflip`` and, with a
colour jitter strength above 0, colour jitter (:func:`check_color_jitter`)."""
DATA_PIPELINES = ('auto', 'tensor', 'pil')
_CACHE_VERSION = '1'
_MASK32 = 0xFFFF_FFFF


def check_augmentation(aug: str, padding: int) -> None:
    """Raise a clear error for an unknown augmentation or a bad crop padding (both data paths)."""
    if aug not in TRAIN_AUGS:
        raise unknown_choice('augmentation', aug, TRAIN_AUGS)
    if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
        raise DataError(f'crop padding must be a non-negative integer number of pixels, got {padding!r}')


def check_color_jitter(strength: Any) -> float:
    """The colour jitter strength as a float (0: off), or one clear error (both data paths).

    Strength ``j`` draws brightness, contrast and saturation factors from ``[max(0, 1 - j), 1 + j]``, as
    torchvision's ``ColorJitter(j, j, j)`` (what timm builds from a float ``color_jitter``); no hue.
    """
    if strength is None:
        return 0.0
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not strength >= 0:
        raise DataError(f'color jitter strength must be a number >= 0 (0: off), got {strength!r}')
    return float(strength)


def decoded_cache_dir() -> Path:
    """Folder of decoded splits: ``$TIMM_FF_CACHE`` or ``<datasets cache>/timm_ff_decoded``."""
    env = os.environ.get('TIMM_FF_CACHE')
    return Path(env) if env else Path(datasets.config.HF_DATASETS_CACHE) / 'timm_ff_decoded'


@dataclass
class DecodedSplit:
    """One split decoded into memory.

    Attributes:
        images: uint8 (N, C, H, W).
        labels: int64 (N,).
        cache_note: One line saying whether the decoded cache was used, written or rebuilt.
        content_hash: blake2b-128 of the decoded pixels and labels (identifies the data, not its path).
    """

    images: torch.Tensor
    labels: torch.Tensor
    cache_note: str = ''
    content_hash: str = ''


def _content_hash(images: torch.Tensor, labels: torch.Tensor) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(images.contiguous().numpy().tobytes())
    h.update(labels.contiguous().numpy().tobytes())
    return h.hexdigest()


def estimate_bytes(split: datasets.Dataset, image_column: str, mode: str, probe: int = 16) -> tuple[int, tuple]:
    """Bytes the decoded split needs, from the first ``probe`` images; raise if their sizes differ.

    Returns:
        ``(bytes, (C, H, W))``.

    Raises:
        DataError: If the probed images differ in size (the tensor path needs one size).
    """
    n = min(probe, len(split))
    if n == 0:
        raise DataError('the split is empty; nothing to decode')
    sizes = {img.size for img in split.select(range(n))[image_column]}
    if len(sizes) > 1:
        raise DataError(f'images differ in size (found {sorted(sizes)} in the first {n}); the tensor data path needs '
                        'one image size: use --data-pipeline pil')
    (w, h), = sizes
    c = 1 if mode == 'L' else 3
    return len(split) * c * h * w, (c, h, w)


def _decode(split: datasets.Dataset, image_column: str, label_column: str, mode: str,
            chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    ds = split.select_columns([image_column, label_column]).cast_column(image_column, datasets.Image(mode=mode))
    ds = ds.with_format('torch')
    parts, labels, shape = [], [], None
    for start in range(0, len(ds), chunk):
        rows = ds[start:start + chunk]
        imgs = rows[image_column]
        if not isinstance(imgs, torch.Tensor):  # datasets returns a list when sizes differ
            found = sorted({tuple(t.shape) for t in imgs})
            raise DataError(f'images differ in size (found {found[:4]}); the tensor data path needs one image '
                            'size: use --data-pipeline pil')
        if imgs.ndim == 3:  # mode 'L' comes back as (B, H, W)
            imgs = imgs[:, None]
        if shape is not None and imgs.shape[1:] != shape:
            raise DataError(f'images differ in size ({tuple(shape)} and {tuple(imgs.shape[1:])}); the tensor data '
                            'path needs one image size: use --data-pipeline pil')
        shape = imgs.shape[1:]
        parts.append(imgs.to(torch.uint8))
        labels.append(torch.as_tensor(rows[label_column], dtype=torch.long))
    return torch.cat(parts), torch.cat(labels)


def decode_split(split: datasets.Dataset, image_column: str, label_column: str, mode: str = 'RGB',
                 cache: bool = True) -> DecodedSplit:
    """Decode ``split`` into uint8 images and int64 labels, through the on-disk cache.

    The cache file is named by the split's ``datasets`` fingerprint, columns and mode; it stores a
    content hash that is checked on every load, so a truncated, corrupt or stale file is rebuilt
    (and said so in ``cache_note``), never silently used.

    Args:
        split: The split (a ``datasets.Dataset`` with an ``Image`` column).
        image_column: Image column.
        label_column: Integer label column.
        mode: PIL mode the images are converted to: 'RGB' or 'L'.
        cache: Read and write the on-disk cache.
    """
    key = hashlib.sha1(f'{_CACHE_VERSION}|{split._fingerprint}|{len(split)}|{image_column}|{label_column}|{mode}'
                       .encode()).hexdigest()[:20]
    path = decoded_cache_dir() / f'{key}.safetensors'
    note = ''
    if cache and path.is_file():
        try:
            blob = load_file(str(path))
            images, labels = blob['images'], blob['labels']
            with safe_open(str(path), 'pt') as sf:  # metadata lives in the safetensors header
                meta = sf.metadata() or {}
            digest = _content_hash(images, labels)
            if meta.get('fingerprint') != split._fingerprint or meta.get('hash') != digest:
                note = f'decoded cache {path} is stale or corrupt (hash/fingerprint mismatch); rebuilt it'
            else:
                return DecodedSplit(images, labels, f'decoded cache {path} (hash checked)', digest)
        except (SafetensorError, OSError, KeyError, RuntimeError, ValueError) as e:
            note = f'decoded cache {path} is unreadable ({type(e).__name__}); rebuilt it'
    images, labels = _decode(split, image_column, label_column, mode)
    digest = _content_hash(images, labels)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f'.tmp{os.getpid()}')
        save_file({'images': images, 'labels': labels}, str(tmp),
                  metadata={'fingerprint': split._fingerprint, 'hash': digest,
                            'image_column': image_column, 'label_column': label_column, 'mode': mode})
        os.replace(tmp, path)
        note = note or f'decoded {len(labels)} images once into {path}'
    return DecodedSplit(images, labels, note or f'decoded {len(labels)} images (cache off)', digest)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 integer hash on int64 tensors holding 32-bit values (bijective on [0, 2^32))."""
    x = x & _MASK32
    x = (x ^ (x >> 16)) * 0x7FEB352D & _MASK32
    x = (x ^ (x >> 15)) * 0x846CA68B & _MASK32
    return x ^ (x >> 16)


def per_image_uniform(index: torch.Tensor, seed: int, epoch: int, stream: int) -> torch.Tensor:
    """Uniform [0, 1) draws, one per image, a pure function of (seed, epoch, image index, stream).

    Args:
        index: int64 image indices (B,).
        seed: Run seed.
        epoch: Epoch.
        stream: Which draw of the image (crop x, crop y, flip, ...).
    """
    key = _mix32(torch.tensor([(seed * 0x9E3779B1 + epoch * 0x85EBCA77 + stream * 0xC2B2AE3D) & _MASK32],
                              dtype=torch.int64, device=index.device))
    bits = _mix32(_mix32(index.long() ^ key) + key)
    return (bits >> 8).float() / float(1 << 24)


class BatchAugment:
    """Augmentation and normalisation of a uint8 batch on its device.

    Eval (``train=False``) only resizes to ``size`` if needed and normalises.
    """

    def __init__(self, size: Sequence[int], mean: Sequence[float], std: Sequence[float], *, train: bool,
                 aug: str = 'crop_flip', padding: int = 4, hflip: float = 0.5,
                 scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 color_jitter: float = 0.0, channels_last: bool = False):
        """
        Args:
            size: Output (H, W).
            mean: Per-channel mean (in [0, 1] units).
            std: Per-channel std.
            train: Apply random augmentation.
            aug: 'crop_flip' (random crop of the zero-padded image), 'rrc' (random resized crop) or 'none'.
            padding: Zero padding in pixels for 'crop_flip'.
            hflip: Horizontal flip probability (train only).
            scale: Area range of 'rrc', as fractions of the image.
            ratio: Aspect ratio range of 'rrc'.
            color_jitter: Colour jitter strength (train only, 0: off), see :func:`check_color_jitter`:
                brightness, contrast, then saturation, each factor drawn per image (torchvision draws
                the order at random, this path keeps it fixed).
            channels_last: Return channels_last tensors.
        """
        check_augmentation(aug, padding)
        if not 0.0 <= hflip <= 1.0:
            raise DataError(f'hflip probability must be in [0, 1], got {hflip!r}')
        if not (0 < scale[0] <= scale[1] <= 1):
            raise DataError(f'rrc scale must satisfy 0 < min <= max <= 1, got {tuple(scale)!r}')
        self.size = tuple(int(s) for s in size)
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1) * 255
        self.train, self.aug, self.padding, self.hflip = train, aug, padding, hflip
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.color_jitter = check_color_jitter(color_jitter)
        self._log_ratio = torch.tensor(self.ratio).log().tolist()  # once, on the host (float32 logs, as always)
        self.channels_last = channels_last

    def _crop_flip(self, x: torch.Tensor, u: list) -> torch.Tensor:
        B, C, H, W = x.shape
        p = self.padding
        xp = F.pad(x, (p, p, p, p))
        dy = (u[0] * (2 * p + 1)).long().clamp_max(2 * p)
        dx = (u[1] * (2 * p + 1)).long().clamp_max(2 * p)
        rows = (dy[:, None] + torch.arange(H, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(W, device=x.device))[:, None, None, :]
        b = torch.arange(B, device=x.device)[:, None, None, None]
        c = torch.arange(C, device=x.device)[None, :, None, None]
        return xp[b, c, rows, cols]

    def _rrc(self, x: torch.Tensor, u: list) -> torch.Tensor:
        from torchvision.ops import roi_align
        B, C, H, W = x.shape
        area = H * W * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[0])
        lo, hi = self._log_ratio
        ratio = torch.exp(lo + (hi - lo) * u[1])
        w = (area * ratio).sqrt().clamp(1, W)
        h = (area / ratio).sqrt().clamp(1, H)
        x0 = (W - w) * u[2]
        y0 = (H - h) * u[3]
        boxes = torch.stack([torch.arange(B, device=x.device, dtype=torch.float32), x0, y0, x0 + w, y0 + h], 1)
        return roi_align(x, boxes, self.size, spatial_scale=1.0, sampling_ratio=2, aligned=True)

    def _jitter(self, x: torch.Tensor, u: list) -> torch.Tensor:
        """torchvision's brightness, contrast and saturation adjustments on [0, 255] floats, one factor each
        per image from ``[max(0, 1 - j), 1 + j]``."""
        lo, hi = max(0.0, 1.0 - self.color_jitter), 1.0 + self.color_jitter
        f = [(lo + (hi - lo) * v)[:, None, None, None] for v in u]
        weights = torch.tensor([0.299, 0.587, 0.114], device=x.device).reshape(1, 3, 1, 1)

        def gray(t):
            return (t * weights).sum(1, keepdim=True) if t.shape[1] == 3 else t

        x = (x * f[0]).clamp(0, 255)  # brightness: blend with black
        mean = gray(x).mean((1, 2, 3), keepdim=True)
        x = (f[1] * x + (1 - f[1]) * mean).clamp(0, 255)  # contrast: blend with the image's mean grey
        if x.shape[1] == 3:  # saturation: blend with the pixel's grey (a grey image has none)
            x = (f[2] * x + (1 - f[2]) * gray(x)).clamp(0, 255)
        return x

    def __call__(self, images: torch.Tensor, index: torch.Tensor, seed: int = 0, epoch: int = 0) -> torch.Tensor:
        """Augment (train) and normalise a uint8 batch.

        Args:
            images: uint8 (B, C, H, W).
            index: The images' indices in their split (seeds their augmentation draws).
            seed: Run seed.
            epoch: Epoch.
        """
        x = images.float()
        if self.train:
            u = [per_image_uniform(index, seed, epoch, s) for s in range(5)]
            if self.aug == 'crop_flip':
                x = self._crop_flip(x, u)
            elif self.aug == 'rrc':
                x = self._rrc(x, u)
            if self.hflip > 0:
                x = torch.where((u[4] < self.hflip)[:, None, None, None], x.flip(3), x)
            if self.color_jitter > 0:
                x = self._jitter(x, [per_image_uniform(index, seed, epoch, s) for s in (5, 6, 7)])
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode='bilinear', align_corners=False, antialias=True)
        if self.mean.device != x.device:  # moved once, not copied to the device for every batch
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


class TensorLoader:
    """Batches by index from an in-memory decoded split, sharded across processes.

    The global batch of step ``s`` is rows ``[s*B*P, (s+1)*B*P)`` of the epoch's permutation (``B``
    the per-process batch size, ``P`` the process count) and process ``r`` takes block ``r`` of it,
    the layout Accelerate gives a sharded ``DataLoader``. A global batch is the same set of images
    for any ``P`` with the same ``B*P``. Without ``drop_last`` the last global batch is padded with
    label ``-1`` rows (repeats of image 0) so every process runs the same number of steps; the
    trainer ignores those rows.
    """

    def __init__(self, split: DecodedSplit, batch_size: int, transform: BatchAugment, *, shuffle: bool,
                 drop_last: bool, seed: int = 0, process_index: int = 0, num_processes: int = 1,
                 device: Optional[torch.device] = None):
        """
        Args:
            split: The decoded split.
            batch_size: Images per process per step.
            transform: Batch augmentation / normalisation.
            shuffle: New seeded permutation each epoch (else the split's order).
            drop_last: Drop the last incomplete global batch.
            seed: Seeds the permutation and the augmentation draws.
            process_index: This process's rank.
            num_processes: Number of processes sharing the data.
            device: Where the images live and batches are made (default CPU).
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f'batch_size must be a positive integer, got {batch_size!r}')
        device = torch.device(device or 'cpu')
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.batch_size, self.transform, self.shuffle, self.drop_last = batch_size, transform, shuffle, drop_last
        self.seed, self.rank, self.world, self.device = seed, process_index, num_processes, device
        self.epoch = 0
        self.dataset = split  # what len(loader.dataset) reports, as for a DataLoader
        n, gb = len(self.labels), batch_size * num_processes
        if drop_last and n < gb:
            raise DataError(f'the split has {n} rows, fewer than one global batch ({batch_size} x {num_processes} '
                            'processes), so no full batch exists; lower the batch size')

    def __len__(self) -> int:
        """Steps per epoch (the same on every process)."""
        n, gb = len(self.labels), self.batch_size * self.world
        return n // gb if self.drop_last else -(-n // gb)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: its permutation and its augmentation draws."""
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        n = len(self.labels)
        if not self.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch)) & 0x7FFF_FFFF)
        return torch.randperm(n, generator=g)

    def iter_from(self, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images float, labels int64)`` from step ``start_step`` of the current epoch."""
        order = self._order().to(self.device)  # one host-to-device copy per epoch, none per batch
        b, gb = self.batch_size, self.batch_size * self.world
        for step in range(start_step, len(self)):
            idx = order[step * gb + self.rank * b: step * gb + (self.rank + 1) * b]
            valid = len(idx)
            if valid < b:  # padding of the last global batch (never reached with drop_last)
                idx = torch.cat([idx, torch.zeros(b - valid, dtype=torch.long, device=self.device)])
            x = self.transform(self.images[idx], idx, self.seed, self.epoch)
            y = self.labels[idx].clone()
            if valid < b:
                y[valid:] = -1
            yield x, y

    def skip_first_batches(self, num_batches: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate the current epoch from step ``num_batches`` (exact resume)."""
        return self.iter_from(num_batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)


TENSOR_MEMORY_BUDGET = 4 * 2 ** 30
"""Largest decoded train+eval size (bytes) that ``--data-pipeline auto`` keeps in memory."""


def _available_memory() -> int:
    try:
        return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (ValueError, OSError, AttributeError):
        return TENSOR_MEMORY_BUDGET


def choose_pipeline(data: ImageData, pipeline: str = 'auto', in_chans: int = 3) -> tuple[str, str]:
    """Pick the data path: 'tensor' for small fixed-size images that fit in memory, else 'pil'.

    Args:
        data: The splits.
        pipeline: 'auto', 'tensor' or 'pil'.
        in_chans: Model input channels.

    Returns:
        ``(pipeline, reason)``.

    Raises:
        DataError: For an unknown pipeline, or 'tensor' asked for images that differ in size or
            do not fit in memory (the message names the size found and the memory needed).
    """
    if pipeline not in DATA_PIPELINES:
        raise unknown_choice('data pipeline', pipeline, DATA_PIPELINES)
    if pipeline == 'pil':
        return 'pil', 'per-image PIL decoding and timm transforms (asked for)'
    mode = 'L' if in_chans == 1 else 'RGB'
    try:
        n_train, chw = estimate_bytes(data.train, data.image_column, mode)
        n_eval, chw_eval = estimate_bytes(data.eval, data.image_column, mode)
        if chw_eval != chw:
            raise DataError(f'train images are {chw} but eval images are {chw_eval}; the tensor data path needs one '
                            'image size: use --data-pipeline pil')
    except DataError as e:
        if pipeline == 'tensor':
            raise
        return 'pil', f'per-image PIL path ({e})'.replace(': use --data-pipeline pil', '')
    need = n_train + n_eval
    budget = min(TENSOR_MEMORY_BUDGET, _available_memory() // 2)
    size = f'{chw[0]}x{chw[1]}x{chw[2]} images, {need / 2 ** 20:.0f} MiB decoded'
    if need > budget:
        if pipeline == 'tensor':
            raise DataError(f'the decoded splits need {need / 2 ** 20:.0f} MiB ({size}) but the tensor data path '
                            f'allows {budget / 2 ** 20:.0f} MiB here; use --data-pipeline pil')
        return 'pil', f'per-image PIL path ({size}: more than the {budget / 2 ** 20:.0f} MiB tensor budget)'
    return 'tensor', f'batch-tensor path ({size}, kept in memory, augmented per batch)'


def create_tensor_loaders(data: ImageData, *, data_config: dict, batch_size: int, eval_batch_size: int,
                          in_chans: int = 3, seed: int = 0, drop_last: bool = True, aug: str = 'crop_flip',
                          crop_padding: int = 4, hflip: float = 0.5, scale: tuple = (0.08, 1.0),
                          color_jitter: float = 0.0, device: Any = None, process_index: int = 0,
                          num_processes: int = 1, channels_last: bool = False,
                          cache: bool = True) -> tuple[TensorLoader, TensorLoader]:
    """Train and eval :class:`TensorLoader` s over the decoded splits.

    Args:
        data: Splits from :func:`load_image_datasets`.
        data_config: Output of ``timm.data.resolve_data_config(model=model)`` (input size, mean, std).
        batch_size: Training batch size per process.
        eval_batch_size: Eval batch size per process.
        in_chans: Model input channels (1: images converted to 'L', 3: 'RGB').
        seed: Seeds the epoch permutations and augmentation draws.
        drop_last: Drop the last incomplete training batch.
        aug: Training augmentation, one of :data:`TRAIN_AUGS`.
        crop_padding: Zero padding (pixels) of 'crop_flip'.
        hflip: Horizontal flip probability.
        scale: Area range of 'rrc'.
        color_jitter: Colour jitter strength (0: off), see :class:`BatchAugment`.
        device: Device holding the images and making the batches.
        process_index: This process's rank.
        num_processes: Processes sharing the data.
        channels_last: Return channels_last batches.
        cache: Use the on-disk decoded cache.

    Returns:
        ``(train_loader, eval_loader)``; each ``loader.cache_note`` says how its split was decoded.
    """
    if in_chans not in (1, 3):
        raise DataError(f"in_chans must be 1 (grayscale) or 3 (RGB), got {in_chans!r}")
    mode = 'L' if in_chans == 1 else 'RGB'
    size = tuple(data_config['input_size'][-2:])
    mean = _fit_channels(data_config.get('mean', (0.5,)), in_chans, 'mean')
    std = _fit_channels(data_config.get('std', (0.5,)), in_chans, 'std')
    common = dict(seed=seed, process_index=process_index, num_processes=num_processes, device=device)
    train_tf = BatchAugment(size, mean, std, train=True, aug=aug, padding=crop_padding, hflip=hflip, scale=scale,
                            color_jitter=color_jitter, channels_last=channels_last)
    eval_tf = BatchAugment(size, mean, std, train=False, channels_last=channels_last)
    train_split = decode_split(data.train, data.image_column, data.label_column, mode, cache=cache)
    eval_split = decode_split(data.eval, data.image_column, data.label_column, mode, cache=cache)
    train = TensorLoader(train_split, batch_size, train_tf, shuffle=True, drop_last=drop_last, **common)
    evals = TensorLoader(eval_split, eval_batch_size, eval_tf, shuffle=False, drop_last=False, **common)
    train.cache_note, evals.cache_note = train_split.cache_note, eval_split.cache_note
    return train, evals
