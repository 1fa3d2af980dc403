"""FSDP2 for layer-local training: every local unit (body and head) is its own ``fully_shard`` group.

Accelerate's FSDP2 plugin shards one model and expects every step to enter through the root's
``forward``. A layer-local step calls the units one at a time (and the fusion on detached logits), so
the trainer shards the model itself, with the same ``fully_shard`` Accelerate would call:

* each unit of ``model.local_units()`` and the fusion (when it has weights) become FSDP2 modules on a
  1-D device mesh over all processes. A unit's forward all-gathers that unit's parameters only, and its
  backward reduce-scatters that unit's gradients only, averaged over the processes as DDP averages
  them; ``per_unit`` and ``summed`` backward both work. The root model is not sharded (it holds no
  parameters of its own), so calling a unit outside the root's ``forward`` is what FSDP2 expects;
* buffers (BatchNorm statistics, the dynamic temperature's history) are not sharded: they are
  broadcast from process 0 before every training step, as DDP does before every forward;
* checkpoints hold each process's shards of the model and optimizer state, written with
  ``torch.distributed.checkpoint`` next to Accelerate's own state (RNG, scheduler, step);
  the final timm ``model.safetensors`` is gathered with every process taking part.

The same code runs on GPUs under ``accelerate launch --use_fsdp --fsdp_version 2`` and on CPU processes
of a gloo group (``train_ff.py --fsdp`` under a DDP-style launch; Accelerate's FSDP plugin needs GPUs),
which is how the tests run it.
"""
import contextlib
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from .errors import CheckpointError, ConfigError

__all__ = ['FSDP_DIR', 'fsdp_requested', 'shard_local_units', 'gathered', 'sync_buffers', 'local_state_bytes',
           'save_sharded_state', 'load_sharded_state']

FSDP_DIR = 'fsdp'  # sub-folder of a checkpoint holding the model and optimizer shards


def fsdp_requested(accelerator, force: bool = False) -> Optional[Dict]:
    """The ``fully_shard`` settings of this run, or None when it does not shard.

    Args:
        accelerator: The run's Accelerator; under ``accelerate launch --use_fsdp`` it runs FSDP.
        force: Shard even though Accelerate runs plain data parallel (``train_ff.py --fsdp``: how FSDP
            runs on CPU processes, where Accelerate's plugin cannot).
    """
    from accelerate.utils import DistributedType
    if accelerator.distributed_type == DistributedType.FSDP:
        plugin = accelerator.state.fsdp_plugin
        if getattr(plugin, 'fsdp_version', 1) != 2:
            raise ConfigError(f'FSDP version {plugin.fsdp_version} is not supported: layer-local training shards each '
                              'unit with FSDP2 (fully_shard); launch with accelerate launch --use_fsdp --fsdp_version 2')
        reshard = plugin.reshard_after_forward
        return dict(reshard_after_forward=reshard if isinstance(reshard, bool) else True)
    if force:
        return dict(reshard_after_forward=True)
    return None


def _trained_modules(model: nn.Module) -> List[nn.Module]:
    units = list(model.local_units())
    fusion = model.fusion
    return units + ([fusion] if any(True for _ in fusion.parameters()) else [])


def shard_local_units(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                      num_processes: int, reshard_after_forward: bool = True) -> List[nn.Module]:
    """``fully_shard`` every local unit and the fusion of ``model`` in place; point ``optimizer`` at the shards.

    Args:
        model: A timm_ff model on ``device`` (every parameter inside a unit or the fusion).
        optimizer: The optimiser built over the unsharded parameters; its param groups (and per-group
            settings such as layer-decay scales) are kept, each parameter replaced by its shard.
        device: This process's device (the mesh's device type).
        num_processes: Processes in the default process group.
        reshard_after_forward: Free a unit's gathered parameters after its forward (re-gathered for backward).

    Returns:
        The sharded modules: the units in order, then the fusion when it has weights.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    if not dist.is_available() or not dist.is_initialized():
        raise ConfigError('FSDP needs a process group: launch with accelerate launch --use_fsdp --fsdp_version 2 '
                          '(GPUs) or, on CPU, ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N '
                          'train_ff.py --fsdp')
    name_of = {id(p): n for n, p in model.named_parameters()}
    modules = _trained_modules(model)
    inside = {id(p) for m in modules for p in m.parameters()}
    outside = [n for n, p in model.named_parameters() if id(p) not in inside]
    if outside:
        raise ConfigError(f'FSDP shards each local unit and the fusion, but {outside[0]!r} belongs to neither; '
                          'a timm_ff model keeps every parameter inside model.local_units() or model.fusion')
    mesh = init_device_mesh(device.type, (num_processes,))
    for module in modules:
        fully_shard(module, mesh=mesh, reshard_after_forward=reshard_after_forward)
    sharded = dict(model.named_parameters())
    for group in optimizer.param_groups:
        group['params'] = [sharded[name_of[id(p)]] for p in group['params']]
    return modules


@contextlib.contextmanager
def gathered(module: nn.Module):
    """Within the block an FSDP2 module's parameters are whole (a collective: every process enters it);
    a plain module is left as it is. For reading weights outside ``forward``; in-place writes do not
    reach the shards."""
    from torch.distributed.fsdp import FSDPModule
    if not isinstance(module, FSDPModule):
        yield module
        return
    module.unshard()
    try:
        yield module
    finally:
        module.reshard()


def sync_buffers(modules: Iterable[nn.Module], src: int = 0) -> None:
    """Broadcast every buffer of ``modules`` from process ``src`` (one coalesced broadcast per dtype)."""
    by_dtype: Dict[torch.dtype, List[torch.Tensor]] = {}
    for module in modules:
        for b in module.buffers():
            by_dtype.setdefault(b.dtype, []).append(b)
    for buffers in by_dtype.values():
        flat = torch.cat([b.detach().reshape(-1) for b in buffers])
        dist.broadcast(flat, src)
        offset = 0
        with torch.no_grad():
            for b in buffers:
                b.copy_(flat[offset:offset + b.numel()].view_as(b))
                offset += b.numel()


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, 'to_local') else t


def local_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> Dict[str, int]:
    """Bytes of parameters and optimiser state that this process holds (its shards under FSDP)."""
    params = sum(_local(p).numel() * _local(p).element_size() for p in model.parameters())
    opt = getattr(optimizer, 'optimizer', optimizer)
    state = sum(_local(v).numel() * _local(v).element_size() for s in opt.state.values() for v in s.values()
                if isinstance(v, torch.Tensor))
    return dict(param_bytes=params, optimizer_bytes=state)


def _state(model: nn.Module, optimizer: torch.optim.Optimizer):
    from torch.distributed.checkpoint.state_dict import get_state_dict
    msd, osd = get_state_dict(model, getattr(optimizer, 'optimizer', optimizer))
    return dict(model=msd, optimizer=osd)


def save_sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Every process writes its shards of the model and optimizer state into ``folder/fsdp`` (a collective)."""
    import torch.distributed.checkpoint as dcp
    dcp.save(_state(model, optimizer), checkpoint_id=str(Path(folder) / FSDP_DIR))


def load_sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Load :func:`save_sharded_state`'s shards into the sharded ``model`` and ``optimizer`` (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict
    path = Path(folder) / FSDP_DIR
    if not path.is_dir():
        raise CheckpointError(f'{folder} holds no FSDP shards ({FSDP_DIR}/): it was written by a run without FSDP; '
                              'resume it the way it was launched, or start a new run')
    state = _state(model, optimizer)
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, getattr(optimizer, 'optimizer', optimizer), model_state_dict=state['model'],
                   optim_state_dict=state['optimizer'])
