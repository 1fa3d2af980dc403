"""Downloads from the Hub with clear offline errors: files, recipes, pretrained models, checkpoints.

Offline (``HF_HUB_OFFLINE=1``) or with the Hub unreachable (:func:`hub_unavailable`, a short TCP
probe instead of huggingface_hub's retries), only the cache is used and anything missing fails at once
with a :class:`HubError` naming the local alternatives.
"""
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import yaml
from timm.models import load_checkpoint

from ..errors import CheckpointError, HubError
from ._common import (CONFIG_NAME, HF_HUB_PREFIX, LOCAL_DIR_PREFIX, WEIGHTS_NAME, check_repo_id, hub_unavailable,
                      request_errors)
from .integrity import _state_shapes, read_safetensors_header

__all__ = ['hub_download', 'fetch_recipe', 'create_pretrained', 'load_initial_checkpoint']

_logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ downloading
def _split_hub_source(source: str) -> Tuple[str, Optional[str]]:
    """``'hf-hub:ORG/NAME@REV'`` (prefix optional) -> ``('ORG/NAME', 'REV')``."""
    repo_id, _, revision = source.removeprefix(HF_HUB_PREFIX).partition('@')
    return check_repo_id(repo_id), revision or None


def _local_alternatives(tag: Optional[str] = None) -> str:
    """How to load weights without the Hub (the end of every failed-download message)."""
    return ("Use a local copy instead: timm.create_model('local-dir:PATH', pretrained=True) or "
            'timm_ff.hub.load_model_folder(PATH) for a folder holding model.safetensors + config.json; for a '
            f"pretrained tag, timm.create_model({repr(tag) if tag else 'NAME'}, pretrained=True, "
            "pretrained_cfg_overlay=dict(file='PATH/model.safetensors')); "
            'for train_ff.py, --initial-checkpoint PATH or -c PATH/recipe.yaml')


def _offline_message(repo_id: str, filename: str, reason: str) -> str:
    """The one message every failed download gives: what failed and the local alternatives."""
    return f'cannot download {filename} of Hub repo {repo_id!r}: {reason}. {_local_alternatives()}'


def pretrained_tag_message(tag: str, repo_id: str, reason: str) -> str:
    """The one line a pretrained tag whose weights cannot be had gives (plain timm and ``create_pretrained``).

    Names the tag, its Hub repo and why, the tags whose weights are released
    (:data:`~timm_ff.models._hub_org.RELEASED_TAGS`) and the local alternatives.
    """
    from ..models._hub_org import RELEASED_TAGS
    return (f'no weights for pretrained tag {tag!r}: cannot download {WEIGHTS_NAME} of Hub repo {repo_id!r}: '
            f"{reason}. Weights are released only for {', '.join(RELEASED_TAGS)} (each in release/<tag>/ of the "
            f'timm_ff repository). {_local_alternatives(tag)}')


def _one_line(e: BaseException) -> str:
    """The first non-empty line of an exception's text (huggingface_hub's span several)."""
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)


def _why_not_downloaded(e: BaseException) -> str:
    """Why huggingface_hub could not give a file, in a few words on one line."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)
    if isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        if constants.HF_HUB_OFFLINE:
            return 'HF_HUB_OFFLINE=1 is set and the file is not in the cache'
        return f'the Hub at {constants.ENDPOINT} could not be reached and the file is not in the cache'
    if isinstance(e, RepositoryNotFoundError):
        return (f'the repo does not exist at {constants.ENDPOINT} (these weights are not published there, or the '
                'repo is private and you are not logged in)')
    if isinstance(e, RevisionNotFoundError):
        return 'the repo has no such revision'
    if isinstance(e, EntryNotFoundError):
        return 'the repo holds no weights file'
    return f'the download failed ({_one_line(e)})'


def pretrained_load_error(name: str, repo_id: str, e: BaseException, tag: bool) -> HubError:
    """The :class:`HubError` for timm's Hub load of pretrained weights failing with ``e`` (one line).

    Args:
        name: The model's ``arch.tag`` (``tag=True``) or its ``hf-hub:`` name.
        repo_id: The Hub repo the weights come from.
        e: What timm's loader (huggingface_hub) raised.
        tag: Whether ``name`` is a registered pretrained tag (the message then names the released tags).
    """
    reason = _why_not_downloaded(e)
    if tag:
        return HubError(pretrained_tag_message(name, repo_id, reason))
    return HubError(_offline_message(repo_id, 'the weights', reason))


def pretrained_file_error(name: str, path: str) -> Optional[FileNotFoundError]:
    """The one-line error for ``pretrained_cfg_overlay=dict(file=path)`` naming no weights file (timm's has no text).

    Args:
        name: The model being built.
        path: The ``file`` timm could not load.

    Returns:
        The error, or None when ``path`` is a file (a FileNotFoundError then came from elsewhere).
    """
    if Path(path).is_file():
        return None
    folder = Path(path).is_dir()
    hint = (f"; for a run folder holding {WEIGHTS_NAME} + {CONFIG_NAME} use timm.create_model('local-dir:{path}', "
            'pretrained=True)') if folder else ''
    return FileNotFoundError(f"pretrained weights file {str(path)!r} for model {name!r} "
                             f"{'is a folder' if folder else 'does not exist'}: pretrained_cfg_overlay=dict(file=...) "
                             f"expects a .safetensors, .pth or .bin file of the model's weights{hint}")


def _download(repo_id: str, filename: str, revision: Optional[str], reason: Optional[str]) -> Path:
    """hf_hub_download with every failure as a :class:`HubError`; cache only when ``reason`` is set."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)
    from ..version import __version__
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=reason is not None,
                                    library_name='timm_ff', library_version=__version__))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        reason = reason or f'the Hub could not be reached ({e})'
        raise HubError(_offline_message(repo_id, filename, reason)) from e
    except RepositoryNotFoundError as e:
        raise HubError(f'Hub repo {repo_id!r} not found at {constants.ENDPOINT} (or it is private and you '
                       'are not logged in)') from e
    except RevisionNotFoundError as e:
        raise HubError(f'Hub repo {repo_id!r} has no revision {revision!r}') from e
    except EntryNotFoundError as e:
        raise HubError(f'Hub repo {repo_id!r} has no {filename} (not a timm_ff model repo?)') from e
    except request_errors() as e:
        raise HubError(f'downloading {filename} of Hub repo {repo_id!r} failed: {e}') from e


def hub_download(repo_id: str, filename: str, revision: Optional[str] = None) -> Path:
    """Download one file of a Hub model repo (or take it from the cache) and return its local path.

    Offline (``HF_HUB_OFFLINE=1``) or with the Hub unreachable only the cache is used, and a
    missing file fails at once with a :class:`HubError` naming the local alternatives.
    """
    return _download(check_repo_id(repo_id), filename, revision, hub_unavailable())


def _recipe_cache_dir() -> Path:
    """Where :func:`fetch_recipe` writes recipes: ``$HF_HOME/timm_ff/recipes``."""
    from huggingface_hub import constants
    return Path(constants.HF_HOME) / 'timm_ff' / 'recipes'


def fetch_recipe(source: str) -> Path:
    """A local recipe YAML for ``train_ff.py -c``.

    ``hf-hub:ORG/NAME[@REV]``: downloads the repo's config.json and writes its ``timm_ff.recipe``
    block to ``$HF_HOME/timm_ff/recipes/ORG--NAME[@REV].yaml``. A run folder gives its
    ``recipe.yaml``. Any other source is returned unchanged (``load_recipe`` reports a missing file).

    Raises:
        HubError: If the download fails or the repo's config.json has no recipe block.
    """
    if not source.startswith(HF_HUB_PREFIX):
        path = Path(source)
        return path / 'recipe.yaml' if path.is_dir() and (path / 'recipe.yaml').is_file() else path
    repo_id, revision = _split_hub_source(source)
    cfg_path = hub_download(repo_id, CONFIG_NAME, revision)
    try:
        recipe = json.loads(cfg_path.read_text())['timm_ff']['recipe']
    except (ValueError, KeyError, TypeError) as e:
        raise HubError(f'config.json of Hub repo {repo_id!r} has no timm_ff.recipe block '
                       '(not published by timm_ff)') from e
    if not isinstance(recipe, dict):
        raise HubError(f'timm_ff.recipe in config.json of Hub repo {repo_id!r} is not a mapping')
    out = _recipe_cache_dir() / (repo_id.replace('/', '--') + (f'@{revision}' if revision else '') + '.yaml')
    out.parent.mkdir(parents=True, exist_ok=True)
    text = f'# training recipe of {source} (config.json timm_ff.recipe)\n'
    text += yaml.safe_dump(recipe, sort_keys=True)
    tmp = out.with_name(f'.{out.name}.{os.getpid()}.tmp')
    tmp.write_text(text)
    os.replace(tmp, out)
    return out


def _tag_hub_id(name: str, kwargs: Dict[str, Any]) -> Optional[str]:
    """The ``hf_hub_id`` a pretrained ``timm.create_model(name, ...)`` downloads from, if any."""
    from timm.models import get_pretrained_cfg, split_model_name_tag
    overlay = kwargs.get('pretrained_cfg_overlay') or {}
    if not kwargs.get('pretrained') or kwargs.get('pretrained_cfg') or overlay.get('file') \
            or overlay.get('state_dict') or name.startswith(LOCAL_DIR_PREFIX):
        return None
    arch, tag = split_model_name_tag(name)
    try:
        cfg = get_pretrained_cfg(f'{arch}.{tag}' if tag else arch)
    except RuntimeError:
        return None
    return getattr(cfg, 'hf_hub_id', None) or None


def _tag_name(name: str) -> str:
    """``'arch.tag'`` of a pretrained tag name, with timm's default tag when ``name`` has none."""
    from timm.models import get_pretrained_cfg, split_model_name_tag
    arch, tag = split_model_name_tag(name)
    cfg = get_pretrained_cfg(f'{arch}.{tag}' if tag else arch, allow_unregistered=True)
    return f'{arch}.{cfg.tag}' if cfg is not None and cfg.tag else name


def _local_fallback(name: str, kwargs: Dict[str, Any], reason: str) -> Tuple[str, Dict[str, Any]]:
    """Point ``create_model`` at cached files when the Hub cannot be reached (HubError if none)."""
    if name.startswith(HF_HUB_PREFIX):
        repo_id, revision = _split_hub_source(name)
        _download(repo_id, CONFIG_NAME, revision, reason)
        weights = _download(repo_id, WEIGHTS_NAME, revision, reason)
        return f'{LOCAL_DIR_PREFIX}{weights.parent}', kwargs
    repo_id, revision = _split_hub_source(_tag_hub_id(name, kwargs) or '')
    try:
        weights = _download(repo_id, WEIGHTS_NAME, revision, reason)
    except HubError as e:  # the same line plain timm.create_model(tag, pretrained=True) gives
        why = f'{reason} and the file is not in the cache'
        raise HubError(pretrained_tag_message(_tag_name(name), repo_id, why)) from e
    overlay = dict(kwargs.get('pretrained_cfg_overlay') or {}, file=str(weights))
    return name, dict(kwargs, pretrained_cfg_overlay=overlay)


def create_pretrained(name: str, **kwargs: Any) -> torch.nn.Module:
    """``timm.create_model(name, pretrained=True, **kwargs)``; Hub failures become one :class:`HubError`.

    Works for ``hf-hub:ORG/NAME[@REV]``, ``local-dir:PATH`` and pretrained tags
    (``'dtgff_resnet18.cifar10'``). Offline or with the Hub unreachable, cached files are used and
    anything missing fails at once, naming the repo and the local alternatives.
    """
    import timm
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
    kwargs.setdefault('pretrained', True)
    hub_name = name[len(HF_HUB_PREFIX):] if name.startswith(HF_HUB_PREFIX) else _tag_hub_id(name, kwargs)
    if hub_name is not None:
        _split_hub_source(hub_name)
        reason = hub_unavailable()
        if reason is not None:
            name, kwargs = _local_fallback(name, kwargs, reason)
    try:
        return timm.create_model(name, **kwargs)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        reason = f'the Hub could not be reached ({e})'
        raise HubError(_offline_message(hub_name or name, 'the weights', reason)) from e
    except HfHubHTTPError as e:
        raise HubError(f'loading {name!r} from the Hub failed: {e}') from e
    except request_errors() as e:  # also OSErrors of local files: only a Hub load's are the Hub's fault
        if hub_name is None:
            raise
        raise HubError(f'loading {name!r} from the Hub failed: {e}') from e


# ---------------------------------------------------------------------------- initial checkpoints
def _classifier_prefixes(model: torch.nn.Module) -> Tuple[str, ...]:
    """State-dict prefixes of the model's classifier(s), from its pretrained_cfg."""
    classifier = (getattr(model, 'pretrained_cfg', None) or {}).get('classifier') or ()
    return (classifier,) if isinstance(classifier, str) else tuple(classifier)


def _resolve_checkpoint(source: str) -> Path:
    """Local safetensors path of an ``--initial-checkpoint`` value (downloading ``hf-hub:`` ones)."""
    if source.startswith(HF_HUB_PREFIX):
        repo_id, revision = _split_hub_source(source)
        return hub_download(repo_id, WEIGHTS_NAME, revision)
    path = Path(source.removeprefix(LOCAL_DIR_PREFIX))
    if path.is_dir():
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f'--initial-checkpoint {source!r}: no such file (expected a .safetensors file, '
                              'a run folder holding model.safetensors, or hf-hub:ORG/NAME)')
    return path


def _does_not_fit(source: str, model: torch.nn.Module, detail: str) -> CheckpointError:
    """The error for an initial checkpoint that does not fit ``model``."""
    return CheckpointError(f'--initial-checkpoint {source!r} does not fit {type(model).__name__}: {detail}')


def load_initial_checkpoint(model: torch.nn.Module, source: str) -> None:
    """Load weights to start training from: a safetensors file, a run folder or ``hf-hub:ORG/NAME[@REV]``.

    Every key must match. Only classifier weights (the pretrained_cfg's ``classifier`` modules) of
    a different class count are skipped and keep their fresh init, so a checkpoint can start a
    fine-tune on another dataset.

    Raises:
        CheckpointError: If the file is missing, corrupt, or does not fit the model.
        HubError: If an ``hf-hub:`` checkpoint cannot be downloaded.
    """
    path = _resolve_checkpoint(source)
    if path.suffix == '.safetensors':
        header = read_safetensors_header(path)
        expected = _state_shapes(model)
        prefixes = _classifier_prefixes(model)
        skip = {k for k, (_, shape) in header.items() if k in expected and tuple(shape) != expected[k]
                and any(k.startswith(p + '.') for p in prefixes)}
        if skip:
            _load_partial(model, path, skip, source)
            return
    try:
        load_checkpoint(model, str(path), strict=True)
    except (RuntimeError, ValueError) as e:
        raise _does_not_fit(source, model, str(e)) from e


def _load_partial(model: torch.nn.Module, path: Path, skip: set, source: str) -> None:
    """Load all but the ``skip`` (classifier) keys; any other missing or unexpected key is an error."""
    from safetensors.torch import load_file
    state = {k: v for k, v in load_file(str(path), device='cpu').items() if k not in skip}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise _does_not_fit(source, model, str(e)) from e
    bad = sorted(set(missing) - skip) + sorted(unexpected)
    if bad:
        raise _does_not_fit(source, model, f"missing or unexpected keys {', '.join(bad[:6])}")
    _logger.info('initial checkpoint %s: classifier weights %s re-initialised (class count differs)',
                 source, ', '.join(sorted(skip)))

