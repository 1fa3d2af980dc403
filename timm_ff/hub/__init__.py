"""timm_ff models on the Hugging Face Hub: save, validate, publish, download, release.

A published timm_ff model is a Hub repo holding exactly three files, in timm's own format:

* ``model.safetensors``: the weights (never a pickle), written by timm's ``save_for_hf``;
* ``config.json``: timm's config (``architecture``, ``num_classes``, ``pretrained_cfg``,
  ``model_args``) plus a ``timm_ff`` block with the exact training ``recipe``, ``run_info`` and
  ``metrics``;
* ``README.md``: a model card (metrics, command, git commit, sha256, how to load it).

``timm.create_model('hf-hub:ORG/NAME', pretrained=True)`` loads such a repo once ``import timm_ff``
has registered the architectures. Downloads here fail at once with a :class:`HubError` naming the
local alternative when the Hub is unreachable or ``HF_HUB_OFFLINE=1`` is set.

Modules: :mod:`~timm_ff.hub.save` (model folders), :mod:`~timm_ff.hub.integrity` (checks before
loading or publishing), :mod:`~timm_ff.hub.card` (model card), :mod:`~timm_ff.hub.publish`
(upload), :mod:`~timm_ff.hub.download` (downloads, pretrained models, initial checkpoints),
:mod:`~timm_ff.hub.release` (release folders) and :mod:`~timm_ff.hub.cli` (command line).

CLI::

    python -m timm_ff.hub push RUN_DIR ORG/NAME [--private] [--revision R] [--dry-run DIR]
    python -m timm_ff.hub release [--runs RUNS_ROOT] [--out DIR]
    python -m timm_ff.hub card RUN_DIR
"""
from ..errors import CheckpointError, HubError, TimmFFError  # noqa: F401  (importable from here too)
from ..models._hub_org import HUB_ORG  # noqa: F401
from ._common import (  # noqa: F401  (the repo layout, importable from here too)
    CARD_NAME, CARD_TAGS, CONFIG_NAME, HF_HUB_PREFIX, LICENSE, LOCAL_DIR_PREFIX, UPLOAD_FILES, WEIGHTS_NAME,
    PathLike, check_repo_id, hub_unavailable,
)
from .card import model_card
from .cli import main
from .download import create_pretrained, fetch_recipe, hub_download, load_initial_checkpoint
from .integrity import (
    list_ff_models, load_model_folder, read_safetensors_header, sha256_file, validate_model_folder,
    validate_run_folder,
)
from .publish import build_upload_folder, publish_run, upload_folder
from .release import build_release, match_release_runs
from .save import full_state_dict, save_model_folder

__all__ = [
    'full_state_dict', 'save_model_folder', 'load_initial_checkpoint', 'list_ff_models',
    'read_safetensors_header', 'sha256_file', 'validate_model_folder', 'load_model_folder',
    'validate_run_folder', 'model_card', 'check_repo_id', 'build_upload_folder', 'upload_folder',
    'publish_run', 'hub_download', 'fetch_recipe', 'create_pretrained', 'match_release_runs',
    'build_release', 'main',
]
