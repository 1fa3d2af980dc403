"""A train/eval pair of splits (:class:`ImageData`) and how its splits and columns are chosen.

Given a ``DatasetDict`` from any source, :func:`_select` picks the train and eval splits (the
dataset's defaults, else ``train`` and the first of test/validation/valid/val), the image column
(the first ``datasets.Image`` feature) and the label column (the first ``ClassLabel`` or integer
column), and counts the classes. Each failure names what was found and the flag that fixes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import datasets

from ..errors import DataError
from .registry import DatasetSpec

__all__ = ['ImageData']

_EVAL_SPLIT_FALLBACKS = ('test', 'validation', 'valid', 'val')


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
        check: Training images held out of ``train`` (never trained on) for the fusion check, or None.
    """

    train: datasets.Dataset
    eval: datasets.Dataset
    image_column: str
    label_column: str
    num_classes: int
    class_names: list[str] | None
    source: str
    is_sample: bool = False
    check: datasets.Dataset | None = None


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
