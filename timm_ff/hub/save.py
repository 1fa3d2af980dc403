"""Saving a model as a timm model folder: ``model.safetensors`` + ``config.json``, written atomically."""
import contextlib
import json
from pathlib import Path
from typing import Dict, Optional

import torch
from timm.models import save_for_hf

from ..objectives.recon import strip_decoders
from ._common import CONFIG_NAME, WEIGHTS_NAME, staged_files

__all__ = ['full_state_dict', 'is_sharded', 'save_model_folder']


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether the model's parameters are FSDP2 shards (DTensors)."""
    return any(type(p).__name__ == 'DTensor' for p in model.parameters())


def full_state_dict(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """A plain, unsharded CPU state dict, also for FSDP2-sharded (DTensor) models."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def save_model_folder(model: torch.nn.Module, out_dir: Path, extra_config: Optional[Dict] = None,
                      state: Optional[Dict[str, torch.Tensor]] = None) -> Path:
    """Write ``model.safetensors`` + timm ``config.json`` into ``out_dir`` atomically.

    The files are written by timm's ``save_for_hf`` into a temporary folder inside ``out_dir`` and
    then renamed into place, so an interrupted save never leaves a half-written model.

    Args:
        model: A timm_ff model (``model.model_args`` holds its JSON-serialisable kwargs).
        out_dir: Destination folder (created if needed).
        extra_config: Extra top-level blocks for config.json (e.g. ``{'timm_ff': {...recipe...}}``).
        state: The model's :func:`full_state_dict`, when the caller gathered it already (for an FSDP-sharded
            model that gather is a collective every process enters; only one process saves).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = strip_decoders(full_state_dict(model) if state is None else state)
    with staged_files(out_dir, '.save_', (WEIGHTS_NAME, CONFIG_NAME)) as tmp, _without_decoders(model):
        shadow = _cpu_copy(model, state)
        save_for_hf(shadow, str(tmp), model_args=dict(model.model_args), safe_serialization=True)
        if extra_config:
            cfg_path = tmp / CONFIG_NAME
            cfg = json.loads(cfg_path.read_text())
            cfg.update(extra_config)
            cfg_path.write_text(json.dumps(cfg, indent=2, default=str) + '\n')
    return out_dir


@contextlib.contextmanager
def _without_decoders(model: torch.nn.Module):
    """The model with its training-only decoders (:mod:`timm_ff.objectives.recon`) detached while it is saved."""
    units = [u for u in getattr(model, 'units', []) if getattr(u, 'decoder', None) is not None]
    decoders = [u.decoder for u in units]
    for u in units:
        u.decoder = None
    try:
        yield model
    finally:
        for u, d in zip(units, decoders):
            u.decoder = d


def _cpu_copy(model: torch.nn.Module, state: Dict[str, torch.Tensor]) -> torch.nn.Module:
    """The model itself when it is a plain CPU/GPU model, else a fresh copy holding ``state``."""
    if not is_sharded(model):
        return model
    import timm
    copy = timm.create_model(model.pretrained_cfg['architecture'], pretrained=False, **model.model_args)
    copy.load_state_dict(state)
    copy.pretrained_cfg = model.pretrained_cfg
    return copy
