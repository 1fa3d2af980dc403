"""Local objectives, registered by name: ``dtg``, ``ff``, ``bp``, ``bp_deepsup``."""
from ._base import Objective, create_objective, list_objectives, register_objective
from . import bp, bp_deepsup, dtg, ff  # noqa: F401  (registration)
from . import cwcomp, predsim  # noqa: F401  (registration)
from . import deeperforward, scff  # noqa: F401  (registration)
