"""Saving timm_ff models the way timm's pretrained weights are stored (safetensors + config.json)."""
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Optional

import torch
from timm.models import load_checkpoint, save_for_hf

from .errors import CheckpointError

__all__ = ['full_state_dict', 'save_model_folder', 'load_initial_checkpoint']


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
            cfg_path = tmp / 'config.json'
            cfg = json.loads(cfg_path.read_text())
            cfg.update(extra_config)
            cfg_path.write_text(json.dumps(cfg, indent=2, default=str) + '\n')
        for name in ('model.safetensors', 'config.json'):
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


def load_initial_checkpoint(model: torch.nn.Module, source: str) -> None:
    """Load weights to start training from: a safetensors file or a run folder holding ``model.safetensors``.

    Classifier weights of a different class count are skipped, so a checkpoint can start a
    fine-tune on another dataset.
    """
    path = Path(source)
    if path.is_dir():
        path = path / 'model.safetensors'
    if not path.is_file():
        raise CheckpointError(f'--initial-checkpoint {source!r}: no such file (expected a .safetensors file '
                              'or a run folder holding model.safetensors)')
    try:
        load_checkpoint(model, str(path), strict=True)
    except RuntimeError as e:
        raise CheckpointError(f'--initial-checkpoint {source!r} does not fit {type(model).__name__}: {e}') from e
