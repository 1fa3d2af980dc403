"""Linear probing: train only the classifier of a (pretrained) timm_ff model on its frozen features.

The classifier of a model with class heads is every unit's goodness -> logits map (``units.<u>.head.proj``,
the pretrained_cfg's ``classifier`` modules) plus the fusion weights. Everything else is frozen: the
unit bodies and stem, the temperature networks, and the BatchNorm statistics (BatchNorm layers run in
eval mode even while the model trains, so the features do not drift with the probe's batches). With
the ``dtg`` or ``bp_deepsup`` objective this fits one linear probe per unit depth; with ``bp`` only
the last unit's.
"""
import re
from typing import List

import torch.nn as nn

from .errors import ConfigError

__all__ = ['freeze_for_linear_probe']

_CLASSIFIER = re.compile(r'^(units\.\d+\.head\.proj|fusion)\.')


def _keep_eval(module: nn.Module, args):
    module.train(False)


def freeze_for_linear_probe(model: nn.Module) -> List[str]:
    """Freeze everything but the classifier; returns the names of the parameters left trainable.

    Raises:
        ConfigError: For a classic FF model (its labels enter at the input: nothing to probe on
            frozen features), a model without classes, or one whose head projections have nothing to train.
    """
    if getattr(model, 'label_embed_enabled', False):
        raise ConfigError('--linear-probe needs a model with class heads (label_embed=False, e.g. dtgff_cnn_s): '
                          'a classic FF model embeds the label at its input, so no classifier sits on frozen features')
    if getattr(model, 'num_classes', 0) <= 0:
        raise ConfigError('--linear-probe needs a model with num_classes > 0')
    trainable = []
    for name, p in model.named_parameters():
        keep = bool(_CLASSIFIER.match(name))
        p.requires_grad_(keep)
        if keep:
            trainable.append(name)
    if not any('.head.proj.' in n for n in trainable):
        raise ConfigError("--linear-probe: the head projections have nothing to train (head_proj='fixed' or "
                          "'class_groups'), so there is no classifier to train")
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.register_forward_pre_hook(_keep_eval)
    return trainable
