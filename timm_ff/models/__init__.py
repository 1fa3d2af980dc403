"""timm_ff backbones; importing this registers them with timm."""
from ._ffnet import DTGFF_DEFAULTS, FF_CONV_DEFAULTS, FF_DEFAULTS, FF_KWARGS, FFNet, LocalUnit
from ._hub_org import HUB_ORG
from .ff_cnn import FFCNN
from .ff_mlp import FFMLP
from .ff_resnet import DTGFF_RESNET_DEFAULTS, FFResNet
