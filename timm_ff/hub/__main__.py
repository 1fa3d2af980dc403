"""``python -m timm_ff.hub``: the :mod:`timm_ff.hub.cli` command line."""
from .cli import main

raise SystemExit(main())
