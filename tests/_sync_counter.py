"""Counting host synchronisations on any device, CPU included.

On a GPU the host stops until the device has caught up whenever it reads a device value (``.item()``,
``float(t)``, ``bool(t)``, ``.tolist()``, ``.numpy()``), runs an op whose output size depends on the
data (``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``), copies between host and
device without ``non_blocking``, or calls a CUDA ``synchronize``. :class:`SyncCounter` counts each of
these while it is active, on whatever device the tensors live, so a CPU test sees every place that
would stall a GPU (cross-device copies can only be seen on a machine that has a second device).

Two kinds of reads are not counted because their tensors live on the host on every device: the
optimiser's step counters (``state['step']`` is a CPU tensor unless ``capturable=True``) and the
``torch.utils.data.DataLoader``'s own bookkeeping (its seed draw, its CPU batches; moving a batch to
the device is a copy, counted as such).
"""
import sys
import traceback
from typing import List

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# ops whose result needs a device value on the host
_READ_OPS = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten._unique2, aten.unique_dim,
             aten.unique_consecutive, aten.equal, aten.is_nonzero}
_HOST_SIDE = ('/torch/optim/', '/torch/utils/data/')


def _host_side_caller() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if any(part in frame.f_code.co_filename for part in _HOST_SIDE):
            return True
        frame = frame.f_back
    return False


def _bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


class SyncCounter(TorchDispatchMode):
    """Context manager: ``count`` host synchronisations while active; ``where`` says what and from where."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.where: List[str] = []
        self._patched = []

    def _hit(self, what: str):
        self.count += 1
        here = [f for f in traceback.extract_stack()[:-3] if '/site-packages/torch/' not in f.filename]
        self.where.append(f'{what} at ' + ' <- '.join(f'{f.filename.rsplit("/", 1)[-1]}:{f.lineno}' for f in here[-3:][::-1]))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in _READ_OPS and not _host_side_caller():
            self._hit(str(packet))
        elif packet in (aten.index, aten.index_put, aten.index_put_) and _bool_index(args[1]):
            self._hit(f'{packet} with a boolean mask')
        elif func is aten.repeat_interleave.Tensor and kwargs.get('output_size') is None:
            self._hit('repeat_interleave of tensor repeats without output_size')
        elif packet in (aten._to_copy, aten.copy_) and not kwargs.get('non_blocking', False):
            src = args[1] if packet is aten.copy_ else args[0]
            dst = args[0].device if packet is aten.copy_ else kwargs.get('device', src.device)
            if isinstance(src, torch.Tensor) and dst is not None and (src.device.type == 'cpu') != (
                    torch.device(dst).type == 'cpu'):
                self._hit(f'blocking copy {src.device} -> {dst}')
        return func(*args, **kwargs)

    def _wrap(self, owner, name: str, what: str):
        original = getattr(owner, name)
        counter = self

        def wrapper(*a, **k):
            if not _host_side_caller():
                counter._hit(what)
            return original(*a, **k)
        setattr(owner, name, wrapper)
        self._patched.append((owner, name, original))

    def __enter__(self):
        # host reads that do not go through the dispatcher on CPU tensors
        self._wrap(torch.Tensor, 'tolist', 'Tensor.tolist')
        self._wrap(torch.Tensor, 'numpy', 'Tensor.numpy')
        self._wrap(torch.cuda, 'synchronize', 'torch.cuda.synchronize')
        self._wrap(torch.cuda.Event, 'synchronize', 'torch.cuda.Event.synchronize')
        self._wrap(torch.cuda.Stream, 'synchronize', 'torch.cuda.Stream.synchronize')
        return super().__enter__()

    def __exit__(self, *exc):
        for owner, name, original in reversed(self._patched):
            setattr(owner, name, original)
        self._patched.clear()
        return super().__exit__(*exc)
