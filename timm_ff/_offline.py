"""Whether the Hugging Face Hub can be reached right now, for every part of timm_ff that loads from it.

This module sits below both :mod:`timm_ff.data` (Hub datasets) and :mod:`timm_ff.hub` (Hub models)
and imports neither, so the two never import each other through it. :mod:`timm_ff.hub` re-exports
:func:`hub_unavailable`.
"""
import os
import socket
from typing import Optional
from urllib.parse import urlsplit

__all__ = ['hub_unavailable']

_PROBE_TIMEOUT_S = 3.0
_PROXY_VARS = ('HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy', 'ALL_PROXY', 'all_proxy')


def hub_unavailable() -> Optional[str]:
    """Why the Hub cannot be reached right now (offline mode, no route), or None if it may be.

    A short TCP probe of ``HF_ENDPOINT`` replaces huggingface_hub's retries (~25 s per file),
    so an unreachable Hub fails at once. With a proxy configured the probe is skipped.
    """
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE:
        return 'HF_HUB_OFFLINE=1 is set'
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return None
    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == 'https' else 80)
    try:
        with socket.create_connection((url.hostname or '', port), timeout=_PROBE_TIMEOUT_S):
            return None
    except OSError as e:
        return f'the Hub at {constants.ENDPOINT} cannot be reached ({e})'
