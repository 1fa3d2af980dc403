"""Image-classification data for timm_ff: a small dataset registry, loading and DataLoaders.

Datasets come from the Hugging Face Hub (``load_dataset(hub_id)``) or from a local folder holding either
HF parquet files (``<split>-NNNNN-of-NNNNN.parquet``) or an image-folder layout
(``<split>/<class>/*.png``). When the Hub cannot be reached and CIFAR-10 was asked for, a small real
CIFAR-10 sample bundled with the package is used instead, and :attr:`ImageData.source` says so.
Two data paths (``choose_pipeline``): small fixed-size images are decoded once into uint8 tensors
and augmented per batch (:mod:`timm_ff.tensor_data`); large or variable-size images go through
timm transforms (``timm.data.create_transform``) per image in a ``DataLoader``. Both follow the
model's data config and keep exact resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Union

import datasets
import timm.data
import torch
from datasets import load_dataset
from torch.utils.data import DataLoader

from timm_ff.errors import DataError, unknown_choice
from timm_ff.hub import hub_unavailable
from timm_ff.synthetic import describe as describe_synthetic
from timm_ff.synthetic import synthetic_dataset
from timm_ff.tensor_data import (
    DATA_PIPELINES, BatchAugment, TensorLoader, check_augmentation, decode_split, estimate_bytes,
)

__all__ = [
    'DatasetSpec', 'ImageData', 'list_datasets', 'get_dataset_spec', 'load_image_datasets',
    'make_transform', 'create_loaders', 'set_augmentation_epoch', 'choose_pipeline', 'batches_per_process',
    'SAMPLE_DIR', 'CHECK_SAMPLES', 'TENSOR_MEMORY_BUDGET', 'sample_accuracy', 'select_classes', 'cap_per_class',
    'HOLDOUT_SEED',
]

SAMPLE_DIR = Path(__file__).resolve().parent / '_sample' / 'cifar10-tiny'
"""Folder of the bundled real CIFAR-10 sample (950 train / 500 test images, columns ``img``, ``label``)."""
CHECK_SAMPLES = {'cifar10': SAMPLE_DIR, 'mnist': SAMPLE_DIR.parent / 'mnist-tiny'}
"""Bundled real samples per dataset (test split: 50 images per class) that release checks evaluate on."""

_EVAL_SPLIT_FALLBACKS = ('test', 'validation', 'valid', 'val')
_IMAGE_EXTS = ('.png', '.jpg', '.jpeg')
_PARQUET_RE = re.compile(r'^(?P<split>\w+?)(?:-\d{5}-of-\d{5}(?:-[0-9a-f]+)?)?\.parquet$')
_LAYOUTS = ('a parquet folder (<dir>/<split>-00000-of-00001.parquet, <dir>/<split>.parquet or '
            '<dir>/data/<split>-*.parquet) or an image folder (<dir>/<split>/<class>/*.png|jpg|jpeg)')


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
HOLDOUT_SEED = 0
"""Seed of the held-out eval split (``holdout``): the same images for every run seed."""
ClassSelection = Union[int, list, dict, None]


@dataclass
class ImageData:
    """A train/eval pair of image-classification splits plus what is needed to build loaders.

    Attributes:
        train: Training split.
        eval: Evaluation split.
        image_column: Column holding the images (a ``datasets.Image`` feature).
        label_column: Column holding integer class labels.
        num_classes: Number of classes (from the ``ClassLabel`` feature, else max label + 1).
        class_names: Class names from the ``ClassLabel`` feature, or None.
        source: Human-readable origin (Hub id, local path or the bundled sample), for the CLI to print.
        is_sample: True when the bundled CIFAR-10 sample stands in for the requested dataset.
    """

    train: datasets.Dataset
    eval: datasets.Dataset
    image_column: str
    label_column: str
    num_classes: int
    class_names: list[str] | None
    source: str
    is_sample: bool = False


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


def _parquet_files(root: Path) -> dict[str, list[str]]:
    """Group ``*.parquet`` files in ``root`` (or ``root/data``) by split name."""
    for folder in (root, root / 'data'):
        files = sorted(folder.glob('*.parquet')) if folder.is_dir() else []
        if not files:
            continue
        groups: dict[str, list[str]] = {}
        for f in files:
            m = _PARQUET_RE.match(f.name)
            if m is None:
                raise DataError(f"cannot tell the split of parquet file {str(f)!r}; name files "
                                "<split>-00000-of-00001.parquet or <split>.parquet")
            groups.setdefault(m.group('split'), []).append(str(f))
        return groups
    return {}


def _imagefolder_files(root: Path) -> dict[str, list[str]]:
    """Collect ``<split>/<class>/<image>`` files in ``root`` by split name."""
    groups: dict[str, list[str]] = {}
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        files = [str(f) for class_dir in sorted(split_dir.iterdir()) if class_dir.is_dir()
                 for f in sorted(class_dir.iterdir()) if f.suffix.lower() in _IMAGE_EXTS]
        if files:
            groups[split_dir.name] = files
    return groups


def _load_local(data_dir: str) -> tuple[datasets.DatasetDict, str]:
    """Load a local parquet or image folder as a DatasetDict; return it and a description."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"data dir {data_dir!r} does not exist or is not a folder; expected {_LAYOUTS}")
    if not any(root.iterdir()):
        raise DataError(f"data dir {data_dir!r} is empty; expected {_LAYOUTS}")
    parquet = _parquet_files(root)
    if parquet:
        return load_dataset('parquet', data_files=parquet), f'local parquet folder {str(root)!r}'
    images = _imagefolder_files(root)
    if images:
        return load_dataset('imagefolder', data_files=images), f'local image folder {str(root)!r}'
    raise DataError(f"data dir {data_dir!r} has no recognisable layout; expected {_LAYOUTS}")


def _pick_splits(dd: datasets.DatasetDict, where: str, spec: DatasetSpec | None,
                 train_split: str | None, eval_split: str | None) -> tuple[str, str]:
    """Choose the train and eval split names present in ``dd``."""
    found = ', '.join(dd.keys())
    hint = ('pass train_split/eval_split (--train-split/--eval-split) explicitly; the same split may serve both; '
            'or hold out part of the train split with holdout (--holdout 0.25)')
    train = train_split or (spec.train_split if spec else 'train')
    if train not in dd:
        raise DataError(f"train split {train!r} not found in {where}; splits found: {found}; {hint}")
    if eval_split is not None:
        if eval_split not in dd:
            raise DataError(f"eval split {eval_split!r} not found in {where}; splits found: {found}; {hint}")
        return train, eval_split
    candidates = ((spec.eval_split,) if spec else ()) + _EVAL_SPLIT_FALLBACKS
    for cand in candidates:
        if cand in dd and cand != train:
            return train, cand
    raise DataError(f"no eval split in {where} (looked for {', '.join(dict.fromkeys(candidates))}); "
                    f"splits found: {found}; {hint}")


def _pick_image_column(ds: datasets.Dataset, requested: str | None, spec: DatasetSpec | None) -> str:
    """Return the image column: the requested one, the spec's, or the first ``Image`` feature."""
    cols = ', '.join(ds.column_names)
    if requested is not None:
        if not isinstance(ds.features.get(requested), datasets.Image):
            raise DataError(f"image column {requested!r} is not an image column; columns: {cols}")
        return requested
    if spec is not None and isinstance(ds.features.get(spec.image_column), datasets.Image):
        return spec.image_column
    for col, feat in ds.features.items():
        if isinstance(feat, datasets.Image):
            return col
    raise DataError(f"no image column found (no column has the datasets.Image feature); columns: {cols}; "
                    "pass image_column (--image-column)")


def _is_int_label(feat: Any) -> bool:
    """True for a ``ClassLabel`` or an integer ``Value`` feature."""
    return isinstance(feat, datasets.ClassLabel) or (
        isinstance(feat, datasets.Value) and feat.dtype.startswith(('int', 'uint')))


def _pick_label_column(ds: datasets.Dataset, requested: str | None, spec: DatasetSpec | None) -> str:
    """Return the label column: the requested one, the spec's default, or the first ``ClassLabel``."""
    feats = ds.features
    labels = [c for c, f in feats.items() if _is_int_label(f)]
    allowed = f"label columns: {', '.join(labels) or 'none'}; all columns: {', '.join(ds.column_names)}"
    if requested is not None:
        if requested not in feats:
            raise DataError(f"label column {requested!r} not found; {allowed}")
        if not _is_int_label(feats[requested]):
            raise DataError(f"label column {requested!r} does not hold integer class labels "
                            f"({feats[requested]}); {allowed}")
        return requested
    if spec is not None and spec.label_columns[0] in feats and _is_int_label(feats[spec.label_columns[0]]):
        return spec.label_columns[0]
    for cand in [c for c, f in feats.items() if isinstance(f, datasets.ClassLabel)] + ['label', 'labels']:
        if cand in labels:
            return cand
    raise DataError(f"no label column found; {allowed}; pass label_column (--label-column)")


def _select(dd: datasets.DatasetDict, where: str, source: str, spec: DatasetSpec | None,
            label_column: str | None, image_column: str | None, train_split: str | None,
            eval_split: str | None, is_sample: bool = False) -> ImageData:
    """Pick splits and columns from ``dd`` and count the classes."""
    train_name, eval_name = _pick_splits(dd, where, spec, train_split, eval_split)
    train, evals = dd[train_name], dd[eval_name]
    image_col = _pick_image_column(train, image_column, spec)
    label_col = _pick_label_column(train, label_column, spec)
    for col in (image_col, label_col):
        if col not in evals.column_names:
            raise DataError(f"column {col!r} is in split {train_name!r} but not in eval split "
                            f"{eval_name!r} (columns: {', '.join(evals.column_names)})")
    feat = train.features[label_col]
    if isinstance(feat, datasets.ClassLabel):
        num_classes, class_names = feat.num_classes, list(feat.names)
    else:
        values = train.unique(label_col) + evals.unique(label_col)
        num_classes, class_names = (max(values) + 1 if values else 0), None
    if num_classes < 1:
        raise DataError(f"label column {label_col!r} in {where} holds no classes")
    return ImageData(train, evals, image_col, label_col, num_classes, class_names, source, is_sample)


def load_image_datasets(name: str | None = None, data_dir: str | None = None,
                        label_column: str | None = None, image_column: str | None = None,
                        train_split: str | None = None, eval_split: str | None = None,
                        allow_sample_fallback: bool = True, dataset_kwargs: dict | None = None,
                        holdout: float = 0.0, max_per_class: int = 0, classes: ClassSelection = None) -> ImageData:
    """Load a train/eval pair of image-classification splits.

    The optional steps run in this order: ``holdout`` carves the eval split out of the train split,
    ``max_per_class`` caps the training images per class, ``classes`` keeps (and renumbers, or groups)
    classes in both splits.

    Args:
        name: Registered dataset name (see :func:`list_datasets`); optional when ``data_dir`` is given.
        data_dir: Local parquet folder or image folder; when given, the Hub is not used.
        label_column: Label column (default: the dataset's first label column, else the first ClassLabel).
        image_column: Image column (default: the dataset's, else the first ``datasets.Image`` column).
        train_split: Training split (default: the dataset's, else ``train``).
        eval_split: Eval split (default: the dataset's, else the first of test/validation/valid/val).
        allow_sample_fallback: Use the bundled CIFAR-10 sample when ``cifar10`` cannot be fetched.
        dataset_kwargs: Parameters of a generated dataset (``synthetic``, ``synthetic_vector``; see
            :mod:`timm_ff.synthetic`).
        holdout: If > 0, evaluate on this fraction of the train split instead of the eval split: a
            class-stratified random choice seeded by :data:`HOLDOUT_SEED` (for data with one split, such as
            Omniglot).
        max_per_class: If > 0, keep only the first this many training images of each class (split order).
        classes: Which classes to keep (see :func:`select_classes`): N (the first N), a list of class ids
            or names (renumbered 0..len-1 in that order), or a dict ``{group name: [classes]}`` (one label
            per group, e.g. vehicles vs animals).

    Returns:
        The selected splits and their metadata; ``source`` says where the data came from.

    Raises:
        DataError: For an unknown name, an unusable folder, a missing split or column, an unreachable Hub,
            or a bad holdout, cap or class selection.
    """
    spec = get_dataset_spec(name) if name is not None else None
    if dataset_kwargs and (spec is None or spec.builder is None):
        raise DataError(f"dataset_kwargs (--dataset-kwargs) only apply to the generated datasets "
                        f"{', '.join(GENERATED)}, not to {name or data_dir!r}")
    is_sample = False
    if spec is not None and spec.builder is not None:
        if data_dir is not None:
            raise DataError(f"dataset {name!r} is generated, not read from a folder; drop data_dir (--data-dir) "
                            f"or pick a dataset other than {', '.join(GENERATED)}")
        dd = spec.builder(**(dataset_kwargs or {}))
        where = source = describe_synthetic(spec.builder.args[0], dataset_kwargs or {})
    elif data_dir is not None:
        dd, where = _load_local(data_dir)
        source = where
    elif spec is None:
        raise DataError(f"no dataset given; pass a dataset name (one of {', '.join(list_datasets())}) "
                        "or data_dir (--data-dir) with a local parquet or image folder")
    else:
        dd, where, source, is_sample = _load_hub(spec, name, allow_sample_fallback, label_column, image_column)
    if holdout:
        dd, train_split, eval_split = _holdout(dd, where, spec, train_split, label_column, holdout)
        source += f' (eval: {holdout:g} of the train split held out, stratified, seed {HOLDOUT_SEED})'
    data = _select(dd, where, source, spec, label_column, image_column, train_split, eval_split, is_sample)
    if max_per_class:
        data = cap_per_class(data, max_per_class)
    if classes is not None:
        data = select_classes(data, classes)
    return data


def _load_hub(spec: DatasetSpec, name: str, allow_sample_fallback: bool, label_column: str | None,
              image_column: str | None) -> tuple[datasets.DatasetDict, str, str, bool]:
    """Load a registered dataset from the Hub (or its cache); fall back to the bundled CIFAR-10 sample."""
    unreachable = hub_unavailable()
    try:
        with _datasets_offline(unreachable is not None):
            dd = load_dataset(spec.hub_id, spec.config)
    except (ConnectionError, OSError) as exc:
        why = f'{unreachable} and it is not in the datasets cache' if unreachable else str(exc)
        if allow_sample_fallback and name == 'cifar10' and label_column in (None, 'label') \
                and image_column in (None, 'img'):
            sample, _ = _load_local(str(SAMPLE_DIR))
            counts = f"{sample['train'].num_rows} train / {sample['test'].num_rows} test images"
            source = (f"bundled CIFAR-10 sample ({counts}) because the Hub id {spec.hub_id!r} could not be loaded "
                      f"({why}); pass --data-dir with the full data for real results")
            return sample, 'the bundled CIFAR-10 sample', source, True
        raise DataError(f"Hub dataset {spec.hub_id!r} could not be loaded ({why}); pass --data-dir with a "
                        "local parquet folder or image folder (e.g. a ../shared/data/<name> folder with "
                        "<split>-00000-of-00001.parquet files) or go online") from exc
    source = f'Hugging Face Hub {spec.hub_id!r}' + (f' (config {spec.config!r})' if spec.config else '')
    return dd, f'Hub dataset {spec.hub_id!r}', source, False


def _holdout(dd: datasets.DatasetDict, where: str, spec: DatasetSpec | None, train_split: str | None,
             label_column: str | None, fraction: float) -> tuple[datasets.DatasetDict, str, str]:
    """Split the train split into ``train`` and a stratified held-out ``test`` split."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise DataError(f'holdout (--holdout) must be a fraction in (0, 1), got {fraction!r}')
    train = train_split or (spec.train_split if spec else 'train')
    if train not in dd:
        raise DataError(f"train split {train!r} not found in {where}; splits found: {', '.join(dd.keys())}; "
                        "pass train_split (--train-split)")
    ds = dd[train]
    label = _pick_label_column(ds, label_column, spec)
    stratify = label if isinstance(ds.features[label], datasets.ClassLabel) else None
    try:
        parts = ds.train_test_split(test_size=fraction, stratify_by_column=stratify, seed=HOLDOUT_SEED)
    except ValueError as e:  # a class with one row, or fewer held-out rows than classes
        raise DataError(f'cannot hold out {fraction:g} of the {len(ds)} training rows of {where} stratified by '
                        f'{label!r} ({str(e).splitlines()[0]}): every class needs at least 2 rows and the held-out '
                        'part at least one row per class') from e
    return datasets.DatasetDict(train=parts['train'], test=parts['test']), 'train', 'test'


def cap_per_class(data: ImageData, max_per_class: int) -> ImageData:
    """Keep only the first ``max_per_class`` training images of each class (in split order); eval is unchanged."""
    if isinstance(max_per_class, bool) or not isinstance(max_per_class, int) or max_per_class < 1:
        raise DataError(f'max_per_class (--max-per-class) must be a positive integer, got {max_per_class!r}')
    counts: dict[int, int] = {}
    keep = []
    for i, label in enumerate(data.train[data.label_column]):
        if counts.get(label, 0) < max_per_class:
            counts[label] = counts.get(label, 0) + 1
            keep.append(i)
    return dataclasses.replace(data, train=data.train.select(keep),
                               source=data.source + f' (at most {max_per_class} training images per class)')


def _class_id(value: Any, data: ImageData) -> int:
    """A class given by id or by name -> its id; unknown values name the allowed ones."""
    names = data.class_names or []
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < data.num_classes:
        return value
    if isinstance(value, str) and value in names:
        return names.index(value)
    allowed = f"ids 0-{data.num_classes - 1}" + (f" or names {', '.join(names)}" if names else '')
    if len(allowed) > 400:
        allowed = allowed[:400] + ' ...'
    raise DataError(f"unknown class {value!r} in classes (--classes) for label column {data.label_column!r}; "
                    f"allowed: {allowed}")


def select_classes(data: ImageData, classes: ClassSelection) -> ImageData:
    """Keep some classes of both splits and renumber their labels 0..K-1.

    Args:
        data: The splits.
        classes: ``N``: the first N classes (ids 0..N-1, labels unchanged). A list of class ids or names:
            those classes, labelled 0..len-1 in list order. A dict ``{group name: [class ids or names]}``: one
            label per group (in dict order); classes in no group are dropped.

    Raises:
        DataError: For N larger than the classes available, fewer than two classes or groups, an unknown
            class, a class listed twice, or a value of another type (each message names the value).
    """
    avail = data.num_classes
    if isinstance(classes, int) and not isinstance(classes, bool):
        if not 2 <= classes <= avail:
            raise DataError(f"classes (--classes) {classes} is not possible: label column {data.label_column!r} has "
                            f"{avail} classes; pick 2 to {avail}")
        groups = [((data.class_names[c] if data.class_names else str(c)), [c]) for c in range(classes)]
    elif isinstance(classes, (list, tuple)):
        groups = [((data.class_names[c] if data.class_names else str(c)), [c])
                  for c in (_class_id(c, data) for c in classes)]
    elif isinstance(classes, dict):
        groups = [(str(g), [_class_id(c, data) for c in (members if isinstance(members, (list, tuple)) else [members])])
                  for g, members in classes.items()]
    else:
        raise DataError(f'classes (--classes) must be a number of classes, a list of classes or a dict of groups, '
                        f'got {classes!r}')
    remap: dict[int, int] = {}
    for new, (_, members) in enumerate(groups):
        for c in members:
            if c in remap:
                raise DataError(f'class {c} ({data.class_names[c] if data.class_names else c}) is listed twice in '
                                f'classes (--classes) {classes!r}')
            remap[c] = new
    groups = dict(groups)
    if len(groups) < 2:
        raise DataError(f'classes (--classes) {classes!r} leaves {len(groups)} class; a classifier needs at least 2')
    names = list(groups)
    label = data.label_column

    def restrict(split: datasets.Dataset) -> datasets.Dataset:
        kept = split.filter(lambda ys: [y in remap for y in ys], input_columns=[label], batched=True)
        features = kept.features.copy()
        features[label] = datasets.ClassLabel(names=names)
        return kept.map(lambda ys: {label: [remap[y] for y in ys]}, input_columns=[label], batched=True,
                        features=features)
    what = ', '.join(f"{g}={'+'.join(str(c) for c in m)}" if len(m) > 1 else g for g, m in groups.items())
    what = what if len(groups) <= 12 else f'{len(groups)} of {avail}'
    return dataclasses.replace(data, train=restrict(data.train), eval=restrict(data.eval), num_classes=len(names),
                               class_names=names, source=data.source + f' (classes: {what})')


@contextlib.contextmanager
def _datasets_offline(offline: bool) -> Iterator[None]:
    """Make ``datasets`` use only its cache while ``offline`` (it reads ``HF_HUB_OFFLINE`` at import)."""
    saved = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = saved or offline
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = saved


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
        train_transform_kwargs: Extra ``timm.data.create_transform`` arguments for training only.
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
    if pipeline == 'tensor':
        extra = sorted(k for k, v in tf_kwargs.items() if k not in ('scale', 'hflip') and v is not None)
        if extra:
            raise DataError(f"the tensor data path supports the transform arguments scale and hflip, not {extra}; "
                            "use --data-pipeline pil for timm's full transform set")
        return create_tensor_loaders(
            data, data_config=data_config, batch_size=batch_size, eval_batch_size=eval_batch_size, in_chans=in_chans,
            seed=seed, drop_last=drop_last, aug=aug, crop_padding=crop_padding, hflip=tf_kwargs.get('hflip', 0.5),
            scale=tuple(tf_kwargs.get('scale', (0.08, 1.0))), device=device, process_index=process_index,
            num_processes=num_processes, channels_last=channels_last)
    mode = 'L' if in_chans == 1 else 'RGB'
    if aug == 'crop_flip':  # timm has no padded random crop: torchvision's, as the CIFAR papers use
        from torchvision import transforms as T
        size = tuple(data_config['input_size'][-2:])
        train_tf = T.Compose([T.Resize(size), T.RandomCrop(size, padding=crop_padding),
                              T.RandomHorizontalFlip(tf_kwargs.get('hflip', 0.5)), T.ToTensor(),
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


def batches_per_process(loader: Any, num_processes: int) -> int:
    """Steps per epoch one process takes from ``loader`` (before Accelerate shards a DataLoader)."""
    if isinstance(loader, TensorLoader):
        return len(loader)
    return max(1, len(loader) // num_processes)


def create_tensor_loaders(data: ImageData, *, data_config: dict, batch_size: int, eval_batch_size: int,
                          in_chans: int = 3, seed: int = 0, drop_last: bool = True, aug: str = 'crop_flip',
                          crop_padding: int = 4, hflip: float = 0.5, scale: tuple = (0.08, 1.0),
                          device: Any = None, process_index: int = 0, num_processes: int = 1,
                          channels_last: bool = False, cache: bool = True) -> tuple[TensorLoader, TensorLoader]:
    """Train and eval :class:`~timm_ff.tensor_data.TensorLoader` s over the decoded splits.

    Args:
        data: Splits from :func:`load_image_datasets`.
        data_config: Output of ``timm.data.resolve_data_config(model=model)`` (input size, mean, std).
        batch_size: Training batch size per process.
        eval_batch_size: Eval batch size per process.
        in_chans: Model input channels (1: images converted to 'L', 3: 'RGB').
        seed: Seeds the epoch permutations and augmentation draws.
        drop_last: Drop the last incomplete training batch.
        aug: Training augmentation, one of :data:`~timm_ff.tensor_data.TRAIN_AUGS`.
        crop_padding: Zero padding (pixels) of 'crop_flip'.
        hflip: Horizontal flip probability.
        scale: Area range of 'rrc'.
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
                            channels_last=channels_last)
    eval_tf = BatchAugment(size, mean, std, train=False, channels_last=channels_last)
    train_split = decode_split(data.train, data.image_column, data.label_column, mode, cache=cache)
    eval_split = decode_split(data.eval, data.image_column, data.label_column, mode, cache=cache)
    train = TensorLoader(train_split, batch_size, train_tf, shuffle=True, drop_last=drop_last, **common)
    evals = TensorLoader(eval_split, eval_batch_size, eval_tf, shuffle=False, drop_last=False, **common)
    train.cache_note, evals.cache_note = train_split.cache_note, eval_split.cache_note
    return train, evals



@torch.no_grad()
def sample_accuracy(model: torch.nn.Module, dataset: str) -> dict | None:
    """Fused top-1 of ``model`` on the bundled test sample of ``dataset`` (None if none is bundled).

    The number a release's model card states and its test reproduces after a Hub download.
    """
    if dataset not in CHECK_SAMPLES:
        return None
    data = load_image_datasets(data_dir=str(CHECK_SAMPLES[dataset]))
    in_chans = getattr(model, 'in_chans', 3)
    config = timm.data.resolve_data_config(model=model)
    _, loader = create_loaders(data, data_config=config, batch_size=100, in_chans=in_chans, pipeline='tensor')
    model.eval()
    hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
    return dict(dataset=dataset, sample=CHECK_SAMPLES[dataset].name, split=str(data.eval.split),
                images=len(data.eval), accuracy=100.0 * hits / len(data.eval))
