"""Launching anyattn's Triton kernels without Triton's per-call binder.

``kernel[grid](*args, **constexprs)`` re-derives on every call the specialization of every
argument (each pointer's dtype and 16-byte alignment, whether each int is 1 or a multiple of
16) to find the compiled binary: about 20 µs of host time for the attention kernel's 70
arguments on the H200, plus the dispatch around it. :class:`BoundKernel` finds the binary
from a key that is cheap to build and at least as fine as Triton's specialization:

- ``key``: the caller's key for what fixes the binary besides the arguments below: the
  pointers' dtypes and the constexprs and options (a caller that prepares those once per
  variant passes that variant; None: the pointers' dtypes are read here);
- ``tensors``: whether every pointer is 16-byte aligned (else which ones are);
- ``ints``: exact values of the ints Triton specializes (strides, which are the same for
  every layer of a model);
- ``free``: ints the kernel declares ``do_not_specialize`` (row counts, windows), which only
  need their 32-bit range checked;
- ``floats``: Python floats (never specialized; an int here would be);
- ``static``: the arguments fixed for a plan's calls (:class:`Static`, keyed once).

A miss launches through Triton (compiling if needed) and keeps the binary; a hit calls the
binary's launcher directly, with Triton's launch hooks (profilers) as Triton passes them. The
kernel's parameters must come in this group order, then the constexprs. Under
``TRITON_INTERPRET=1`` every launch goes through Triton.
"""
from __future__ import annotations

import os
from typing import Any, Hashable, Sequence

import torch
import triton

_I32 = (-2 ** 31, 2 ** 31 - 1)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _alignment(tensors: Sequence[torch.Tensor]) -> bool | tuple[bool, ...]:
    """True when every pointer is 16-byte aligned (one OR over them), else each one's."""
    ptrs = [t.data_ptr() for t in tensors]
    bits = 0
    for p in ptrs:
        bits |= p
    return not bits & 15 or tuple(p & 15 == 0 for p in ptrs)


def _free_key(free: Sequence[int]) -> bool:
    return not free or (min(free) >= _I32[0] and max(free) <= _I32[1])


class LaunchKey:
    """A launch key hashed once, when it is built (a prepared variant's, a plan's
    :class:`Static`), not on every call that looks it up."""

    __slots__ = ("items", "_hash")

    def __init__(self, *items: Hashable) -> None:
        self.items = items
        self._hash = hash(items)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LaunchKey) and other.items == self.items


class Static:
    """Arguments fixed for a plan's calls (plan tensors, their strides, bounds), keyed once."""

    __slots__ = ("args", "key")

    def __init__(self, args: Sequence[Any]) -> None:
        self.args = tuple(args)
        self.key = LaunchKey(*((a.dtype, a.data_ptr() & 15 == 0) if isinstance(a, torch.Tensor)
                               else a for a in self.args))


class BoundKernel:
    """A ``@triton.jit`` kernel whose compiled binaries are found by a cheap key."""

    def __init__(self, fn: triton.runtime.JITFunction) -> None:
        self.fn = fn
        self._binaries: dict[tuple, Any] = {}
        self._constexpr_names: tuple[str, ...] | None = None

    def __call__(self, grid: tuple[int, int, int], key: Hashable | None,
                 tensors: Sequence[torch.Tensor], ints: tuple[int, ...], free: tuple[int, ...],
                 floats: tuple[float, ...], static: Static, constexprs: dict,
                 options: dict) -> None:
        args = (*tensors, *ints, *free, *floats, *static.args)
        if interpreting():
            self.fn[grid](*args, **constexprs, **options)
            return
        device = triton.runtime.driver.active.get_current_device()
        if key is None:
            key = (tuple(t.dtype for t in tensors), tuple(constexprs.values()),
                   tuple(options.values()))
        full_key = (device, key, _alignment(tensors), ints, _free_key(free), static.key)
        binary = self._binaries.get(full_key)
        if binary is None:
            self._binaries[full_key] = self.fn[grid](*args, **constexprs, **options)
            return
        if self._constexpr_names is None:
            self._constexpr_names = tuple(p.name for p in self.fn.params if p.is_constexpr)
        stream = triton.runtime.driver.active.get_current_stream(device)
        args = (*args, *(constexprs[n] for n in self._constexpr_names))
        hooks = triton.knobs.runtime
        binary.run(grid[0], grid[1], grid[2], stream, binary.function, binary.packed_metadata,
                   binary.launch_metadata(grid, stream, *args), hooks.launch_enter_hook,
                   hooks.launch_exit_hook, *args)
