"""Smaller views of the loaded splits: a held-out eval split, a per-class cap, class subsets or groups.

:func:`load_image_datasets` applies them in this order: ``holdout`` (:func:`_holdout`) carves a
stratified eval split out of the train split, :func:`cap_per_class` keeps the first N training
images per class, :func:`select_classes` keeps (and renumbers, or groups) classes in both splits.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Union

import datasets

from ..errors import DataError
from .registry import DatasetSpec
from .splits import ImageData, _pick_label_column

__all__ = ['HOLDOUT_SEED', 'ClassSelection', 'hold_out_check', 'cap_per_class', 'select_classes']


HOLDOUT_SEED = 0
"""Seed of the held-out eval split (``holdout``): the same images for every run seed."""
ClassSelection = Union[int, list, dict, None]
CHECK_MAX_DIVISOR = 10
"""At most ``1 / CHECK_MAX_DIVISOR`` of the train split is held out for the fusion check."""


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


def hold_out_check(data: ImageData, images: int) -> ImageData:
    """Move ``images`` training images (class-stratified, seeded by :data:`HOLDOUT_SEED`) to ``data.check``.

    The fusion check judges on them: images the units never trained on, so it cannot prefer a unit
    that fits the training set better than it generalises. At most a tenth of the train split is held
    out (fewer images than asked for on a small split; ``source`` says how many), and nothing when that
    tenth cannot hold one image per class (then there is no fusion check).
    """
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise DataError(f'check_images (--fusion-check-images) must be a positive integer, got {images!r}')
    n = len(data.train)
    images = min(images, n // CHECK_MAX_DIVISOR)
    label = data.label_column
    labels = data.train[label]
    if images < len(set(labels)):  # a stratified slice needs an image of every class: too small a split to spare one
        return dataclasses.replace(data, source=data.source + f' (too few training images to hold out one per class '
                                                              f'for the fusion check: no fusion check)')
    feature = data.train.features[label]
    # split the (index, label) pairs only, then select: both parts keep split order (a cap still takes the first N)
    pairs = datasets.Dataset.from_dict({'index': list(range(n)), label: labels},
                                       features=datasets.Features(index=datasets.Value('int64'), **{label: feature}))
    stratify = label if isinstance(feature, datasets.ClassLabel) else None
    try:
        parts = pairs.train_test_split(test_size=images, stratify_by_column=stratify, seed=HOLDOUT_SEED)
    except ValueError as e:  # fewer held-out rows than classes
        raise DataError(f'cannot hold out {images} of the {n} training images stratified by {label!r} '
                        f'({str(e).splitlines()[0]}): hold out at least one image per class') from e
    return dataclasses.replace(data, train=data.train.select(sorted(parts['train']['index'])),
                               check=data.train.select(sorted(parts['test']['index'])),
                               source=data.source + f' ({images} training images held out for the fusion check)')


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
    check = restrict(data.check) if data.check is not None else None
    return dataclasses.replace(data, train=restrict(data.train), eval=restrict(data.eval), check=check,
                               num_classes=len(names),
                               class_names=names, source=data.source + f' (classes: {what})')
