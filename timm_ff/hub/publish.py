"""Publishing a finished run: build its upload folder, upload it to a Hub model repo.

An upload folder holds exactly ``model.safetensors`` (copied byte for byte from the run),
``config.json`` (the run's, with local paths scrubbed from its recipe block) and the ``README.md`` model card.
"""
import json
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Tuple

from ..errors import HubError
from ._common import (CARD_NAME, CONFIG_NAME, UPLOAD_FILES, WEIGHTS_NAME, PathLike, check_repo_id,
                      hub_unavailable, request_errors, staged_files)
from .card import model_card, scrub_paths
from .integrity import validate_run_folder

__all__ = ['build_upload_folder', 'upload_folder', 'publish_run']


def build_upload_folder(run_dir: PathLike, out_dir: PathLike, repo_id: str) -> Path:
    """Validate a finished run and write its upload folder: model.safetensors, config.json, README.md.

    The weights are copied byte for byte from the run; config.json too (timm's ``save_for_hf`` wrote
    it), except that local paths in its ``timm_ff`` recipe block (data folder, output folder, the
    command) become ``<local>/<last part>``, as in the card; README.md is :func:`model_card`.

    Raises:
        CheckpointError: If the run fails :func:`validate_run_folder`.
        HubError: If ``repo_id`` is malformed or ``out_dir`` holds other files.
    """
    run = Path(run_dir)
    check_repo_id(repo_id)
    validate_run_folder(run)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(p.name not in UPLOAD_FILES for p in out.iterdir())):
        raise HubError(f'{out} exists and holds other files; pick an empty or new folder')
    out.mkdir(parents=True, exist_ok=True)
    with staged_files(out, '.upload_', UPLOAD_FILES) as tmp:
        shutil.copyfile(run / WEIGHTS_NAME, tmp / WEIGHTS_NAME)
        (tmp / CONFIG_NAME).write_text(_portable_config(run / CONFIG_NAME), encoding='utf-8')
        (tmp / CARD_NAME).write_text(model_card(run, repo_id), encoding='utf-8')
    return out


def _scrub(value):
    """``value`` with local paths in every string scrubbed (dicts and lists recursively)."""
    if isinstance(value, str):
        return scrub_paths(value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _portable_config(path: Path) -> str:
    """A run's config.json text with no local paths in its ``timm_ff`` block (the rest is timm's, untouched)."""
    cfg = json.loads(path.read_text())
    if 'timm_ff' in cfg:
        cfg['timm_ff'] = _scrub(cfg['timm_ff'])
    return json.dumps(cfg, indent=2) + '\n'


def _require_hub_for_upload(repo_id: str) -> None:
    """Raise :class:`HubError` at once if an upload to ``repo_id`` cannot reach the Hub."""
    reason = hub_unavailable()
    if reason is not None:
        raise HubError(f'cannot upload to Hub repo {repo_id!r}: {reason}; '
                       'use --dry-run DIR (dry_run=True) to only write the upload folder')


def upload_folder(folder: PathLike, repo_id: str, *, private: bool = False, revision: Optional[str] = None,
                  token: Optional[str] = None, commit_message: Optional[str] = None) -> str:
    """Upload an upload folder's three files to a Hub model repo; return the commit URL.

    Creates the repo (``exist_ok``) and, for a revision other than main, the branch if needed.

    Raises:
        HubError: If the Hub is offline/unreachable or refuses the upload.
    """
    from huggingface_hub import HfApi
    from ..version import __version__
    check_repo_id(repo_id)
    _require_hub_for_upload(repo_id)
    api = HfApi(token=token, library_name='timm_ff', library_version=__version__)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision and revision != 'main':
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        message = commit_message or f'Upload {repo_id.split("/")[-1]} (timm_ff)'
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                                 allow_patterns=list(UPLOAD_FILES), commit_message=message)
    except (ValueError, *request_errors()) as e:
        raise HubError(f'upload to Hub repo {repo_id!r} failed: {e}') from e
    return str(info.commit_url)


def _publish(run_dir: PathLike, repo_id: str, *, private: bool, revision: Optional[str], dry_run: bool,
             out_dir: Optional[PathLike], token: Optional[str]) -> Tuple[Path, Optional[str]]:
    """:func:`publish_run`, also returning the commit URL (None for a dry run)."""
    check_repo_id(repo_id)
    if not dry_run:
        _require_hub_for_upload(repo_id)
    keep = dry_run or out_dir is not None
    folder = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix='timm_ff_publish_'))
    try:
        build_upload_folder(run_dir, folder, repo_id)
        if dry_run:
            return folder, None
        return folder, upload_folder(folder, repo_id, private=private, revision=revision, token=token)
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def publish_run(run_dir: PathLike, repo_id: str, *, private: bool = False, revision: Optional[str] = None,
                dry_run: bool = False, out_dir: Optional[PathLike] = None,
                token: Optional[str] = None) -> Path:
    """Publish a finished train_ff.py run to the Hub as a timm model repo.

    Builds the upload folder (:func:`build_upload_folder`: model.safetensors, config.json with the
    ``timm_ff`` recipe block, README.md model card), then uploads it (:func:`upload_folder`)
    unless ``dry_run``.

    Args:
        run_dir: Finished run folder (holds metrics.json).
        repo_id: ``ORG/NAME`` of the Hub model repo (created if needed).
        private: Create the repo private (ignored when it already exists).
        revision: Branch to commit to (created from main if missing); default main.
        dry_run: Only write the upload folder.
        out_dir: Where to write the upload folder; default a temporary folder, which is kept for a
            dry run and deleted after an upload.
        token: Hub token (default: the saved login / ``HF_TOKEN``).

    Returns:
        The upload folder.
    """
    return _publish(run_dir, repo_id, private=private, revision=revision, dry_run=dry_run, out_dir=out_dir,
                    token=token)[0]
