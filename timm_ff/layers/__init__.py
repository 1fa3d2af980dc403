"""Small reusable DTG-FF layers: goodness heads, temperature, between-unit norms, fusion."""
from .fusion import FUSION_MODES, LogitFusion
from .goodness import (GOODNESS_MODES, GOODNESS_REDUCE, HEAD_NORMS, HEAD_PROJ, FixedLinear, GoodnessHead, goodness_vector,
                       list_goodness, register_goodness)
from .temperature import TEMPERATURES, DynamicTemperature, FixedTemperature, clarity_stats, create_temperature
from .unit_norm import UNIT_NORMS, ChannelLayerNorm, LengthNorm, create_unit_norm
from .sync_bn import SyncBatchNorm, convert_sync_batchnorm
from .heads import HEADS, ClassHead, check_head, create_head_trunk, list_heads, register_head
