"""The Accelerate training loop for layer-local (and end-to-end baseline) training.

No FF maths lives here: :class:`timm_ff.task.LocalTask` runs the units under the objective. This
module prepares each unit as its own module (so DDP synchronises every backward; under FSDP each unit is its
own ``fully_shard`` group, see :mod:`timm_ff.fsdp`), steps timm's
optimiser and scheduler, clips gradients per unit, evaluates per-unit and fused accuracy with
``gather_for_metrics``, logs through Accelerate trackers and checkpoints with ``save_state``.
"""
import contextlib
import json
import math
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker, on_main_process
from tqdm.auto import tqdm

from .data import set_augmentation_epoch
from .errors import CheckpointError, ConfigError, TrainingError
from .fsdp import (FSDP_DIR, fsdp_requested, gathered, load_sharded_state, local_state_bytes, save_sharded_state,
                   shard_local_units, sync_buffers)
from .task import LocalTask, check_micro_batch_size
from .data.tensor import TensorLoader

__all__ = ['JSONLinesTracker', 'TrainState', 'LocalTrainer', 'AccuracyCounts', 'find_checkpoint', 'write_json_atomic', 'compile_units',
           'to_channels_last']

CHECKPOINT_DIR = 'checkpoints'
_STATE_FILE = 'train_state.json'


class JSONLinesTracker(GeneralTracker):
    """Accelerate tracker writing one JSON object per ``log`` call to ``<dir>/log.jsonl``."""
    name = 'jsonl'
    requires_logging_directory = True

    @on_main_process
    def __init__(self, run_name: str, logging_dir: str):
        super().__init__()
        self.run_name = run_name
        Path(logging_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(logging_dir) / 'log.jsonl'

    @property
    def tracker(self):
        return self.path

    @on_main_process
    def store_init_configuration(self, values: dict):
        with open(self.path, 'a') as f:
            f.write(json.dumps({'config': values}, default=str) + '\n')

    @on_main_process
    def log(self, values: dict, step: Optional[int] = None, **kwargs):
        with open(self.path, 'a') as f:
            f.write(json.dumps({'step': step, **values}, default=str) + '\n')


class TrainState:
    """Where the run is: saved with every checkpoint through ``register_for_checkpointing``."""

    def __init__(self):
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0

    def state_dict(self) -> Dict[str, int]:
        return dict(epoch=self.epoch, step_in_epoch=self.step_in_epoch, global_step=self.global_step)

    def load_state_dict(self, state: Dict[str, int]):
        self.epoch, self.step_in_epoch, self.global_step = state['epoch'], state['step_in_epoch'], state['global_step']


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to ``path`` through a temporary file and a rename, so readers never see half a file."""
    tmp = Path(str(path) + '.tmp')
    tmp.write_text(json.dumps(obj, indent=2, default=str) + '\n')
    os.replace(tmp, path)


def find_checkpoint(path: str) -> Path:
    """Resolve ``--resume``: a checkpoint folder, or a run folder whose newest complete checkpoint is used."""
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f'--resume {path!r} is not a folder; pass a run output folder or one of its '
                              f'{CHECKPOINT_DIR}/step_* folders')
    if (p / _STATE_FILE).is_file():
        return p
    ckpts = sorted(q for q in (p / CHECKPOINT_DIR).glob('step_*') if (q / _STATE_FILE).is_file())
    if not ckpts:
        raise CheckpointError(f'--resume {path!r} holds no checkpoint (no {CHECKPOINT_DIR}/step_*/{_STATE_FILE}); '
                              'pass the output folder of a run that saved at least one checkpoint')
    return ckpts[-1]


def peak_memory_mb(device: torch.device) -> Dict[str, float]:
    """Peak memory so far: CUDA allocator peak on GPU, process max RSS on CPU."""
    if device.type == 'cuda':
        return dict(peak_memory_mb=torch.cuda.max_memory_allocated(device) / 2 ** 20, memory_kind='cuda_max_allocated')
    return dict(peak_memory_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, memory_kind='cpu_max_rss')


def _contiguous_state(module, state_dict, prefix, local_metadata):
    for key, value in state_dict.items():
        if key.startswith(prefix) and isinstance(value, torch.Tensor) and not value.is_contiguous():
            state_dict[key] = value.contiguous()


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Put ``model`` in channels_last; its state dict still holds contiguous (NCHW) tensors.

    safetensors refuses non-contiguous tensors, so every module's state dict is made contiguous
    on the way out (``save_state``, ``save_for_hf``); loading copies into the channels_last weights.
    """
    model.to(memory_format=torch.channels_last)
    for module in model.modules():
        module._register_state_dict_hook(_contiguous_state)
    return model


def compile_units(units: List[torch.nn.Module]) -> str:
    """``torch.compile`` each unit in place (state-dict keys unchanged); fall back to eager if the
    compiler does not work here.

    Returns:
        '' when compiled, else the one-line reason for running eager.
    """
    try:  # a tiny probe: a missing or broken C++/Triton toolchain fails here, not mid-training
        probe = torch.compile(lambda t: torch.relu(t) * 2)
        probe(torch.ones(4))
    except Exception as e:  # noqa: BLE001  (inductor raises many types for a missing toolchain)
        return f'torch.compile does not work on this platform ({type(e).__name__}: {str(e).splitlines()[0][:160]})'
    for unit in units:
        unit.compile()
    return ''


_FUSION_MARGIN_PP = 0.5


def fusion_candidates(fusion, device) -> Tuple[Dict[str, Optional[List[int]]], torch.Tensor]:
    """What the fusion check compares: the fusion as trained, each fused unit alone and the mean of every run of
    consecutive fused units, as ``({name: units or None for 'as trained'}, (C, M) weights)``; a candidate's
    weights are what :meth:`LogitFusion.weights` gives after ``select_units`` of its units."""
    units = fusion.fused_units
    ranges = {f'mean of units {units[i]}-{units[j - 1]}': units[i:j]
              for i in range(len(units)) for j in range(i + 2, len(units) + 1)}
    candidates = {'as trained': None, **{f'unit {u}': [u] for u in units}, **ranges}
    weights = torch.stack([fusion.weights().detach().to(device) if subset is None else torch.tensor(
        [1.0 / len(subset) if u in subset else 0.0 for u in units], device=device)
        for subset in candidates.values()])
    return candidates, weights


class AccuracyCounts:
    """Per-unit and fused top-1 hits summed on the device over eval batches, read once in :meth:`result`.

    Rows labelled -1 (the tensor loader's padding of its last batch) are not counted.
    """

    def __init__(self):
        self.correct, self.total = None, None

    @staticmethod
    def predictions(unit_logits: List[torch.Tensor], fused: torch.Tensor,
                    candidates: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """(B, units + 1 + C) predicted classes: every unit's, the fused one, then each of C candidate fusions'."""
        return torch.stack([z.argmax(1) for z in unit_logits] + [fused.argmax(1)] + [c.argmax(1) for c in candidates],
                           dim=1)

    def add(self, preds: torch.Tensor, y: torch.Tensor) -> None:
        """Count a batch of :meth:`predictions` against labels ``y``."""
        keep = y >= 0
        hits = ((preds == y[:, None]) & keep[:, None]).sum(0)
        self.correct = hits if self.correct is None else self.correct + hits
        self.total = keep.sum() if self.total is None else self.total + keep.sum()

    def result(self, num_candidates: int = 0) -> Dict:
        """Accuracies in percent (one host read); with ``num_candidates`` C, the last C prediction columns are
        candidate fusions, returned as ``candidate_accuracy``."""
        if self.correct is None:
            return dict(accuracy=0.0, unit_accuracy=[], eval_images=0)
        values = torch.cat([self.correct.float() / self.total.clamp_min(1) * 100, self.total[None].float()]).tolist()
        acc, n = values[:-1], len(values) - 2 - num_candidates
        out = dict(accuracy=acc[n], unit_accuracy=acc[:n], eval_images=int(values[-1]))
        if num_candidates:
            out['candidate_accuracy'] = acc[n + 1:]
        return out


class LocalTrainer:
    """Trains a timm_ff model under an objective with Accelerate."""

    def __init__(
            self,
            *,
            accelerator: Accelerator,
            model: torch.nn.Module,
            objective,
            optimizer: torch.optim.Optimizer,
            scheduler,
            train_loader,
            eval_loader,
            epochs: int,
            output_dir: Path,
            local_backward: str = 'summed',
            clip_grad: Optional[float] = None,
            checkpoint_steps: int = 0,
            keep_checkpoints: int = 2,
            log_every: int = 20,
            max_train_steps: int = 0,
            seed: int = 0,
            progress: bool = True,
            fusion_check_loader=None,
            micro_batches: Optional[Dict[int, int]] = None,
            eval_every: int = 1,
            fsdp: bool = False,
    ):
        """
        Args:
            accelerator: The run's Accelerator (mixed precision, accumulation, trackers set).
            model: A timm_ff model (``local_units()``, ``fusion``, ``forward_unit_logits``).
            objective: A registered objective.
            optimizer: Optimiser over all the model's parameters (per-parameter state only).
            scheduler: timm scheduler stepped per optimiser update (``step_update``), or None.
            train_loader: Training DataLoader (not yet prepared).
            eval_loader: Eval DataLoader (not yet prepared).
            epochs: Epochs to train.
            output_dir: Run folder (checkpoints, logs, final weights).
            local_backward: 'summed' or 'per_unit' (see :mod:`timm_ff.task`).
            clip_grad: Max gradient norm, applied to each unit separately; None disables.
            checkpoint_steps: Save a checkpoint every N optimiser steps (0: only at epoch ends).
            keep_checkpoints: How many checkpoints to keep.
            log_every: Log training losses every N optimiser steps.
            max_train_steps: Stop after this many optimiser steps in total (0: no limit).
            seed: Seeds each step's random draws (e.g. FF negative labels) with (seed, step, rank).
            progress: Show a tqdm bar on the main process.
            fusion_check_loader: Training images held out of training (never trained on), without
                augmentation; not the eval split. After the
                last epoch the fusion is checked on them against every fused unit alone and the mean
                of every run of consecutive units, and the most accurate is kept (see :meth:`check_fusion`), so
                the fused prediction never trails a unit it could have chosen.
            micro_batches: ``{unit: chunks}``: micro-batch those units inside each step (see
                :class:`~timm_ff.task.LocalTask`; ``per_unit`` mode).
            eval_every: Evaluate after every N-th epoch and after the last (classic FF scores every
                label, so an eval can cost more than an epoch of training).
            fsdp: Shard every unit with FSDP2 (:mod:`timm_ff.fsdp`) although Accelerate runs plain data
                parallel (how FSDP runs on CPU processes); under ``accelerate launch --use_fsdp`` the
                trainer shards without it.
        """
        self._set_run_options(accelerator, model, objective, epochs=epochs, output_dir=output_dir, clip_grad=clip_grad,
                              checkpoint_steps=checkpoint_steps, keep_checkpoints=keep_checkpoints,
                              log_every=log_every, max_train_steps=max_train_steps, seed=seed, progress=progress,
                              eval_every=eval_every)
        self.scheduler = scheduler

        model.to(accelerator.device)
        units = model.local_units()
        fusion = model.fusion if any(p.requires_grad for p in model.fusion.parameters()) else None
        modules = units + ([fusion] if fusion is not None else [])
        # the batch-tensor loaders shard themselves (Accelerate would wrap only DataLoaders)
        loaders = [ld for ld in (train_loader, eval_loader) if not isinstance(ld, TensorLoader)]
        self.fsdp = fsdp_requested(accelerator, force=fsdp)
        if self.fsdp is not None:  # each unit its own fully_shard group; Accelerate prepares only the loaders
            from accelerate.optimizer import AcceleratedOptimizer
            if accelerator.mixed_precision == 'fp16':
                raise ConfigError("FSDP supports --mixed-precision no or bf16, not 'fp16' (its loss scaler does not "
                                  'unscale sharded gradients)')
            sharded = shard_local_units(model, optimizer, accelerator.device, accelerator.num_processes, **self.fsdp)
            accelerator.print(f"fsdp: {len(units)} units{' and the fusion' if len(sharded) > len(units) else ''} "
                              f'sharded over {accelerator.num_processes} processes (FSDP2 fully_shard, one group each)')
            self.train_modules = modules
            self.optimizer = AcceleratedOptimizer(optimizer, device_placement=False)  # steps at sync boundaries
            rest = iter([accelerator.prepare(ld) for ld in loaders])
        else:
            prepared = list(accelerator.prepare(*modules, optimizer, *loaders))
            n = len(modules)
            self.train_modules = prepared[:n]
            self.optimizer = prepared[n]
            rest = iter(prepared[n + 1:])
        self.units = self.train_modules[:len(units)]
        self.train_loader, self.eval_loader = (ld if isinstance(ld, TensorLoader) else next(rest)
                                               for ld in (train_loader, eval_loader))
        self.fusion_check_loader = fusion_check_loader
        if fusion_check_loader is not None and not isinstance(fusion_check_loader, TensorLoader):
            self.fusion_check_loader = accelerator.prepare(fusion_check_loader)
        self.augment_source = train_loader
        self.task = LocalTask(self.units, objective, model.num_classes,
                              fusion=self.train_modules[-1] if fusion is not None else None, mode=local_backward,
                              micro_batches=micro_batches)
        check_micro_batch_size(self.task.micro_batches, getattr(train_loader, 'batch_size', None) or 1)
        accelerator.register_for_checkpointing(self.state)
        if scheduler is not None:
            accelerator.register_for_checkpointing(scheduler)
        if objective.stateful:  # e.g. ff overlap's batch count, whose parity picks the units that have a loss
            accelerator.register_for_checkpointing(objective)

    def _set_run_options(self, accelerator, model, objective, *, epochs: int, output_dir: Path,
                         clip_grad: Optional[float] = None, checkpoint_steps: int = 0, keep_checkpoints: int = 2,
                         log_every: int = 20, max_train_steps: int = 0, seed: int = 0, progress: bool = True,
                         eval_every: int = 1):
        """The settings of a run (see ``__init__``), shared with :class:`timm_ff.pipeline.PipelineTrainer`."""
        self.acc = accelerator
        self.model = model
        self.objective = objective
        self.epochs = epochs
        self.output_dir = Path(output_dir)
        self.clip_grad = clip_grad
        self.checkpoint_steps = checkpoint_steps
        self.keep_checkpoints = max(1, keep_checkpoints)
        self.log_every = max(1, log_every)
        self.eval_every = max(1, eval_every)
        self.max_train_steps = max_train_steps
        self.seed = seed
        self.progress = progress
        self.state = TrainState()
        self.rng_rank = accelerator.process_index  # whose data shard a step's random draws belong to
        self.first_unit = 0  # index of the first unit this process trains (a pipeline stage's first)
        self.fsdp: Optional[Dict] = None  # fully_shard settings when the units are FSDP2-sharded
        self._last_finite: Optional[torch.Tensor] = None  # (L,) last finite losses, on the device
        self._pending: List = []  # the current optimiser step's micro-step losses

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self):
        """``save_state`` into a temporary folder, then rename it into place (atomic on one filesystem)."""
        root = self.output_dir / CHECKPOINT_DIR
        final = root / f'step_{self.state.global_step:08d}'
        tmp = root / f'.tmp_step_{self.state.global_step:08d}'
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.acc.wait_for_everyone()
        self.acc.save_state(str(tmp), safe_serialization=True)
        if self.fsdp is not None:
            save_sharded_state(self.model, self.optimizer, tmp)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            write_json_atomic(tmp / _STATE_FILE, self.state.state_dict())  # marks the checkpoint complete
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in sorted(root.glob('step_*'))[:-self.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()

    def load_checkpoint(self, path: str):
        ckpt = find_checkpoint(path)
        if self.fsdp is None and (ckpt / FSDP_DIR).is_dir():
            raise CheckpointError(f'{ckpt} was written by an FSDP run (it holds {FSDP_DIR}/ shards); resume it under '
                                  'FSDP with as many processes (accelerate launch --use_fsdp --fsdp_version 2, or on '
                                  'CPU ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu ... train_ff.py --fsdp)')
        try:
            self.acc.load_state(str(ckpt))
            if self.fsdp is not None:
                load_sharded_state(self.model, self.optimizer, ckpt)
        except CheckpointError:
            raise
        except Exception as e:  # accelerate raises several types for missing/corrupt files
            raise CheckpointError(f'could not load checkpoint {str(ckpt)!r}: {e}') from e
        self.acc.print(f'resumed from {ckpt} (epoch {self.state.epoch}, step {self.state.global_step})')

    # ------------------------------------------------------------------ train / eval
    def _clip(self):
        if not self.clip_grad:
            return
        self.acc.unscale_gradients()
        for module in self.train_modules:  # never a global norm across units: that would couple them
            torch.nn.utils.clip_grad_norm_(module.parameters(), self.clip_grad)

    @contextlib.contextmanager
    def _step_rng(self, epoch: int):
        """Random draws of one micro-step come from a generator seeded by (seed, epoch, step, rank).

        Nothing else that touches the global RNG (evaluation, a resumed loader's new iterator,
        checkpointing) can then shift a step's randomness, so a resumed run matches an
        uninterrupted one exactly.
        """
        devices = [self.acc.device] if self.acc.device.type == 'cuda' else []
        step_seed = hash((self.seed, epoch, self.state.step_in_epoch, self.rng_rank)) & 0x7FFF_FFFF
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(step_seed)
            yield

    def _check_finite(self, losses: torch.Tensor, num_unit_losses: int, epoch: int,
                      host: Optional[List[List[float]]] = None):
        """Stop at once when a loss of this optimiser step is NaN/inf, before the optimiser applies it.

        Args:
            losses: (micro-steps, L) device tensor: each micro-step's unit losses, then the fusion's.
            num_unit_losses: How many of the L are unit losses.
            epoch: For the message.
            host: ``losses`` already read to the host (a logging step), or None.

        Without ``host`` the check is one fused ``isfinite`` over every loss on the device and one
        read of its verdict: the step's only host synchronisation. The last finite value of each
        loss stays on the device for the message. The last checkpoint on disk is the last good
        state: nothing is saved after this point.
        """
        finite = torch.isfinite(losses)
        ok = all(math.isfinite(v) for row in host for v in row) if host is not None else bool(finite.all())
        if self._last_finite is None or self._last_finite.shape != losses.shape[1:]:
            self._last_finite = torch.full(losses.shape[1:], float('nan'), device=losses.device)
        if not ok:  # the failure path may read as much as it likes
            micro, u = (~finite).nonzero()[0].tolist()
            history = torch.cat([self._last_finite[None], losses[:micro]])
            last = history[:, u][torch.isfinite(history[:, u])]
            last = last[-1].item() if len(last) else None
            what = 'the fusion weights' if u >= num_unit_losses else f'unit {u + self.first_unit}'
            ckpt = sorted((self.output_dir / CHECKPOINT_DIR).glob('step_*'))
            raise TrainingError(
                f'the loss of {what} became {losses[micro, u].item()} at epoch {epoch}, step {self.state.global_step + 1} '
                f"(last finite loss: {'none yet' if last is None else f'{last:.6g}'}); training stopped "
                f"before applying it; last good checkpoint: {ckpt[-1] if ckpt else 'none saved yet'} "
                '(lower --lr, set --clip-grad or use --mixed-precision no)')
        self._last_finite = losses[-1]

    def _done(self) -> bool:
        return bool(self.max_train_steps) and self.state.global_step >= self.max_train_steps

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, epoch: int, bar):
        """One micro-step (forward, backward) and, at an accumulation boundary, the optimiser step.

        Host synchronisations: one per optimiser step (the finite check's verdict, or on a logging
        step the losses themselves, which the check then reads on the host), none on the other
        micro-steps. Returns the micro-step's :class:`~timm_ff.task.StepResult` (device tensors).
        """
        host = None
        if self.fsdp is not None:  # buffers are not sharded: every process uses process 0's, as under DDP
            sync_buffers(self.train_modules)
        with self.acc.accumulate(*(() if self.fsdp is not None else self.train_modules)), self._step_rng(epoch):
            result = self.task.step(x, y, self.acc.backward, self.acc.autocast)
            self._pending.append(result.losses())
            if self.acc.sync_gradients:
                losses = torch.stack(self._pending)
                self._pending = []
                if (self.state.global_step + 1) % self.log_every == 0:
                    host = losses.tolist()
                self._check_finite(losses, len(result.unit_losses), epoch, host=host)
                self._clip()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.state.step_in_epoch += 1
        bar.update(1)
        if self.acc.sync_gradients:
            self.state.global_step += 1
            if self.scheduler is not None:
                self.scheduler.step_update(num_updates=self.state.global_step)
            if host is not None:
                n = len(result.unit_losses)
                logs = {'train/loss': sum(host[-1]), 'lr': max(g['lr'] for g in self.optimizer.param_groups)}
                logs.update({f'train/unit{u}_loss': v for u, v in enumerate(host[-1][:n])})
                if len(host[-1]) > n:
                    logs['train/fusion_loss'] = host[-1][n]
                self.acc.log(logs, step=self.state.global_step)
                bar.set_postfix(loss=f'{sum(host[-1]):.3f}')
            if self.checkpoint_steps and self.state.global_step % self.checkpoint_steps == 0:
                self.save_checkpoint()
        return result

    def train_epoch(self, epoch: int) -> Dict[str, float]:
        """Train one epoch (from ``state.step_in_epoch`` when resumed mid-epoch).

        Returns:
            ``train_time_s``, ``train_images`` and ``train_loss``: the mean total loss of this process's
            micro-steps in the epoch (those run since a resume), summed on the device and read once at the end.
        """
        self.model.train()
        set_augmentation_epoch(self.augment_source, epoch)
        self.train_loader.set_epoch(epoch)
        loader = self.train_loader
        if self.state.step_in_epoch:
            skip = getattr(loader, 'skip_first_batches', None) if isinstance(loader, TensorLoader) else None
            loader = skip(self.state.step_in_epoch) if skip else \
                self.acc.skip_first_batches(self.train_loader, self.state.step_in_epoch)
        bar = tqdm(total=len(self.train_loader), initial=self.state.step_in_epoch, desc=f'epoch {epoch}',
                   disable=not (self.progress and self.acc.is_local_main_process), leave=False)
        seen, t0, steps, loss_sum = 0, time.perf_counter(), 0, None
        self._pending = []
        for x, y in loader:
            loss = self._train_step(x, y, epoch, bar).loss
            loss_sum = loss if loss_sum is None else loss_sum + loss
            steps += 1
            seen += x.shape[0] * self.acc.num_processes
            if self.acc.sync_gradients and self._done():
                break
        bar.close()
        dt = time.perf_counter() - t0
        if self.scheduler is not None and self.state.step_in_epoch >= len(self.train_loader):
            self.scheduler.step(epoch + 1)
        return dict(train_time_s=dt, train_images=seen,
                    train_loss=loss_sum.item() / steps if steps else float('nan'))

    @torch.no_grad()
    def check_fusion(self) -> Optional[Dict]:
        """Compare the fusion as trained with each fused unit alone and with the mean of every run of
        consecutive units, on ``fusion_check_loader``; keep the best unit (the deepest of equals) unless a
        combination beats it by at least 0.5 pp there (then the best combination, the fusion as trained
        first on ties).

        Returns:
            The candidates' accuracies and the choice, or None when there is nothing to check.
        """
        fusion = self.model.fusion
        if self.fusion_check_loader is None or len(fusion.fused_units) < 2:
            return None
        logits, labels = self._fusion_check_logits()
        return self._choose_fusion(logits, labels)

    @torch.no_grad()
    def _fusion_check_logits(self):
        """Every unit's logits on the fusion check images (gathered over processes) and their labels."""
        self.model.eval()
        logits, labels = [], []
        for x, y in self.fusion_check_loader:  # everything stays on the device until the scores are read
            with self.acc.autocast():
                unit_logits = [z.float() for z in self.model.forward_unit_logits(x)]
            unit_logits, y = self.acc.gather_for_metrics((unit_logits, y))
            logits.append(unit_logits)
            labels.append(y)
        return [torch.cat(z) for z in zip(*logits)], torch.cat(labels)

    def _choose_fusion(self, logits: List[torch.Tensor], labels: torch.Tensor) -> Dict:
        """Score the candidates on ``logits`` (one (N, K) tensor per unit) and keep the best in the fusion."""
        fusion = self.model.fusion
        keep = labels >= 0  # the tensor loader pads its last batch with label -1 rows
        units = fusion.fused_units
        with gathered(fusion):
            candidates, weights = fusion_candidates(fusion, labels.device)
        hits = torch.stack([(fusion.combine(logits, w).argmax(1) == labels) & keep for w in weights])
        n = keep.sum().float()
        values = torch.cat([hits.sum(1).float() / n.clamp_min(1) * 100, n[None]]).tolist()  # one read
        scores, n_images = dict(zip(candidates, values[:-1])), int(values[-1])
        single = max((f'unit {u}' for u in reversed(units)), key=lambda n: scores[n])  # ties: the deepest unit
        combined = max((n for n in candidates if n not in {f'unit {u}' for u in units}), key=lambda n: scores[n])
        # a combination must beat the best unit by a margin larger than the check's sampling noise
        # (~0.4 pp on 10k images), else the best unit is kept: it is the likelier winner on unseen data
        best = combined if scores[combined] >= scores[single] + _FUSION_MARGIN_PP else single
        if candidates[best] is not None:
            fusion.select_units(candidates[best])
        self.acc.print(f"fusion check on {n_images} training images: as trained {scores['as trained']:.2f}%, "
                       f"best {single} {scores[single]:.2f}% -> using {best} ({scores[best]:.2f}%)")
        return dict(images=n_images, accuracy=scores, chosen=best)

    @torch.no_grad()
    def evaluate(self, loader=None, count_candidates: bool = False) -> Dict[str, float]:
        """Per-unit and fused top-1 accuracy on the eval set (or ``loader``), gathered over processes.

        ``count_candidates`` (the final eval, before the fusion check) also counts every fusion the check can
        choose, so that its choice's accuracy needs no second pass (classic FF scores every label: an eval is
        K passes an image).
        """
        self.model.eval()
        counts = AccuracyCounts()
        if self.fsdp is not None:
            sync_buffers(self.train_modules)  # every process scores with process 0's statistics (the saved ones)
        names, weights = {}, ()
        if count_candidates and self._fusion_checked():
            with gathered(self.model.fusion):  # under FSDP the fusion weights are read outside its forward
                names, weights = fusion_candidates(self.model.fusion, self.acc.device)
        for x, y in (self.eval_loader if loader is None else loader):  # no host read until the end
            with self.acc.autocast():
                unit_logits = self.model.forward_unit_logits(x)
                fused = self.model.fusion(unit_logits)
            extra = [self.model.fusion.combine(unit_logits, w) for w in weights]
            preds, y = self.acc.gather_for_metrics((counts.predictions(unit_logits, fused, extra), y))
            counts.add(preds, y)
        metrics = counts.result(len(names))
        self._eval_candidates = dict(zip(names, metrics.pop('candidate_accuracy', [])))
        return metrics

    def _fusion_checked(self) -> bool:
        """Whether :meth:`check_fusion` has a choice to make."""
        return self.fusion_check_loader is not None and len(self.model.fusion.fused_units) >= 2

    def fit(self, resume: Optional[str] = None) -> Dict:
        """Train (resuming if asked), evaluate every ``eval_every`` epochs and after the last; returns the final metrics."""
        if resume:
            self.load_checkpoint(resume)
        self._eval_candidates: Dict[str, float] = {}
        history: List[Dict] = []
        train_time, train_images, epochs_run = 0.0, 0, 0
        wall0 = time.perf_counter()
        while self.state.epoch < self.epochs and not self._done():
            epoch = self.state.epoch
            stats = self.train_epoch(epoch)
            train_time += stats['train_time_s']
            train_images += stats['train_images']
            epochs_run += 1
            speed = f"({stats['train_images'] / max(stats['train_time_s'], 1e-9):.0f} img/s)"
            if (epoch + 1) % self.eval_every and epoch + 1 < self.epochs and not self._done():
                self.acc.log({'train/epoch_loss': stats['train_loss']}, step=self.state.global_step)
                self.acc.print(f"epoch {epoch}: loss {stats['train_loss']:.4f}  (no eval: --eval-every "
                               f"{self.eval_every})  {speed}")
            else:
                metrics = self.evaluate(count_candidates=epoch + 1 >= self.epochs)
                history.append(dict(epoch=epoch, step=self.state.global_step, **stats, **metrics))
                self.acc.log({'eval/accuracy': metrics['accuracy'], 'train/epoch_loss': stats['train_loss'],
                              **{f'eval/unit{u}_accuracy': a for u, a in enumerate(metrics['unit_accuracy'])}},
                             step=self.state.global_step)
                self.acc.print(f"epoch {epoch}: loss {stats['train_loss']:.4f}  fused acc {metrics['accuracy']:.2f}%  "
                               f"units {' '.join(f'{a:.1f}' for a in metrics['unit_accuracy'])}  {speed}")
            if self.state.step_in_epoch >= len(self.train_loader):
                self.state.epoch += 1
                self.state.step_in_epoch = 0
            self.save_checkpoint()
        final = history[-1] if history else dict(self.evaluate(count_candidates=True), epoch=self.state.epoch,
                                                 step=self.state.global_step)
        fusion_check = self.check_fusion() if self.state.epoch >= self.epochs else None
        if fusion_check is not None and fusion_check['chosen'] != 'as trained':
            chosen = self._eval_candidates.get(fusion_check['chosen'])  # counted by the last eval, same weights
            final = dict(final, **self.evaluate()) if chosen is None else dict(final, accuracy=chosen)
        held = local_state_bytes(self.model, self.optimizer)  # this process's parameters and optimizer state
        held = self.acc.gather(torch.tensor([[held['param_bytes'], held['optimizer_bytes']]], device=self.acc.device))
        return dict(
            param_bytes_per_process=held[:, 0].tolist(), optimizer_bytes_per_process=held[:, 1].tolist(),
            accuracy=final['accuracy'], unit_accuracy=final['unit_accuracy'], epochs_run=epochs_run,
            fusion_check=fusion_check,
            global_step=self.state.global_step, train_images_per_s=train_images / train_time if train_time else None,
            train_time_s=train_time, wall_time_s=time.perf_counter() - wall0, history=history,
            num_processes=self.acc.num_processes, device=str(self.acc.device), **peak_memory_mb(self.acc.device),
        )

