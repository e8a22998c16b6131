"""Counting the operations that make a host wait for a GPU, on any device, a CPU included.

On a GPU, kernels run in a queue the host fills ahead of them; an operation that needs a value
on the host (`.item()`, `bool(tensor)`, `torch.nonzero`'s output size, torch.multinomial's
checks of its distribution) or copies from Python data (`torch.tensor([...], device=...)`, a
blocking copy) waits until the queue has drained. A decode step should do that once. CUDA
reports such waits itself (`torch.cuda.set_sync_debug_mode`), but only on a GPU; `HostSyncProbe`
finds the same operations by name wherever the code runs, so the tests hold a step to one wait
on a machine without a GPU. What it cannot see is what no operation records: a `.tolist()` of a
CPU tensor (on a GPU, a copy it would catch), which the caller counts instead.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

WAITING_OPS = frozenset({
    aten._local_scalar_dense.default,  # .item(), bool(), int(), float(), indexing by a 0-d tensor
    aten.nonzero.default,  # its output's size
    aten.masked_select.default,
    aten.multinomial.default,  # two checks of the distribution read back
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten.repeat_interleave.Tensor,
    aten.bincount.default,
    aten.equal.default,
    aten.is_nonzero.default,
})
"""Operations whose CUDA implementation waits for the GPU's queue (or whose result's size
depends on the values)."""


def _waits(func, args, kwargs) -> bool:
    if func in WAITING_OPS:
        return True
    if func is aten.lift_fresh.default:
        # a tensor made from Python data (`torch.tensor([...])`) is copied from the host; a 0-d
        # one is how a Python number is assigned by indexing, a fill on the device
        return args[0].dim() > 0
    if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default):
        # a boolean mask as an index becomes `nonzero` inside
        return any(isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in (args[1] or ()))
    if func is aten._to_copy.default:  # its device is a keyword argument
        target = kwargs.get("device")
        return target is not None and torch.device(target) != args[0].device
    if func is aten.copy_.default:
        return args[0].device != args[1].device  # between the host and a device
    return False


class HostSyncProbe(TorchDispatchMode):
    """While active, records each operation that would make the host wait for a GPU
    (`WAITING_OPS`, boolean-mask indexing, copies between devices, tensors made from Python
    lists) in `waits`, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[str] = []
        """The waiting operations seen, in order."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if _waits(func, args, kwargs or {}):
            self.waits.append(str(func))
        return func(*args, **(kwargs or {}))
