"""Pipelined unit-parallel training: each process owns a contiguous group of units, all train at once.

A layer-local network has no backward locking: unit group g needs only the *detached* output of
group g-1, and its update never waits for anything downstream. The whole schedule is in this file:

* Rank g owns units ``a_g .. b_g - 1`` (their heads and temperature buffers), their optimiser and
  scheduler state; the last rank also owns the fusion. The other units' tensors are freed on rank g
  (moved to the ``meta`` device).
* For batch t, rank 0 draws it from the loader and builds the objective's input state; rank g > 0
  receives ``(state, labels, logits of units < a_g)`` from rank g-1. The rank runs its units under
  :class:`timm_ff.task.LocalTask` (forward, loss, backward per unit; the fusion loss on the last rank),
  sends ``(detached output state, labels, logits so far)`` on to rank g+1 without blocking (at most
  ``window`` sends in flight, so rank g runs at most ``window`` batches ahead of rank g+1), then checks
  its losses are finite, clips per unit, steps its optimiser and its scheduler. Nothing travels backward.
* Each link is FIFO and every unit is updated once per batch, so rank g trains on batch t with its
  weights after exactly t-1 updates, on an input computed by upstream weights after exactly t-1
  updates: the same arithmetic as the sequential ``per_unit`` loop (bit-exact on CPU; tested). No
  staleness, unlike pipelined backprop.
* Evaluation and the fusion check run the same forward through the ranks (``FFNet.eval_init`` /
  ``eval_unit``); the last rank scores and broadcasts the metrics.
* Messages: a one-integer header (has the layout changed), the layout (which tensors, their shapes
  and dtypes) only when it changes (a new phase, a partial last batch), then each tensor into a
  receive buffer allocated when the layout changed and reused for every batch after. The
  transport is ``torch.distributed`` point-to-point (gloo on CPU, NCCL on GPU); Accelerate launches
  the processes and sets up the device and mixed precision.
* Checkpoints: every rank saves its own shard (``stage<g>/``) into the step's temporary folder; rank 0
  marks it complete and renames it into place once all have. At the end one timm
  ``model.safetensors`` + ``config.json`` is assembled on rank 0 from the ranks' final shards.
* Failure: a rank that raises writes one line naming itself and the cause to
  ``<run>/pipeline_failure.rank<r>.txt`` and exits; the others' pending sends/receives fail (or time
  out after ``timeout_s``) and they exit naming the failed rank and its cause. The last complete
  checkpoint is never touched.
"""
import collections
import copy
import datetime
import inspect
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .data import set_augmentation_epoch
from .data.tensor import TensorLoader
from .errors import CheckpointError, ConfigError, TimmFFError, TrainingError
from .task import LocalTask, check_micro_batch_size, detach_state, map_state
from .trainer import (_STATE_FILE, CHECKPOINT_DIR, AccuracyCounts, LocalTrainer, find_checkpoint, fusion_candidates,
                      write_json_atomic)

__all__ = ['parse_split', 'balanced_split', 'profile_unit_costs', 'restrict_optimizer', 'PipelineTrainer',
           'check_pipeline']

_FAILURE_FILE = 'pipeline_failure.rank{rank}.txt'
_SHARD_DIR = 'stage{stage}'


# ------------------------------------------------------------------------------------------ the split
def parse_split(text: str, num_units: int, stages: int) -> List[Tuple[int, int]]:
    """``'0-2,3-7'`` -> ``[(0, 3), (3, 8)]`` (half-open ranges); every unit exactly once, in order."""
    ranges = []
    for part in text.split(','):
        a, _, b = part.strip().partition('-')
        try:
            a, b = int(a), int(b or a)
        except ValueError:
            raise ConfigError(f"--pipeline-split {text!r}: {part.strip()!r} is not a unit range like '0-2' or '3'") from None
        ranges.append((a, b + 1))
    if len(ranges) != stages:
        raise ConfigError(f'--pipeline-split {text!r} has {len(ranges)} stages but --pipeline-stages is {stages}')
    expected = 0
    for a, b in ranges:
        if a != expected or b <= a:
            what = 'skips' if a > expected else 'repeats' if a < expected else 'has an empty range at'
            raise ConfigError(f'--pipeline-split {text!r} {what} unit {min(a, expected)}: the ranges must cover '
                              f'units 0..{num_units - 1} in order, each once (e.g. 0-{num_units // 2 - 1},'
                              f'{num_units // 2}-{num_units - 1})')
        expected = b
    if expected != num_units:
        raise ConfigError(f'--pipeline-split {text!r} ends at unit {expected - 1} but the model has units '
                          f'0..{num_units - 1}; every unit must be in one stage')
    return ranges


def balanced_split(costs: Sequence[float], stages: int) -> List[Tuple[int, int]]:
    """Contiguous split of units with per-unit ``costs`` into ``stages`` groups minimising the slowest group."""
    n = len(costs)
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float('inf')
    # best[s][i]: the smallest possible slowest group when the first i units form s groups
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for s in range(1, stages + 1):
        for i in range(s, n + 1):
            for j in range(s - 1, i):
                v = max(best[s - 1][j], prefix[i] - prefix[j])
                if v < best[s][i]:
                    best[s][i], cut[s][i] = v, j
    ranges, i = [], n
    for s in range(stages, 0, -1):
        ranges.append((cut[s][i], i))
        i = cut[s][i]
    return ranges[::-1]


def profile_unit_costs(model: torch.nn.Module, objective, x: torch.Tensor, y: torch.Tensor,
                       autocast: Callable, repeats: int = 2) -> List[float]:
    """Seconds of one local step (forward, loss, backward) of each unit on batch ``x``, measured on a copy."""
    model = copy.deepcopy(model).train()
    units = model.local_units()
    times = [0.0] * len(units)
    for rep in range(repeats + 1):  # the first round warms up
        state = objective.init_state(x, y, model.num_classes)
        for u, unit in enumerate(units):
            state = detach_state(state)
            _sync(x.device)
            t0 = time.perf_counter()
            with autocast():
                state, out = objective.unit_forward(unit, u, state)
                loss = objective.unit_loss(u, len(units), out, y)
            if loss is not None:
                loss.backward()
            _sync(x.device)
            if rep:
                times[u] += (time.perf_counter() - t0) / repeats
    return times


def _sync(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def restrict_optimizer(optimizer: torch.optim.Optimizer, params: Sequence[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """A fresh optimiser of the same type and per-group settings over only ``params`` (not yet stepped)."""
    if optimizer.state:
        raise ConfigError('the pipeline splits the optimiser before training; it must not have stepped yet')
    own = {id(p) for p in params}
    groups = [dict(g, params=[p for p in g['params'] if id(p) in own]) for g in optimizer.param_groups]
    accepted = inspect.signature(type(optimizer).__init__).parameters  # defaults may hold internal keys too
    defaults = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    return type(optimizer)([g for g in groups if g['params']], **defaults)


def check_pipeline(*, stages: int, num_processes: int, num_units: int, objective, grad_accum_steps: int,
                   mixed_precision: str, data_pipeline: str) -> None:
    """The settings a pipeline run needs; each wrong one is one clear error naming it."""
    if not objective.local and objective.nonlocal_setting:
        raise ConfigError(f'--pipeline-stages: objective {objective.name!r} with {objective.nonlocal_setting} is not '
                          'layer-local, and a forward-only pipeline sends no gradient back to the stage before; '
                          f'allowed: {objective.name!r} without it (its default), or drop --pipeline-stages')
    if not objective.local:  # first: no launch fixes it
        raise ConfigError(f'--pipeline-stages: objective {objective.name!r} backpropagates end to end, so each unit '
                          'needs a gradient from downstream, which a forward-only pipeline never sends; use a local '
                          'objective (dtg, ff) or drop --pipeline-stages')
    if stages == 1 or num_processes == 1:
        raise ConfigError(f'--pipeline-stages {stages} needs one process per stage, but this run has {num_processes} '
                          f'process(es); launch with accelerate launch --multi_gpu --num_processes {max(stages, 2)} '
                          '(ACCELERATE_USE_CPU=1 on CPU), or drop --pipeline-stages')
    if stages != num_processes:
        raise ConfigError(f'--pipeline-stages {stages} needs exactly {stages} processes (one per stage), but this '
                          f'run has {num_processes}; pipeline x data parallel is not supported')
    if stages > num_units:
        raise ConfigError(f'--pipeline-stages {stages} is more than the model has units ({num_units}); '
                          f'pick 2..{num_units}')
    if grad_accum_steps != 1:
        raise ConfigError(f'--pipeline-stages does not support --grad-accum-steps {grad_accum_steps}; use 1 '
                          '(micro-batch a unit with --unit-micro-batches instead)')
    if mixed_precision == 'fp16':
        raise ConfigError("--pipeline-stages supports --mixed-precision no or bf16, not 'fp16' (its loss scaler "
                          'couples the stages)')
    if data_pipeline != 'tensor':
        raise ConfigError(f'--pipeline-stages needs the batch-tensor data path (this run uses {data_pipeline!r}): '
                          'pass --data-pipeline tensor with a small-image dataset (CIFAR, MNIST, SVHN, ...)')


# ------------------------------------------------------------------------------------------ messages
class _Leaf(tuple):
    """Marks where a tensor sits in a message's structure (all marks are equal: the order says which)."""


def _flatten(obj: Any, out: List[torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
        return _Leaf()
    if isinstance(obj, dict):
        return {k: _flatten(v, out) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not isinstance(obj, _Leaf):
        return type(obj)(_flatten(v, out) for v in obj)
    return obj


def _unflatten(layout: Any, tensors) -> Any:
    if isinstance(layout, _Leaf):
        return next(tensors)
    if isinstance(layout, dict):
        return {k: _unflatten(v, tensors) for k, v in layout.items()}
    if isinstance(layout, (list, tuple)):
        return type(layout)(_unflatten(v, tensors) for v in layout)
    return layout


class PeerLost(RuntimeError):
    """A send, receive or collective failed or timed out: another stage went away."""


def _peer_op(fn, *args, **kwargs):
    """Run a torch.distributed call; its failure means a peer is gone (raised as :class:`PeerLost`)."""
    try:
        return fn(*args, **kwargs)
    except PeerLost:
        raise
    except RuntimeError as e:  # gloo / NCCL raise RuntimeError (DistBackendError) for a closed peer or a timeout
        raise PeerLost(f'{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""}') from e


class Link:
    """One direction of a stage-to-stage connection: non-blocking sends with a bounded window, receives into
    preallocated buffers. Counts the bytes it moves and the seconds it waits."""

    def __init__(self, peer: int, device: torch.device, window: int, timeout_s: float):
        self.peer, self.device, self.window = peer, device, max(1, window)
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.pending = collections.deque()  # (works, tensors kept alive until sent)
        self.sent_layout, self.recv_layout = None, None
        self.header = torch.zeros(1, dtype=torch.int64, device=device)
        self.buffers: Dict[int, torch.Tensor] = {}
        self.bytes_sent = 0
        self.wait_s = 0.0

    def _wait(self, work):
        t0 = time.perf_counter()
        _peer_op(work.wait, self.timeout)
        self.wait_s += time.perf_counter() - t0

    def send(self, message: Any) -> None:
        tensors: List[torch.Tensor] = []
        structure = _flatten(message, tensors)
        tensors = [t.detach().contiguous() for t in tensors]
        layout = (structure, [(tuple(t.shape), str(t.dtype).split('.')[-1]) for t in tensors])
        while len(self.pending) >= self.window:  # the window: wait for the oldest batch to be received
            for work in self.pending.popleft()[0]:
                self._wait(work)
        new_layout = layout != self.sent_layout
        header = torch.tensor([int(new_layout)], dtype=torch.int64, device=self.device)
        works = [_peer_op(dist.isend, header, self.peer)]
        if new_layout:  # rare: the first batch of a phase, or a change of shapes
            for work in works:
                self._wait(work)
            works = []
            _peer_op(dist.send_object_list, [layout], dst=self.peer, device=self.device)
            self.sent_layout = layout
        works += [_peer_op(dist.isend, t, self.peer) for t in tensors]
        self.bytes_sent += header.numel() * 8 + sum(t.numel() * t.element_size() for t in tensors)
        self.pending.append((works, (header, tensors)))

    def recv(self) -> Any:
        self._wait(_peer_op(dist.irecv, self.header, self.peer))
        new_layout = self.header.item()  # the receiving stage's one host read per message
        if new_layout:
            box = [None]
            t0 = time.perf_counter()
            _peer_op(dist.recv_object_list, box, src=self.peer, device=self.device)
            self.wait_s += time.perf_counter() - t0
            self.recv_layout = box[0]
        structure, specs = self.recv_layout
        tensors = []
        for i, (shape, dtype) in enumerate(specs):
            buf = self.buffers.get(i)
            if buf is None or tuple(buf.shape) != shape or str(buf.dtype).split('.')[-1] != dtype:
                buf = self.buffers[i] = torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
            self._wait(_peer_op(dist.irecv, buf, self.peer))
            tensors.append(buf)
        return _unflatten(structure, iter(tensors))

    def flush(self) -> None:
        while self.pending:
            for work in self.pending.popleft()[0]:
                self._wait(work)


def _clone(message: Any) -> Any:
    """Received tensors live in reused buffers: copy what is passed on (labels, logits) before sending it."""
    return map_state(torch.Tensor.clone, message)


# ------------------------------------------------------------------------------------------ the trainer
class PipelineTrainer(LocalTrainer):
    """Trains a timm_ff model with its units spread over the processes (one stage per process).

    It keeps :class:`~timm_ff.trainer.LocalTrainer`'s epoch loop (``fit``), finite check, per-unit
    clipping, step seeding and fusion choice, and replaces what a pipeline does differently: the
    training and evaluation schedules, checkpoints and the final weights.
    """

    def __init__(
            self,
            *,
            accelerator,
            model: torch.nn.Module,
            objective,
            optimizer: torch.optim.Optimizer,
            make_scheduler: Optional[Callable[[torch.optim.Optimizer], Any]],
            train_loader: TensorLoader,
            eval_loader: TensorLoader,
            split: Optional[Sequence[Tuple[int, int]]] = None,
            window: int = 2,
            timeout_s: float = 120.0,
            local_backward: str = 'per_unit',
            fusion_check_loader: Optional[TensorLoader] = None,
            micro_batches: Optional[Dict[int, int]] = None,
            **run_options,
    ):
        """
        Args:
            accelerator: The run's Accelerator (one process per stage, device and mixed precision set).
            model: A timm_ff model, identical on every process (same seed); each keeps only its units.
            objective: A local objective.
            optimizer: Optimiser over all the model's parameters, not yet stepped; each stage keeps a copy
                restricted to its parameters (same type and per-group settings).
            make_scheduler: Builds the stage's scheduler from its optimiser (or None for none).
            train_loader: Batch-tensor loader of the whole batch (not sharded); only rank 0 draws from it.
            eval_loader: Batch-tensor eval loader (not sharded).
            split: Half-open unit ranges, one per stage (None: balanced from a profiling pass on rank 0).
            window: Batches a stage may run ahead of the next one (sends in flight).
            timeout_s: How long a stage waits for a peer before giving up.
            local_backward: 'per_unit' or 'summed' inside each stage.
            fusion_check_loader: Un-augmented training images for the fusion check (not sharded).
            micro_batches: ``{unit: chunks}`` for :class:`~timm_ff.task.LocalTask`.
            **run_options: ``epochs``, ``output_dir``, ``clip_grad``, ``checkpoint_steps``,
                ``keep_checkpoints``, ``log_every``, ``max_train_steps``, ``seed``, ``progress``, ``eval_every``, as
                for :class:`~timm_ff.trainer.LocalTrainer`.
        """
        self._set_run_options(accelerator, model, objective, **run_options)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.rng_rank = 0  # one data stream, as in the single-process run
        self.rank, self.num_stages = accelerator.process_index, accelerator.num_processes
        self.first, self.last = self.rank == 0, self.rank == self.num_stages - 1
        self.train_loader, self.eval_loader = train_loader, eval_loader
        self.fusion_check_loader = fusion_check_loader
        self.augment_source = train_loader
        self.window, self.timeout_s = window, timeout_s
        device = accelerator.device
        model.to(device)
        units = model.local_units()
        self.unit_costs = None  # seconds per unit, when the split came from the profiling pass
        self.split = list(split) if split is not None else self._profile_split(units)
        a, b = self.split[self.rank]
        self.unit_range, self.first_unit = (a, b), a
        self.fusion_trained = any(p.requires_grad for p in model.fusion.parameters())
        own = [*units[a:b]] + ([model.fusion] if self.last and self.fusion_trained else [])
        self.train_modules = own
        self.units = units[a:b]
        self._free_other_units(units, a, b)
        self.optimizer = restrict_optimizer(optimizer, [p for m in own for p in m.parameters()])
        self.scheduler = make_scheduler(self.optimizer) if make_scheduler is not None else None
        self.task = LocalTask(self.units, objective, model.num_classes,
                              fusion=model.fusion if self.last else None, mode=local_backward, first_unit=a,
                              num_units=len(units), micro_batches=micro_batches, collect_logits=self.fusion_trained)
        check_micro_batch_size(self.task.micro_batches, train_loader.batch_size)
        self.prev = Link(self.rank - 1, device, window, timeout_s) if not self.first else None
        self.next = Link(self.rank + 1, device, window, timeout_s) if not self.last else None
        self.stats = dict(busy_s=0.0, wall_s=0.0, steps=0)

    # ------------------------------------------------------------------ set-up
    def _profile_split(self, units) -> List[Tuple[int, int]]:
        """Rank 0 times every unit's local step on one training batch; all ranks take its balanced split."""
        found = None
        if self.first:
            x, y = next(iter(self.train_loader))
            costs = profile_unit_costs(self.model, self.objective, x, y, self.acc.autocast)
            found = dict(split=balanced_split(costs, self.num_stages), costs=costs)
        found = self._broadcast(found, 0)
        self.unit_costs = found['costs']
        return [tuple(r) for r in found['split']]

    def _free_other_units(self, units, a: int, b: int):
        """Move every unit outside [a, b) (and a fusion this stage does not own) to the meta device."""
        for u, unit in enumerate(units):
            if not a <= u < b:
                unit.to('meta')
        if not self.last:
            self.model.fusion.to('meta')

    def owned_state_dict(self) -> Dict[str, torch.Tensor]:
        """This stage's tensors (parameters and buffers) under the full model's keys, on the CPU."""
        return {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items() if v.device.type != 'meta'}

    # ------------------------------------------------------------------ failure
    def _failure_line(self, e: BaseException) -> str:
        text = str(e).splitlines()[0] if str(e) else ''
        what = text if isinstance(e, TimmFFError) else f'{type(e).__name__}: {text}'
        a, b = self.unit_range
        return f'pipeline stage {self.rank} (rank {self.rank}, units {a}-{b - 1}) failed: {what}'

    def _peer_failure(self, e: BaseException) -> TrainingError:
        """The error this rank raises when a peer went away: name the rank that failed and why, if it said."""
        deadline = time.time() + 5.0
        while time.time() < deadline:
            found = [f for f in sorted(self.output_dir.glob(_FAILURE_FILE.format(rank='*')))
                     if f.name != _FAILURE_FILE.format(rank=self.rank)]
            if found:
                return TrainingError(f'pipeline stage {self.rank} stopped because {found[0].read_text().strip()}')
            time.sleep(0.2)
        return TrainingError(f'pipeline stage {self.rank} stopped: lost contact with another stage ({e}); that '
                             "rank's own error says why; the last complete checkpoint is kept")

    def _record_failure(self, e: BaseException):
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / _FAILURE_FILE.format(rank=self.rank)).write_text(self._failure_line(e) + '\n')

    def _barrier(self):
        _peer_op(self.acc.wait_for_everyone)

    def _broadcast(self, obj: Any, src: int) -> Any:
        from accelerate.utils import broadcast_object_list
        box = [obj]
        _peer_op(broadcast_object_list, box, from_process=src)
        return box[0]

    # ------------------------------------------------------------------ training
    def train_epoch(self, epoch: int) -> Dict[str, float]:
        self.model.train()
        steps = len(self.train_loader) - self.state.step_in_epoch
        if self.max_train_steps:
            steps = min(steps, self.max_train_steps - self.state.global_step)
        it = None
        if self.first:
            set_augmentation_epoch(self.augment_source, epoch)
            self.train_loader.set_epoch(epoch)
            it = iter(self.train_loader.skip_first_batches(self.state.step_in_epoch))
        bar = tqdm(total=len(self.train_loader), initial=self.state.step_in_epoch, desc=f'epoch {epoch}',
                   disable=not (self.progress and self.first), leave=False)
        t0, seen, done, loss_sum = time.perf_counter(), 0, 0, None
        for _ in range(steps):
            t_step = time.perf_counter()
            wait0 = self._waited()
            with self._step_rng(epoch):
                if self.first:
                    x, y = next(it)
                    state, logits = self.objective.init_state(x, y, self.model.num_classes), []
                else:
                    state, y, logits = self.prev.recv()
                out, result, logits = self.task.run(state, y, self.acc.backward, self.acc.autocast, logits)
            if self.next is not None:
                self.next.send((detach_state(out), _clone(y), _clone(logits)))
            del state, out
            log = (self.state.global_step + 1) % self.log_every == 0
            losses = result.losses()[None]
            host = losses.tolist() if log else None
            self._check_finite(losses, len(result.unit_losses), epoch, host=host)
            self._clip()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.state.step_in_epoch += 1
            self.state.global_step += 1
            seen += y.shape[0]
            bar.update(1)
            if self.scheduler is not None:
                self.scheduler.step_update(num_updates=self.state.global_step)
            if host is not None:
                self._log_losses(host[0], len(result.unit_losses))
            loss_sum = result.loss if loss_sum is None else loss_sum + result.loss
            done += 1
            self.stats['busy_s'] += time.perf_counter() - t_step - (self._waited() - wait0)
            self.stats['steps'] += 1
            if self.checkpoint_steps and self.state.global_step % self.checkpoint_steps == 0:
                self.save_checkpoint()
        if self.next is not None:
            self.next.flush()
        bar.close()
        dt = time.perf_counter() - t0
        self.stats['wall_s'] += dt
        if self.scheduler is not None and self.state.step_in_epoch >= len(self.train_loader):
            self.scheduler.step(epoch + 1)
        # this stage's mean loss over the epoch's steps; summed over the stages: the whole network's
        total = loss_sum / done if done else torch.zeros((), device=self.acc.device)
        _peer_op(dist.all_reduce, total)
        return dict(train_time_s=dt, train_images=seen, train_loss=total.item())

    def _waited(self) -> float:
        return sum(link.wait_s for link in (self.prev, self.next) if link is not None)

    def _log_losses(self, values: List[float], n_units: int):
        a = self.unit_range[0]
        logs = {f'train/unit{a + i}_loss': v for i, v in enumerate(values[:n_units])}
        if len(values) > n_units:
            logs['train/fusion_loss'] = values[n_units]
        logs['lr'] = max(g['lr'] for g in self.optimizer.param_groups)
        if self.first:
            self.acc.log(logs, step=self.state.global_step)
        else:  # Accelerate's trackers log from rank 0 only: the other stages keep their own file
            with open(self.output_dir / f'log_stage{self.rank}.jsonl', 'a') as f:
                f.write(json.dumps({'step': self.state.global_step, **logs}) + '\n')

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _forward(self, loader, consume: Callable[[List[torch.Tensor], torch.Tensor], None]):
        """The eval forward through the stages; ``consume(unit logits, labels)`` runs on the last stage."""
        self.model.eval()
        a, b = self.unit_range
        batches = iter(loader) if self.first else range(len(loader))
        for item in batches:
            with self.acc.autocast():
                if self.first:
                    x, y = item
                    state, logits = self.model.eval_init(x), []
                else:
                    state, y, logits = self.prev.recv()
                for u in range(a, b):
                    state, z = self.model.eval_unit(u, state)
                    logits.append(z.float())
            if self.next is not None:
                self.next.send((state, _clone(y), _clone(logits)))
            else:
                consume(logits, y)
        if self.next is not None:
            self.next.flush()

    def evaluate(self, loader=None, count_candidates: bool = False) -> Dict[str, float]:
        counts = AccuracyCounts()
        # as LocalTrainer.evaluate; the last stage counts the candidate fusions and broadcasts them
        names, weights = fusion_candidates(self.model.fusion, self.acc.device) \
            if self.last and count_candidates and self._fusion_checked() else ({}, ())

        def consume(unit_logits, y):
            extra = [self.model.fusion.combine(unit_logits, w) for w in weights]
            counts.add(counts.predictions(unit_logits, self.model.fusion(unit_logits), extra), y)
        self._forward(self.eval_loader if loader is None else loader, consume)
        result = None
        if self.last:
            result = counts.result(len(names))
            result['candidates'] = dict(zip(names, result.pop('candidate_accuracy', [])))
        metrics = self._broadcast(result, self.num_stages - 1)
        self._eval_candidates = metrics.pop('candidates')
        return metrics

    def check_fusion(self) -> Optional[Dict]:
        fusion = self.model.fusion  # its unit layout is plain ints, known on every stage
        if self.fusion_check_loader is None or fusion.num_units - fusion.first < 2:
            return None
        collected = []
        # received tensors live in reused buffers: keep copies
        self._forward(self.fusion_check_loader, lambda logits, y: collected.append((_clone(logits), y.clone())))
        info = None
        if self.last:
            logits = [torch.cat(z) for z in zip(*(c[0] for c in collected))]
            info = self._choose_fusion(logits, torch.cat([c[1] for c in collected]))
        info = self._broadcast(info, self.num_stages - 1)
        self.acc.print(f"fusion check on {info['images']} training images: as trained "
                       f"{info['accuracy']['as trained']:.2f}% -> using {info['chosen']}")
        return info

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self):
        root = self.output_dir / CHECKPOINT_DIR
        final = root / f'step_{self.state.global_step:08d}'
        tmp = root / f'.tmp_step_{self.state.global_step:08d}'
        if self.first:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        shard = tmp / _SHARD_DIR.format(stage=self.rank)
        shard.mkdir()
        save_file(self.owned_state_dict(), str(shard / 'model.safetensors'))
        torch.save(dict(optimizer=self.optimizer.state_dict(),
                        scheduler=self.scheduler.state_dict() if self.scheduler is not None else None),
                   shard / 'train.pt')
        self._barrier()
        if self.first:
            write_json_atomic(tmp / _STATE_FILE, dict(self.state.state_dict(), pipeline_split=self.split))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in sorted(root.glob('step_*'))[:-self.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self._barrier()

    def load_checkpoint(self, path: str):
        ckpt = find_checkpoint(path)
        info = json.loads((ckpt / _STATE_FILE).read_text())
        saved = [tuple(r) for r in info.get('pipeline_split') or []]
        if not saved:
            raise CheckpointError(f'checkpoint {str(ckpt)!r} was saved by a run without --pipeline-stages; resume it '
                                  'the way it was trained (no --pipeline-stages), or start a new --output')
        if saved != self.split:
            text = ','.join(f'{a}-{b - 1}' for a, b in saved)
            raise CheckpointError(f'checkpoint {str(ckpt)!r} was saved with --pipeline-split {text} '
                                  f'({len(saved)} stages); resume with --pipeline-stages {len(saved)} '
                                  f'--pipeline-split {text}')
        shard = ckpt / _SHARD_DIR.format(stage=self.rank)
        try:
            weights = load_file(str(shard / 'model.safetensors'))
            train = torch.load(shard / 'train.pt', map_location='cpu', weights_only=False)  # moved by load_state_dict
        except Exception as e:  # safetensors / pickle raise several types for missing or corrupt files
            raise CheckpointError(f'could not load pipeline shard {str(shard)!r}: {e}') from e
        own = set(self.owned_state_dict())
        if set(weights) != own:
            raise CheckpointError(f'pipeline shard {str(shard)!r} holds other tensors than stage {self.rank} owns')
        self.model.load_state_dict(weights, strict=False)
        self.optimizer.load_state_dict(train['optimizer'])
        if self.scheduler is not None and train['scheduler'] is not None:
            self.scheduler.load_state_dict(train['scheduler'])
        self.state.load_state_dict({k: info[k] for k in ('epoch', 'step_in_epoch', 'global_step')})
        self.acc.print(f'resumed from {ckpt} (epoch {self.state.epoch}, step {self.state.global_step})')

    def assemble(self):
        """Give rank 0 the whole trained model (every stage's final tensors), for the usual timm save."""
        folder = self.output_dir / '.pipeline_final'
        if self.first:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        self._barrier()
        save_file(self.owned_state_dict(), str(folder / f'stage{self.rank}.safetensors'))
        self._barrier()
        if self.first:
            merged = {}
            for g in range(self.num_stages):
                merged.update(load_file(str(folder / f'stage{g}.safetensors')))
            self.model.load_state_dict(merged, strict=True, assign=True)
            self.model.to(self.acc.device)
            shutil.rmtree(folder, ignore_errors=True)
        self._barrier()

    def fit(self, resume: Optional[str] = None) -> Dict:
        """Train and evaluate as :meth:`LocalTrainer.fit`; a failure on any stage ends every stage with one line."""
        try:
            return self._fit(resume)
        except PeerLost as e:
            raise self._peer_failure(e) from e
        except Exception as e:
            self._record_failure(e)
            raise TrainingError(self._failure_line(e)) from e

    def _fit(self, resume: Optional[str]) -> Dict:
        if resume:
            self.load_checkpoint(resume)
        metrics = super().fit(resume=None)
        self.assemble()
        waited = self._waited()
        wall = max(self.stats['wall_s'], 1e-9)
        mine = dict(rank=self.rank, units=list(self.unit_range), busy_fraction=self.stats['busy_s'] / wall,
                    wait_s=waited, bytes_sent=self.next.bytes_sent if self.next else 0, steps=self.stats['steps'])
        stages = [None] * self.num_stages
        _peer_op(dist.all_gather_object, stages, mine)
        metrics['pipeline'] = dict(stages=self.num_stages, split=[f'{a}-{b - 1}' for a, b in self.split],
                                   window=self.window, per_stage=stages,
                                   unit_costs_s=self.unit_costs)
        return metrics
