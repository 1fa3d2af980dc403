"""Accuracy on the bundled real test samples.

:func:`sample_accuracy` gives the number a release's model card states and a download re-checks.
"""
from __future__ import annotations

import timm.data
import torch

from .loaders import create_loaders
from .sources import CHECK_SAMPLES, load_image_datasets

__all__ = ['sample_accuracy']


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
