"""The one place that names the Hub organisation of timm_ff's pretrained weights."""
import os

__all__ = ['HUB_ORG', 'RELEASED_TAGS', 'CIFAR10_CLASSES']

# Every pretrained tag's hf_hub_id is f'{HUB_ORG}/{arch}.{tag}'. TIMM_FF_HUB_ORG overrides it for
# mirrors and tests; it is read once, at import.
HUB_ORG = os.environ.get('TIMM_FF_HUB_ORG', 'timm-ff')

# The pretrained tags whose weights are released: the upload-ready folders release/<tag>/ of the
# repository (tests/test_hub.py checks this against release/release.json). Every other tag has a recipe
# only, and a pretrained load of it fails with a HubError naming these.
RELEASED_TAGS = ('dtgff_cnn_s.cifar10', 'dtgff_mlp.mnist', 'dtgff_resnet18.cifar10', 'ff_cnn_s.cifar10', 'ff_mlp.mnist')

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
