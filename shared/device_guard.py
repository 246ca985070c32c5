"""A device-mismatch guard to run the CUDA code paths under on a CPU-only machine
(tests/test_device.py, tools/gpu_check.sh --device cpu --guard true).

On a CPU-only machine every tensor is on the CPU, so a tensor that a CUDA run
would leave behind on the CPU (created without `device=`, e.g.
`torch.tensor(arcs)` next to CUDA lattice tensors) goes unnoticed.  Inside
`device_guard()`:

- the default device is 'meta': a tensor created without an explicit device
  lands on 'meta' (no data), where on a GPU machine it would land on the CPU
  while the model is on CUDA;
- every torch call (functions, methods, indexing, in-place ops) that mixes a
  'meta' tensor with a tensor on a real device raises DeviceMismatch, and
  reading a 'meta' tensor's values (.item(), .tolist(), int()) raises too.

So code that runs cleanly under the guard with the model on the CPU creates
every tensor on the device of the tensors it was given (the model's), which
is what a CUDA run needs.  Host-side data made on purpose (features, which
the data loader produces on the CPU) must say device="cpu" explicitly.
"""

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten


class DeviceMismatch(RuntimeError):
    """A torch call mixed a tensor created on the default device with the
    model's tensors."""


class _MixedDeviceCheck(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves, _ = tree_flatten((args, kwargs))
        devices = {leaf.device.type for leaf in leaves if isinstance(leaf, torch.Tensor)}
        if "meta" in devices and len(devices) > 1:
            raise DeviceMismatch(
                f"{getattr(func, '__name__', func)} mixes a tensor created without an "
                f"explicit device (on 'meta' under the guard) with tensors on {devices - {'meta'}}"
            )
        return func(*args, **kwargs)


@contextlib.contextmanager
def device_guard() -> Iterator[None]:
    """Runs a block with 'meta' as the default device and mixed-device calls
    forbidden (see the module docstring)."""
    with torch.device("meta"), _MixedDeviceCheck():
        yield


def guarded(function: Any) -> Any:
    """`function` wrapped to run under `device_guard()`."""

    def wrapper(*args, **kwargs):
        with device_guard():
            return function(*args, **kwargs)

    wrapper.__wrapped__ = function
    return wrapper
