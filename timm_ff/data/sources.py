"""Where the images come from: a local parquet or image folder, the Hugging Face Hub, or a bundled sample.

:func:`load_image_datasets` is the entry point. A local folder (``data_dir``) holds either HF parquet
files (``<split>-NNNNN-of-NNNNN.parquet``) or an image-folder layout (``<split>/<class>/*.png``, or
torchvision's ``<class>/*.png``, read as one ``train`` split); every parquet file's footer is checked
first, so a truncated or corrupt file is named in one :class:`~timm_ff.errors.DataError`. A
registered name loads from the Hub (or its cache); when the Hub cannot be reached
(:func:`timm_ff._offline.hub_unavailable`) and CIFAR-10 was asked for, the real CIFAR-10 sample
bundled with the package (:data:`SAMPLE_DIR`) stands in, and :attr:`ImageData.source` says so.
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Iterator

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from datasets import load_dataset
from datasets.exceptions import DatasetGenerationError

from .._offline import hub_unavailable
from ..errors import DataError
from ..synthetic import describe as describe_synthetic
from .registry import GENERATED, DatasetSpec, get_dataset_spec, list_datasets
from .splits import ImageData, _select
from .subsets import HOLDOUT_SEED, ClassSelection, _holdout, cap_per_class, hold_out_check, select_classes

__all__ = ['SAMPLE_DIR', 'CHECK_SAMPLES', 'load_image_datasets']


SAMPLE_DIR = Path(__file__).resolve().parent.parent / '_sample' / 'cifar10-tiny'
"""Folder of the bundled real CIFAR-10 sample (950 train / 500 test images, columns ``img``, ``label``)."""
CHECK_SAMPLES = {'cifar10': SAMPLE_DIR, 'mnist': SAMPLE_DIR.parent / 'mnist-tiny'}
"""Bundled real samples per dataset (test split: 50 images per class) that release checks evaluate on."""

_IMAGE_EXTS = ('.png', '.jpg', '.jpeg')
_PARQUET_RE = re.compile(r'^(?P<split>\w+?)(?:-\d{5}-of-\d{5}(?:-[0-9a-f]+)?)?\.parquet$')
_PARQUET_ERRORS = (pa.ArrowException, OSError)
_LAYOUTS = ('a parquet folder (<dir>/<split>-00000-of-00001.parquet, <dir>/<split>.parquet or '
            '<dir>/data/<split>-*.parquet) or an image folder (<dir>/<split>/<class>/*.png|jpg|jpeg, or '
            '<dir>/<class>/*.png|jpg|jpeg as one train split)')
_SPLIT_NAMES = frozenset({'train', 'training', 'test', 'testing', 'validation', 'valid', 'val', 'dev', 'eval',
                          'evaluation'})


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


def _class_folder_files(root: Path) -> dict[str, list[str]]:
    """Collect ``<class>/<image>`` files in ``root`` (torchvision's ImageFolder layout) as one ``train`` split."""
    folders = {p.name: [str(f) for f in sorted(p.iterdir()) if f.is_file() and f.suffix.lower() in _IMAGE_EXTS]
               for p in sorted(root.iterdir()) if p.is_dir()}
    folders = {name: files for name, files in folders.items() if files}
    if folders and set(folders) <= _SPLIT_NAMES:
        raise DataError(f"data dir {str(root)!r} holds images directly in split folders ({', '.join(folders)}) "
                        f"with no class folders inside; expected {_LAYOUTS}")
    return {'train': [f for files in folders.values() for f in files]} if folders else {}


def _unreadable_parquet(path: str, err: Exception) -> DataError:
    """The one-line error for a parquet file pyarrow cannot read, with the layouts a data dir may have."""
    why = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return DataError(f"data file {path!r} is not readable parquet ({why}); it may be truncated or corrupt: "
                     f"re-download or re-export it. Expected {_LAYOUTS}, e.g. HF parquet files "
                     "train-*.parquet and test-*.parquet")


def _first_unreadable_parquet(files: dict[str, list[str]]) -> tuple[str, Exception] | None:
    """The first of ``files`` whose data pyarrow cannot read through, with its error; None if all read."""
    for path in (p for paths in files.values() for p in paths):
        try:
            with pq.ParquetFile(path) as f:
                for _ in f.iter_batches():
                    pass
        except _PARQUET_ERRORS as e:
            return path, e
    return None


def _load_local(data_dir: str) -> tuple[datasets.DatasetDict, str]:
    """Load a local parquet or image folder as a DatasetDict; return it and a description."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"data dir {data_dir!r} does not exist or is not a folder; expected {_LAYOUTS}")
    if not any(root.iterdir()):
        raise DataError(f"data dir {data_dir!r} is empty; expected {_LAYOUTS}")
    parquet = _parquet_files(root)
    if parquet:
        for path in (p for paths in parquet.values() for p in paths):
            try:
                pq.read_metadata(path)  # the footer only: cheap, and what a truncated file lacks
            except _PARQUET_ERRORS as e:
                raise _unreadable_parquet(path, e) from e
        try:
            dd = load_dataset('parquet', data_files=parquet)
        except (*_PARQUET_ERRORS, DatasetGenerationError) as e:
            bad = _first_unreadable_parquet(parquet)  # the footers were fine: read the files through
            if bad is None:
                raise
            raise _unreadable_parquet(*bad) from e
        return dd, f'local parquet folder {str(root)!r}'
    images = _imagefolder_files(root)
    if images:
        return load_dataset('imagefolder', data_files=images), f'local image folder {str(root)!r}'
    images = _class_folder_files(root)
    if images:  # the class folders' names are the labels, as in the <split>/<class> layout
        return load_dataset('imagefolder', data_files=images), f'local image folder {str(root)!r}'
    raise DataError(f"data dir {data_dir!r} has no recognisable layout; expected {_LAYOUTS}")


def load_image_datasets(name: str | None = None, data_dir: str | None = None,
                        label_column: str | None = None, image_column: str | None = None,
                        train_split: str | None = None, eval_split: str | None = None,
                        allow_sample_fallback: bool = True, dataset_kwargs: dict | None = None,
                        holdout: float = 0.0, max_per_class: int = 0, classes: ClassSelection = None,
                        check_images: int = 0) -> ImageData:
    """Load a train/eval pair of image-classification splits.

    The optional steps run in this order: ``holdout`` carves the eval split out of the train split,
    ``check_images`` moves training images to ``check`` (for the fusion check), ``max_per_class`` caps the training images per class, ``classes`` keeps (and renumbers, or groups)
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
        check_images: If > 0, hold out this many training images (class-stratified, seeded by
            :data:`HOLDOUT_SEED`, before the cap) as ``check``: the fusion check's images, never trained on.

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
    if check_images:
        data = hold_out_check(data, check_images)
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


@contextlib.contextmanager
def _datasets_offline(offline: bool) -> Iterator[None]:
    """Make ``datasets`` use only its cache while ``offline`` (it reads ``HF_HUB_OFFLINE`` at import)."""
    saved = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = saved or offline
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = saved
