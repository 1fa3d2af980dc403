"""timm_ff: Forward-Forward and layer-local training as a timm + Accelerate plugin.

``import timm_ff`` registers the FF backbones with timm (``timm.create_model('dtgff_resnet18')``)
and the local objectives with :func:`timm_ff.create_objective`. Users add their own local rules
with :func:`register_objective`, goodness modes with :func:`register_goodness` and unit heads with
:func:`register_head` (see the README).
"""
from .version import __version__
from .errors import CheckpointError, ConfigError, DataError, HubError, TimmFFError, TrainingError
from .models import (DTGFF_DEFAULTS, DTGFF_RESNET_DEFAULTS, FF_CONV_DEFAULTS, FF_DEFAULTS, FF_KWARGS, FFCNN, FFMLP,
                     FFNet, FFResNet, HUB_ORG, LocalUnit)
from .layers import list_goodness, list_heads, register_goodness, register_head
from .objectives import create_objective, list_objectives, register_objective
from .methods import Method, get_method, list_methods, register_method
