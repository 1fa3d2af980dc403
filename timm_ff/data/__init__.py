"""Image-classification data for timm_ff: a small dataset registry, loading and DataLoaders.

Datasets come from the Hugging Face Hub (``load_dataset(hub_id)``) or from a local folder holding either
HF parquet files (``<split>-NNNNN-of-NNNNN.parquet``) or an image-folder layout
(``<split>/<class>/*.png``, or ``<class>/*.png`` as one train split). When the Hub cannot be reached
and CIFAR-10 was asked for, a small real CIFAR-10 sample bundled with the package is used instead, and
:attr:`ImageData.source` says so.
Two data paths (``choose_pipeline``): small fixed-size images are decoded once into uint8 tensors
and augmented per batch (:mod:`timm_ff.data.tensor`); large or variable-size images go through
timm transforms (``timm.data.create_transform``) per image in a ``DataLoader``. Both follow the
model's data config and keep exact resume.

Modules, one concept each (every public name is importable from :mod:`timm_ff.data` too):

* :mod:`~timm_ff.data.registry`: :class:`DatasetSpec`, the dataset table, :func:`list_datasets`,
  :func:`get_dataset_spec`;
* :mod:`~timm_ff.data.sources`: local parquet / image folders, the Hub, the bundled samples
  (:data:`SAMPLE_DIR`, :data:`CHECK_SAMPLES`) and :func:`load_image_datasets`;
* :mod:`~timm_ff.data.splits`: :class:`ImageData` and how splits and columns are picked;
* :mod:`~timm_ff.data.subsets`: holdout, :func:`hold_out_check`, :func:`cap_per_class`, :func:`select_classes`;
* :mod:`~timm_ff.data.transforms`: :func:`make_transform`, per-sample seeded augmentation,
  :func:`set_augmentation_epoch`;
* :mod:`~timm_ff.data.loaders`: :func:`create_loaders` (the PIL path), :func:`batches_per_process`;
* :mod:`~timm_ff.data.tensor`: the batch-tensor path (:func:`decode_split`, :class:`BatchAugment`,
  :class:`TensorLoader`, :func:`choose_pipeline`, :func:`create_tensor_loaders`);
* :mod:`~timm_ff.data.evaluate`: :func:`sample_accuracy` on the bundled samples.

Nothing here imports :mod:`timm_ff.hub`; the Hub reachability probe lives in :mod:`timm_ff._offline`.
"""
from .evaluate import sample_accuracy
from .loaders import batches_per_process, create_loaders
from .registry import GENERATED, DatasetSpec, get_dataset_spec, list_datasets
from .sources import CHECK_SAMPLES, SAMPLE_DIR, load_image_datasets
from .splits import ImageData
from .subsets import HOLDOUT_SEED, ClassSelection, cap_per_class, hold_out_check, select_classes
from .tensor import (
    DATA_PIPELINES, TENSOR_MEMORY_BUDGET, TRAIN_AUGS, BatchAugment, DecodedSplit, TensorLoader,
    check_augmentation, choose_pipeline, create_tensor_loaders, decode_split, decoded_cache_dir,
    estimate_bytes, per_image_uniform,
)
from .transforms import make_transform, set_augmentation_epoch

__all__ = [
    'DatasetSpec', 'ImageData', 'list_datasets', 'get_dataset_spec', 'load_image_datasets',
    'make_transform', 'create_loaders', 'set_augmentation_epoch', 'choose_pipeline', 'batches_per_process',
    'SAMPLE_DIR', 'CHECK_SAMPLES', 'TENSOR_MEMORY_BUDGET', 'sample_accuracy', 'select_classes', 'cap_per_class', 'hold_out_check',
    'HOLDOUT_SEED',
    # also importable from here: the generated datasets, class selections and the tensor path
    'GENERATED', 'ClassSelection', 'create_tensor_loaders', 'DATA_PIPELINES', 'TRAIN_AUGS', 'BatchAugment',
    'DecodedSplit', 'TensorLoader', 'check_augmentation', 'decode_split', 'decoded_cache_dir',
    'estimate_bytes', 'per_image_uniform',
]
