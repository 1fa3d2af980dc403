"""What every part of :mod:`timm_ff.hub` shares: the repo's file names, source prefixes, repo ids.

Also :func:`staged_files`, the one way the package writes a folder's files atomically, and
:func:`hub_unavailable` (defined in :mod:`timm_ff._offline`, which :mod:`timm_ff.data` uses too).
"""
import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence, Tuple, Union

from .._offline import hub_unavailable
from ..errors import HubError

__all__ = [
    'PathLike', 'WEIGHTS_NAME', 'CONFIG_NAME', 'CARD_NAME', 'UPLOAD_FILES', 'CARD_TAGS', 'LICENSE',
    'HF_HUB_PREFIX', 'LOCAL_DIR_PREFIX', 'check_repo_id', 'request_errors', 'hub_unavailable',
    'staged_files',
]

PathLike = Union[str, os.PathLike]
WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'
CARD_NAME = 'README.md'
UPLOAD_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)
CARD_TAGS = ('image-classification', 'timm', 'forward-forward', 'timm_ff')
LICENSE = 'apache-2.0'
HF_HUB_PREFIX = 'hf-hub:'
LOCAL_DIR_PREFIX = 'local-dir:'
_REPO_ID = re.compile(r'^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$')


def check_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` if it is ``ORG/NAME`` and huggingface_hub's ``validate_repo_id`` accepts it, else raise
    :class:`HubError` (no network)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id
    expected = ('expected ORG/NAME (letters, digits, ".", "-", "_"; no part starting or ending with "." or "-", '
                'no "--" or "..", not ending in ".git", each part at most 96 characters)')
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or '..' in repo_id:
        raise HubError(f'bad Hub repo id {repo_id!r}: {expected}')
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HubError(f'bad Hub repo id {repo_id!r}: {expected}; huggingface_hub says: {e}') from e
    return repo_id


def request_errors() -> Tuple[type, ...]:
    """What a failed Hub request raises: HTTP errors, refused connections and connections dropped mid-transfer.

    ``OSError`` (which ``HfHubHTTPError`` is) plus the base error of huggingface_hub's HTTP client (httpx in
    1.x/2.x; in 0.x requests, whose errors already are ``OSError``), found as the bases of ``HfHubHTTPError``
    so that no client is named here.
    """
    from huggingface_hub.errors import HfHubHTTPError
    return (OSError, *HfHubHTTPError.__bases__)


@contextlib.contextmanager
def staged_files(out_dir: Path, prefix: str, names: Sequence[str]) -> Iterator[Path]:
    """A temporary folder inside ``out_dir``; when the block succeeds, its ``names`` move into ``out_dir``.

    Each file is renamed into place only after all were written, so an interrupted write never
    leaves a half-written file in ``out_dir``. The temporary folder is always removed.

    Args:
        out_dir: Existing destination folder.
        prefix: Name prefix of the temporary folder.
        names: Files the block writes into the temporary folder.
    """
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=out_dir))
    try:
        yield tmp
        for name in names:
            os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
