"""Integrity checks of model and run folders, done before anything is loaded or published.

:func:`read_safetensors_header` checks a weights file is complete without reading its tensors;
:func:`validate_model_folder` adds the architecture, key/shape and model-card sha256 checks;
:func:`validate_run_folder` adds what makes a ``train_ff.py`` run publishable.
"""
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..errors import CheckpointError
from ._common import CARD_NAME, CONFIG_NAME, LOCAL_DIR_PREFIX, WEIGHTS_NAME, PathLike

__all__ = [
    'list_ff_models', 'read_safetensors_header', 'sha256_file', 'validate_model_folder', 'load_model_folder',
    'validate_run_folder',
]

_SAFETENSORS_ITEMSIZE = {
    'BOOL': 1, 'U8': 1, 'I8': 1, 'F8_E4M3': 1, 'F8_E5M2': 1, 'F8_E8M0': 1, 'F4': 1, 'U16': 2, 'I16': 2,
    'F16': 2, 'BF16': 2, 'U32': 4, 'I32': 4, 'F32': 4, 'U64': 8, 'I64': 8, 'F64': 8, 'C64': 8,
}
_MAX_HEADER_BYTES = 100 * 1024 * 1024


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
    return _state_shapes(model)


def _state_shapes(model: torch.nn.Module) -> Dict[str, Tuple[int, ...]]:
    """``{key: shape}`` of the model's state dict."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _some_keys(keys: Sequence[str], what: str) -> str:
    """``'<count> <what> (<first four keys>[, ...])'`` for a key-mismatch message."""
    return f"{len(keys)} {what} ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})"


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
        parts.append(_some_keys(missing, 'missing'))
    if unexpected:
        parts.append(_some_keys(unexpected, 'unexpected'))
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

