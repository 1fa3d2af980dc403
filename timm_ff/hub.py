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

CLI::

    python -m timm_ff.hub push RUN_DIR ORG/NAME [--private] [--revision R] [--dry-run DIR]
    python -m timm_ff.hub release [--runs RUNS_ROOT] [--out DIR]
    python -m timm_ff.hub card RUN_DIR
"""
import argparse
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

import torch
import yaml
from timm.models import load_checkpoint, save_for_hf

from .errors import CheckpointError, HubError, TimmFFError
from .models._hub_org import HUB_ORG

__all__ = [
    'full_state_dict', 'save_model_folder', 'load_initial_checkpoint', 'list_ff_models',
    'read_safetensors_header', 'sha256_file', 'validate_model_folder', 'load_model_folder',
    'validate_run_folder', 'model_card', 'check_repo_id', 'build_upload_folder', 'upload_folder',
    'publish_run', 'hub_download', 'fetch_recipe', 'create_pretrained', 'match_release_runs',
    'build_release', 'main',
]

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'
CARD_NAME = 'README.md'
UPLOAD_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)
CARD_TAGS = ('image-classification', 'timm', 'forward-forward', 'timm_ff')
LICENSE = 'apache-2.0'
HF_HUB_PREFIX = 'hf-hub:'
LOCAL_DIR_PREFIX = 'local-dir:'
_PROBE_TIMEOUT_S = 3.0
_PROXY_VARS = ('HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy', 'ALL_PROXY', 'all_proxy')
_REPO_ID = re.compile(r'^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$')
_SAFETENSORS_ITEMSIZE = {
    'BOOL': 1, 'U8': 1, 'I8': 1, 'F8_E4M3': 1, 'F8_E5M2': 1, 'F8_E8M0': 1, 'F4': 1, 'U16': 2, 'I16': 2,
    'F16': 2, 'BF16': 2, 'U32': 4, 'I32': 4, 'F32': 4, 'U64': 8, 'I64': 8, 'F64': 8, 'C64': 8,
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024


# ----------------------------------------------------------------------------------------- saving
def full_state_dict(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """A plain, unsharded CPU state dict, also for FSDP2-sharded (DTensor) models."""
    if any(type(p).__name__ == 'DTensor' for p in model.parameters()):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def save_model_folder(model: torch.nn.Module, out_dir: Path, extra_config: Optional[Dict] = None) -> Path:
    """Write ``model.safetensors`` + timm ``config.json`` into ``out_dir`` atomically.

    The files are written by timm's ``save_for_hf`` into a temporary folder beside ``out_dir`` and
    then renamed into place, so an interrupted save never leaves a half-written model.

    Args:
        model: A timm_ff model (``model.model_args`` holds its JSON-serialisable kwargs).
        out_dir: Destination folder (created if needed).
        extra_config: Extra top-level blocks for config.json (e.g. ``{'timm_ff': {...recipe...}}``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = full_state_dict(model)
    tmp = Path(tempfile.mkdtemp(prefix='.save_', dir=out_dir))
    try:
        shadow = _cpu_copy(model, state)
        save_for_hf(shadow, str(tmp), model_args=dict(model.model_args), safe_serialization=True)
        if extra_config:
            cfg_path = tmp / CONFIG_NAME
            cfg = json.loads(cfg_path.read_text())
            cfg.update(extra_config)
            cfg_path.write_text(json.dumps(cfg, indent=2, default=str) + '\n')
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _cpu_copy(model: torch.nn.Module, state: Dict[str, torch.Tensor]) -> torch.nn.Module:
    """The model itself when it is a plain CPU/GPU model, else a fresh copy holding ``state``."""
    if not any(type(p).__name__ == 'DTensor' for p in model.parameters()):
        return model
    import timm
    copy = timm.create_model(model.pretrained_cfg['architecture'], pretrained=False, **model.model_args)
    copy.load_state_dict(state)
    copy.pretrained_cfg = model.pretrained_cfg
    return copy


# ------------------------------------------------------------------------------------- validation
def list_ff_models() -> List[str]:
    """Names of the timm architectures registered by timm_ff (no pretrained tags), sorted."""
    import timm
    from timm.models import model_entrypoint
    return [m for m in timm.list_models() if model_entrypoint(m).__module__.startswith('timm_ff.')]


def read_safetensors_header(path: PathLike) -> Dict[str, Tuple[str, Tuple[int, ...]]]:
    """Parse a safetensors header and check the file is complete; return ``{name: (dtype, shape)}``.

    Raises:
        CheckpointError: If the file is missing, truncated, padded or its header is corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'{path}: no such file')
    size = path.stat().st_size
    with path.open('rb') as f:
        prefix = f.read(8)
        n = int.from_bytes(prefix, 'little') if len(prefix) == 8 else -1
        if n <= 1 or n > _MAX_HEADER_BYTES or 8 + n > size:
            raise CheckpointError(f'{path} is truncated or not a safetensors file ({size} bytes; '
                                  f'header length field {n})')
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f'{path} is corrupt: its safetensors header is not valid JSON ({e})') from e
    if not isinstance(header, dict):
        raise CheckpointError(f'{path} is corrupt: its safetensors header is not a JSON object')
    header.pop('__metadata__', None)
    tensors, data_end = {}, 0
    for name, info in header.items():
        dtype, shape, (begin, end) = _header_entry(path, name, info)
        tensors[name] = (dtype, shape)
        data_end = max(data_end, end)
    expected = 8 + n + data_end
    if size != expected:
        what = 'truncated' if size < expected else 'corrupt (trailing bytes)'
        raise CheckpointError(f'{path} is {what}: {size} bytes on disk, its header describes {expected}')
    return tensors


def _header_entry(path: Path, name: str, info: Any) -> Tuple[str, Tuple[int, ...], Tuple[int, int]]:
    """Check one tensor entry of a safetensors header: known dtype, offsets that fit its shape."""
    try:
        dtype = str(info['dtype'])
        shape = tuple(int(s) for s in info['shape'])
        begin, end = (int(o) for o in info['data_offsets'])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f'{path} is corrupt: bad header entry for tensor {name!r}') from e
    itemsize = _SAFETENSORS_ITEMSIZE.get(dtype)
    if itemsize is None or begin < 0 or end - begin != math.prod(shape) * itemsize:
        raise CheckpointError(f'{path} is corrupt: tensor {name!r} ({dtype}, shape {list(shape)}) '
                              f'does not fit its data offsets [{begin}, {end})')
    return dtype, shape, (begin, end)


def _read_json(path: Path, what: str) -> Dict[str, Any]:
    """A JSON object from ``path``; a missing or malformed file is a :class:`CheckpointError`."""
    if not path.is_file():
        raise CheckpointError(f'{path.parent}: no {path.name} ({what})')
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f'{path} is not valid JSON: {e}') from e
    if not isinstance(data, dict):
        raise CheckpointError(f'{path} must hold a JSON object')
    return data


def _read_model_config(folder: Path) -> Dict[str, Any]:
    """config.json of a model folder; its architecture must be a registered timm_ff model."""
    cfg = _read_json(folder / CONFIG_NAME, "timm's model config")
    arch = cfg.get('architecture')
    models = list_ff_models()
    if arch not in models:
        raise CheckpointError(f'{folder / CONFIG_NAME} names architecture {arch!r}, which is not a timm_ff '
                              f"model; timm_ff models: {', '.join(models)}")
    if not isinstance(cfg.get('model_args', {}), dict):
        raise CheckpointError(f'{folder / CONFIG_NAME}: model_args must be a JSON object')
    return cfg


def _expected_shapes(cfg: Dict[str, Any], source: Path) -> Dict[str, Tuple[int, ...]]:
    """State-dict shapes of the model that config.json describes (architecture + model_args)."""
    import timm
    try:
        model = timm.create_model(cfg['architecture'], pretrained=False, **cfg.get('model_args', {}))
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{source}: model_args do not build {cfg['architecture']}: {e}") from e
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _check_fit(weights: Dict[str, Tuple[str, Tuple[int, ...]]], expected: Dict[str, Tuple[int, ...]],
               arch: str, path: Path) -> None:
    """Raise unless the checkpoint has exactly the model's keys with the model's shapes."""
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(weights) & set(expected) if tuple(weights[k][1]) != expected[k])
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({', '.join(missing[:4])}"
                     f"{', ...' if len(missing) > 4 else ''})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({', '.join(unexpected[:4])}"
                     f"{', ...' if len(unexpected) > 4 else ''})")
    if wrong:
        parts.append(f"{len(wrong)} of another shape (" + ', '.join(
            f'{k}: file {list(weights[k][1])} vs model {list(expected[k])}' for k in wrong[:3])
            + (', ...)' if len(wrong) > 3 else ')'))
    raise CheckpointError(f"{path} does not fit {arch} as config.json describes it: {'; '.join(parts)} keys")


def _card_sha256(folder: Path) -> Optional[str]:
    """The sha256 of model.safetensors that the folder's model card states, if any."""
    card = folder / CARD_NAME
    if not card.is_file():
        return None
    m = re.search(r'sha256[^0-9a-f\n]*([0-9a-f]{64})', card.read_text(errors='replace'))
    return m.group(1) if m else None


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open('rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def validate_model_folder(folder: PathLike) -> Dict[str, Any]:
    """Check a model folder (``model.safetensors`` + ``config.json``) without loading it; return its config.

    Checks: config.json names a registered timm_ff architecture; the safetensors header parses and
    the file size matches it; the keys and shapes equal those of the model ``model_args`` build;
    and, when a model card (README.md) states a sha256, the weights hash to it.

    Raises:
        CheckpointError: For any failed check, naming the file and what is wrong.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f'{folder}: no such model folder')
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        pickles = sorted(p.name for p in folder.glob('*') if p.suffix in ('.bin', '.pth', '.pt', '.pkl'))
        hint = f" (found {', '.join(pickles)}: pickled weights are not loaded, re-save with " \
               'save_for_hf(..., safe_serialization=True))' if pickles else ''
        raise CheckpointError(f'{folder}: no {WEIGHTS_NAME}{hint}')
    cfg = _read_model_config(folder)
    header = read_safetensors_header(weights)
    _check_fit(header, _expected_shapes(cfg, folder / CONFIG_NAME), cfg['architecture'], weights)
    stated = _card_sha256(folder)
    if stated is not None:
        actual = sha256_file(weights)
        if actual != stated:
            raise CheckpointError(f'{weights} is corrupt: sha256 {actual} differs from {stated} '
                                  'in its model card')
    return cfg


def load_model_folder(path: PathLike, **kwargs: Any) -> torch.nn.Module:
    """Validate a local model folder, then load it with timm (``local-dir:`` loading, strict).

    Args:
        path: Folder holding ``model.safetensors`` + ``config.json`` (a run or a downloaded repo).
        **kwargs: Passed to ``timm.create_model`` (e.g. ``num_classes`` to re-head the model).

    Raises:
        CheckpointError: If :func:`validate_model_folder` fails or timm cannot load the weights.
    """
    import timm
    folder = Path(path).resolve()
    validate_model_folder(folder)
    try:
        return timm.create_model(f'{LOCAL_DIR_PREFIX}{folder}', pretrained=True, **kwargs)
    except (RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f'{folder} could not be loaded: {e}') from e


def validate_run_folder(run_dir: PathLike) -> Dict[str, Any]:
    """Check a finished ``train_ff.py`` run folder is publishable; return its config.json.

    Raises:
        CheckpointError: If the run is unfinished (no metrics.json), the model folder fails
            :func:`validate_model_folder`, or config.json lacks the ``timm_ff.recipe`` block.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise CheckpointError(f'{run}: no such run folder')
    if not (run / 'metrics.json').is_file():
        raise CheckpointError(f'{run} is not a finished run: metrics.json is missing '
                              '(train_ff.py writes it last)')
    _read_json(run / 'metrics.json', 'metrics of a finished run')
    cfg = validate_model_folder(run)
    block = cfg.get('timm_ff')
    if not isinstance(block, dict) or not isinstance(block.get('recipe'), dict):
        raise CheckpointError(f'{run / CONFIG_NAME} has no timm_ff.recipe block (not written by train_ff.py)')
    return cfg


# ------------------------------------------------------------------------------------- model card
def _run_facts(run: Path, cfg: Dict[str, Any]) -> Tuple[Dict, Dict, Dict]:
    """(recipe, run_info, metrics) of a run: config.json's timm_ff block, completed by the run's files."""
    block = cfg.get('timm_ff') or {}
    recipe = dict(block.get('recipe') or {})
    run_info = dict(block.get('run_info') or {})
    metrics = dict(block.get('metrics') or {})
    for name, target in (('run_info.json', run_info), ('metrics.json', metrics)):
        if (run / name).is_file():
            extra = _read_json(run / name, name)
            target.update(extra)
    return recipe, run_info, metrics


def _dataset_hub_id(recipe: Dict[str, Any]) -> Optional[str]:
    """The Hub id of the run's registered dataset, or None for a custom one."""
    from .data import list_datasets, get_dataset_spec
    name = recipe.get('dataset')
    return get_dataset_spec(name).hub_id if name in list_datasets() else None


def _front_matter(dataset_id: Optional[str]) -> str:
    """YAML front matter of the card, in timm's key order."""
    meta: Dict[str, Any] = {'tags': list(CARD_TAGS), 'pipeline_tag': 'image-classification',
                            'library_name': 'timm', 'license': LICENSE}
    if dataset_id:
        meta['datasets'] = [dataset_id]
    return '---\n' + yaml.safe_dump(meta, sort_keys=False) + '---\n'


def _fmt(value: Any, digits: int = 2) -> str:
    """A number for the card (fixed digits), anything else as text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'{value:.{digits}f}' if isinstance(value, float) else str(value)
    return '-' if value is None else str(value)


def _metrics_table(metrics: Dict[str, Any]) -> str:
    """Markdown table of the fused and per-unit accuracies and the run's size."""
    rows = [('Fused top-1 accuracy (%)', _fmt(metrics.get('accuracy')))]
    for u, acc in enumerate(metrics.get('unit_accuracy') or []):
        rows.append((f'Unit {u} top-1 accuracy (%)', _fmt(acc)))
    evals = [h.get('eval_images') for h in metrics.get('history') or [] if isinstance(h, dict)]
    if evals and evals[-1]:
        rows.append(('Eval images', _fmt(evals[-1])))
    for key, label in (('epochs_run', 'Epochs'), ('global_step', 'Optimiser steps'),
                       ('train_images_per_s', 'Train throughput (images/s)'), ('num_processes', 'Processes'),
                       ('device', 'Device')):
        if key in metrics:
            rows.append((label, _fmt(metrics[key], 1)))
    return '| Metric | Value |\n|---|---|\n' + ''.join(f'| {k} | {v} |\n' for k, v in rows)


def _usage(repo_id: str, arch: str) -> str:
    """How to load the published model, with and without the Hub."""
    tag_line = ''
    name = repo_id.split('/')[-1]
    if name.startswith(arch + '.') and repo_id.split('/')[0] == HUB_ORG:
        tag_line = (f"\nThe pretrained tag resolves to this repo as well: "
                    f"`timm.create_model('{name}', pretrained=True)`.\n")
    return (
        '`import timm_ff` is required: timm registers architectures by import only, so without it\n'
        "`create_model` fails with `RuntimeError: Unknown model`.\n\n"
        '```python\n'
        'import timm_ff, timm\n\n'
        f"model = timm.create_model('hf-hub:{repo_id}', pretrained=True).eval()\n"
        'data_config = timm.data.resolve_data_config(model=model)\n'
        'transform = timm.data.create_transform(**data_config, is_training=False)\n'
        'logits = model(transform(img).unsqueeze(0))  # img: a PIL image\n'
        '```\n' + tag_line +
        '\nOffline, download the repo folder once and load it from disk: '
        "`timm.create_model('local-dir:PATH', pretrained=True)` or `timm_ff.hub.load_model_folder(PATH)`.\n"
    )


def _card_details(run: Path, cfg: Dict[str, Any], recipe: Dict, run_info: Dict, metrics: Dict) -> str:
    """The card's summary paragraph and "Model Details" list."""
    arch = cfg['architecture']
    header = read_safetensors_header(run / WEIGHTS_NAME)
    n_params = sum(math.prod(shape) for _, shape in header.values())
    dataset_id = _dataset_hub_id(recipe)
    objective = metrics.get('objective') or recipe.get('objective') or '-'
    data_source = (run_info.get('data_source') or metrics.get('data_source') or dataset_id
                   or recipe.get('data_dir') or '-')
    size = cfg.get('pretrained_cfg', {}).get('input_size')
    return '\n'.join([
        f'A `{arch}` image classifier trained layer-locally with the `{objective}` objective of timm_ff, '
        'a Forward-Forward plugin for timm.\n',
        '## Model Details\n',
        f'- **Architecture:** `{arch}` (`model_args` in config.json)',
        f'- **Objective:** {objective}',
        f'- **Params (M):** {n_params / 1e6:.2f}',
        f'- **Classes:** {cfg.get("num_classes")}',
        f'- **Image size:** {" x ".join(str(s) for s in size[1:]) if size else "-"}',
        f'- **Dataset:** {recipe.get("dataset") or "-"}' + (f' (`{dataset_id}`)' if dataset_id else ''),
        f'- **Data used:** {data_source}',
        f'- **License:** {LICENSE}\n',
    ])


def _card_training(repo_id: str, recipe: Dict, run_info: Dict, metrics: Dict) -> str:
    """The card's "Training" section: command, git commit, versions and the full recipe."""
    commit = run_info.get('git_commit') or metrics.get('git_commit') or 'unknown'
    return '\n'.join([
        '## Training\n',
        'Produced by this command:\n',
        f'```\n{run_info.get("command", "-")}\n```\n',
        f'at git commit `{commit}` (timm_ff {run_info.get("timm_ff_version", "?")}, '
        f'timm {run_info.get("timm_version", "?")}, torch {run_info.get("torch_version", "?")}). '
        'The exact recipe is stored in config.json under `timm_ff.recipe`; '
        f'`train_ff.py -c hf-hub:{repo_id}` re-runs it:\n',
        f'```yaml\n{yaml.safe_dump(recipe, sort_keys=True).rstrip()}\n```\n',
    ])


def _card_files(weights: Path) -> str:
    """The card's "Files" section with the weights' size and sha256, and the "License" section."""
    return '\n'.join([
        '## Files\n',
        f'- `{WEIGHTS_NAME}`: {weights.stat().st_size} bytes, sha256 `{sha256_file(weights)}`',
        f'- `{CONFIG_NAME}`: timm\'s config (architecture, num_classes, pretrained_cfg, model_args) plus the '
        '`timm_ff` block (recipe, run_info, metrics)\n',
        'Both are timm\'s own format (`timm.models.save_for_hf` with safetensors); no pickled weights are '
        'published.\n',
        '## License\n',
        f'The weights are released under the Apache License 2.0 ({LICENSE}), like the timm_ff code. '
        'The training data keep their own terms.\n',
    ])


def model_card(run_dir: PathLike, repo_id: Optional[str] = None) -> str:
    """The model card (README.md text) of a finished run folder or of an upload folder.

    Args:
        run_dir: A run folder (config.json with the ``timm_ff`` block, model.safetensors, and
            optionally metrics.json / run_info.json) or a folder built by :func:`build_upload_folder`.
        repo_id: The Hub repo the card is for (default ``{HUB_ORG}/{folder name}``).
    """
    run = Path(run_dir)
    cfg = _read_model_config(run)
    repo_id = repo_id or f'{HUB_ORG}/{run.resolve().name}'
    recipe, run_info, metrics = _run_facts(run, cfg)
    return '\n'.join([
        _front_matter(_dataset_hub_id(recipe)),
        f'# Model card for {repo_id.split("/")[-1]}\n',
        _card_details(run, cfg, recipe, run_info, metrics),
        '## Model Usage\n',
        _usage(repo_id, cfg['architecture']),
        '## Metrics\n',
        'Top-1 accuracy on the eval split; "fused" is the model\'s output, which combines the units.\n',
        _metrics_table(metrics),
        _card_training(repo_id, recipe, run_info, metrics),
        _card_files(run / WEIGHTS_NAME),
    ])


# ------------------------------------------------------------------------------------- publishing
def check_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` if it looks like ``ORG/NAME``, else raise :class:`HubError` (no network)."""
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or '..' in repo_id:
        raise HubError(f'bad Hub repo id {repo_id!r}: expected ORG/NAME (letters, digits, ".", "-", "_")')
    return repo_id


def build_upload_folder(run_dir: PathLike, out_dir: PathLike, repo_id: str) -> Path:
    """Validate a finished run and write its upload folder: model.safetensors, config.json, README.md.

    The weights and config.json are copied byte for byte from the run (timm's ``save_for_hf``
    wrote them, with the ``timm_ff`` recipe block); README.md is :func:`model_card`.

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
    tmp = Path(tempfile.mkdtemp(prefix='.upload_', dir=out))
    try:
        shutil.copyfile(run / WEIGHTS_NAME, tmp / WEIGHTS_NAME)
        shutil.copyfile(run / CONFIG_NAME, tmp / CONFIG_NAME)
        (tmp / CARD_NAME).write_text(model_card(run, repo_id), encoding='utf-8')
        for name in UPLOAD_FILES:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _hub_unavailable() -> Optional[str]:
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


def _require_hub_for_upload(repo_id: str) -> None:
    """Raise :class:`HubError` at once if an upload to ``repo_id`` cannot reach the Hub."""
    reason = _hub_unavailable()
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
    from huggingface_hub.errors import HfHubHTTPError
    from .version import __version__
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
    except (HfHubHTTPError, ValueError, OSError) as e:
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


# ------------------------------------------------------------------------------------ downloading
def _split_hub_source(source: str) -> Tuple[str, Optional[str]]:
    """``'hf-hub:ORG/NAME@REV'`` (prefix optional) -> ``('ORG/NAME', 'REV')``."""
    ref = source[len(HF_HUB_PREFIX):] if source.startswith(HF_HUB_PREFIX) else source
    repo_id, _, revision = ref.partition('@')
    return check_repo_id(repo_id), revision or None


def _offline_message(repo_id: str, filename: str, reason: str) -> str:
    """The one message every failed download gives: what failed and the local alternatives."""
    return (f'cannot download {filename} of Hub repo {repo_id!r}: {reason}. Use a local copy instead: '
            "timm.create_model('local-dir:PATH', pretrained=True) or timm_ff.hub.load_model_folder(PATH) for "
            'a folder holding model.safetensors + config.json; for a pretrained tag, '
            'timm.create_model(NAME, pretrained=True, '
            "pretrained_cfg_overlay=dict(file='PATH/model.safetensors')); "
            'for train_ff.py, --initial-checkpoint PATH or -c PATH/recipe.yaml')


def _download(repo_id: str, filename: str, revision: Optional[str], reason: Optional[str]) -> Path:
    """hf_hub_download with every failure as a :class:`HubError`; cache only when ``reason`` is set."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError,
                                        OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError)
    from .version import __version__
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
    except HfHubHTTPError as e:
        raise HubError(f'downloading {filename} of Hub repo {repo_id!r} failed: {e}') from e


def hub_download(repo_id: str, filename: str, revision: Optional[str] = None) -> Path:
    """Download one file of a Hub model repo (or take it from the cache) and return its local path.

    Offline (``HF_HUB_OFFLINE=1``) or with the Hub unreachable only the cache is used, and a
    missing file fails at once with a :class:`HubError` naming the local alternatives.
    """
    return _download(check_repo_id(repo_id), filename, revision, _hub_unavailable())


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


def _local_fallback(name: str, kwargs: Dict[str, Any], reason: str) -> Tuple[str, Dict[str, Any]]:
    """Point ``create_model`` at cached files when the Hub cannot be reached (HubError if none)."""
    if name.startswith(HF_HUB_PREFIX):
        repo_id, revision = _split_hub_source(name)
        _download(repo_id, CONFIG_NAME, revision, reason)
        weights = _download(repo_id, WEIGHTS_NAME, revision, reason)
        return f'{LOCAL_DIR_PREFIX}{weights.parent}', kwargs
    repo_id, revision = _split_hub_source(_tag_hub_id(name, kwargs) or '')
    weights = _download(repo_id, WEIGHTS_NAME, revision, reason)
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
        reason = _hub_unavailable()
        if reason is not None:
            name, kwargs = _local_fallback(name, kwargs, reason)
    try:
        return timm.create_model(name, **kwargs)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        reason = f'the Hub could not be reached ({e})'
        raise HubError(_offline_message(hub_name or name, 'the weights', reason)) from e
    except HfHubHTTPError as e:
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
    path = Path(source[len(LOCAL_DIR_PREFIX):] if source.startswith(LOCAL_DIR_PREFIX) else source)
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
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
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


# ---------------------------------------------------------------------------------------- release
def _recipe_names(recipes_dir: Path) -> List[str]:
    """``<arch>.<tag>`` names of the recipes in ``recipes_dir``."""
    return sorted(p.stem for p in recipes_dir.glob('*.yaml'))


def _finished_runs(runs_root: Path) -> List[Path]:
    """Every finished run folder (metrics.json + config.json + model.safetensors) under ``runs_root``."""
    runs = {p.parent for p in runs_root.rglob('metrics.json')
            if (p.parent / CONFIG_NAME).is_file() and (p.parent / WEIGHTS_NAME).is_file()}
    return sorted(runs)


def _tag_model_args(name: str) -> Optional[Dict[str, Any]]:
    """JSON form of the model_args a pretrained tag builds (None if ``name`` is not a registered tag)."""
    import timm
    if name not in timm.list_pretrained(name):
        return None
    return json.loads(json.dumps(timm.create_model(name).model_args))


def _run_score(name: str, recipe: Dict[str, Any], tag_args: Optional[Dict[str, Any]],
               run: Path) -> Optional[Tuple[int, int, float]]:
    """How well a run matches recipe ``name`` (higher is better), or None if it does not.

    The run's architecture must be the recipe's and, for a registered tag, its model_args those the
    tag builds (else ``create_model(tag, pretrained=True)`` would not reproduce it). Then a run
    folder named ``<arch>.<tag>`` matches, or a run whose recipe dataset is the recipe's. Ties go
    to the name, then the run agreeing on more recipe keys, then the newest.
    """
    arch, _, tag = name.partition('.')
    try:
        cfg = json.loads((run / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return None
    if cfg.get('architecture') != arch or (tag_args is not None and cfg.get('model_args') != tag_args):
        return None
    run_recipe = (cfg.get('timm_ff') or {}).get('recipe') or {}
    named = run.name == name
    if not (named or run_recipe.get('dataset') == recipe.get('dataset', tag)):
        return None
    agree = sum(run_recipe.get(k) == v for k, v in recipe.items())
    return int(named), agree, (run / 'metrics.json').stat().st_mtime


def match_release_runs(runs_root: PathLike, recipes_dir: Optional[PathLike] = None
                       ) -> Tuple[Dict[str, Path], List[str]]:
    """Pair each ``hub_configs/<arch>.<tag>.yaml`` with its best finished run under ``runs_root``.

    Returns:
        ``({name: run folder}, [names of recipes without a run])``.
    """
    from .recipe import load_recipe, recipe_dir
    recipes = Path(recipes_dir) if recipes_dir is not None else recipe_dir()
    runs = _finished_runs(Path(runs_root)) if Path(runs_root).is_dir() else []
    matched, missing = {}, []
    for name in _recipe_names(recipes):
        recipe = load_recipe(str(recipes / f'{name}.yaml'))
        tag_args = _tag_model_args(name)
        scored = [(s, run) for run in runs if (s := _run_score(name, recipe, tag_args, run)) is not None]
        if scored:
            matched[name] = max(scored, key=lambda sr: sr[0])[1]
        else:
            missing.append(name)
    return matched, missing


def build_release(runs_root: PathLike, out_dir: PathLike, org: str = HUB_ORG,
                  recipes_dir: Optional[PathLike] = None) -> List[Path]:
    """Write an upload-ready folder ``out_dir/<arch>.<tag>/`` for every recipe that has a finished run.

    Each folder is what ``publish_run(run, f'{org}/<arch>.<tag>', dry_run=True)`` writes.
    ``out_dir/release.json`` records the repo ids, runs, sha256s and accuracies, and the recipes
    without a run (also logged as a warning).

    Returns:
        The upload folders written, sorted by name.
    """
    out = Path(out_dir)
    matched, missing = match_release_runs(runs_root, recipes_dir)
    folders, manifest = [], {'org': org, 'released': {}, 'missing_runs': missing}
    for name, run in sorted(matched.items()):
        folder = build_upload_folder(run, out / name, f'{org}/{name}')
        metrics = _read_json(run / 'metrics.json', 'metrics')
        manifest['released'][name] = dict(repo_id=f'{org}/{name}', run=str(run),
                                          accuracy=metrics.get('accuracy'),
                                          sha256=sha256_file(folder / WEIGHTS_NAME))
        folders.append(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'release.json').write_text(json.dumps(manifest, indent=2) + '\n')
    if missing:
        _logger.warning('recipes without a finished run: %s', ', '.join(missing))
    return folders


# -------------------------------------------------------------------------------------------- CLI
class _UsageError(Exception):
    """A command-line usage error (reported as one ``error:`` line, exit 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        raise _UsageError(f'{message} (see --help)')


def _build_parser() -> argparse.ArgumentParser:
    """The ``push`` / ``release`` / ``card`` command line."""
    p = _Parser(prog='python -m timm_ff.hub', description='Publish timm_ff runs as timm models on the Hub.')
    sub = p.add_subparsers(dest='command', required=True, parser_class=_Parser)
    push = sub.add_parser('push', help='publish a finished run folder to ORG/NAME')
    push.add_argument('run_dir', help='finished train_ff.py run folder')
    push.add_argument('repo_id', help='Hub model repo, ORG/NAME')
    push.add_argument('--private', action='store_true', help='create the repo private')
    push.add_argument('--revision', default=None, help='branch to commit to (created if missing)')
    push.add_argument('--dry-run', metavar='DIR', default=None, help='only write the upload folder to DIR')
    rel = sub.add_parser('release', help='upload-ready folders for every hub_configs recipe with a run')
    rel.add_argument('--runs', default='output/train', help='folder holding finished runs')
    rel.add_argument('--out', default='output/release', help='where to write the folders')
    rel.add_argument('--org', default=HUB_ORG, help='Hub organisation of the repos')
    rel.add_argument('--recipes', default=None, help='recipe folder (default: hub_configs/)')
    card = sub.add_parser('card', help='print the model card of a run folder')
    card.add_argument('run_dir', help='run folder')
    card.add_argument('--repo-id', default=None, help='repo the card is for (default HUB_ORG/<folder name>)')
    return p


def _cmd_push(args: argparse.Namespace) -> None:
    """``push``: publish (or, with --dry-run DIR, only write) a run's upload folder."""
    folder, url = _publish(args.run_dir, args.repo_id, private=args.private, revision=args.revision,
                           dry_run=args.dry_run is not None, out_dir=args.dry_run, token=None)
    if url is None:
        print(f'dry run: upload folder for {args.repo_id} written to {folder}')
    else:
        print(f'pushed {args.run_dir} to {args.repo_id} ({args.revision or "main"}): {url}')


def _cmd_release(args: argparse.Namespace) -> None:
    """``release``: upload-ready folders for the recipes that have runs; list those that do not."""
    folders = build_release(args.runs, args.out, org=args.org, recipes_dir=args.recipes)
    missing = json.loads((Path(args.out) / 'release.json').read_text())['missing_runs']
    for folder in folders:
        print(f'{args.org}/{folder.name}: {folder}')
    for name in missing:
        print(f'no finished run for recipe {name}')
    print(f'{len(folders)} release folder(s) in {args.out}; upload each with: '
          'hf upload ORG/NAME FOLDER . (or python -m timm_ff.hub push RUN_DIR ORG/NAME)')


def _cmd_card(args: argparse.Namespace) -> None:
    """``card``: print a run's model card."""
    print(model_card(args.run_dir, args.repo_id), end='')


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point (``timm-ff-hub`` / ``python -m timm_ff.hub``); returns the exit code.

    User errors (bad paths, corrupt runs, Hub failures) print one ``error: ...`` line and return 2.
    """
    try:
        args = _build_parser().parse_args(argv)
        {'push': _cmd_push, 'release': _cmd_release, 'card': _cmd_card}[args.command](args)
    except (_UsageError, TimmFFError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    return 0


if __name__ == '__main__':
    sys.exit(main())
