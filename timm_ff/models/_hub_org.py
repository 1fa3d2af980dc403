"""The one place that names the Hub organisation of timm_ff's pretrained weights."""
import os

__all__ = ['HUB_ORG', 'CIFAR10_CLASSES']

# Every pretrained tag's hf_hub_id is f'{HUB_ORG}/{arch}.{tag}'. TIMM_FF_HUB_ORG overrides it for
# mirrors and tests; it is read once, at import.
HUB_ORG = os.environ.get('TIMM_FF_HUB_ORG', 'timm-ff')

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
