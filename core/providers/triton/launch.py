"""Launching anyattn's Triton kernels without Triton's per-call binder.

``kernel[grid](*args, **constexprs)`` re-derives on every call the specialization of every
argument (each pointer's dtype and 16-byte alignment, whether each int is 1 or a multiple of
16) to find the compiled binary, and Triton's launcher then asks the driver about every
tensor it is given (``data_ptr()`` and ``cuPointerGetAttribute``, once per pointer). A
:class:`Launch` fixes everything of a launch but its tensors (a call signature's launch: the
run path keeps one per signature) and finds the binary from a key that is cheap to build and
at least as fine as Triton's specialization:

- ``key``: the caller's key for what fixes the binary besides the arguments below: the
  pointers' dtypes and the constexprs and options (a caller that prepares those once per
  variant passes that variant; None: the constexprs and options here, and the pointers'
  dtypes read per call);
- per call, whether every pointer is 16-byte aligned (else which ones are);
- ``ints``: exact values of the ints Triton specializes (strides, which are the same for
  every layer of a model);
- ``free``: ints the kernel declares ``do_not_specialize`` (row counts, windows), which only
  need their 32-bit range checked;
- ``floats``: Python floats (never specialized; an int here would be);
- ``static``: the arguments fixed for a plan's calls (:class:`Static`, keyed once).

A miss launches through Triton (compiling if needed) and keeps the binary; a hit calls the
binary's launcher directly with every pointer as an int (the tensors' ``data_ptr()``, which
the run path's host checks have already placed on the call's CUDA device), and with Triton's
launch hooks (profilers) as Triton passes them. The kernel's parameters must come in this
group order (tensors first), then the constexprs. A kernel defined under ``TRITON_INTERPRET=1``
(the interpreter's function) always launches through Triton.
"""
from __future__ import annotations

import functools
from typing import Any, Hashable, Sequence

import torch
import triton

_I32 = (-2 ** 31, 2 ** 31 - 1)


def _idle(hook: Any) -> bool:
    """No launch hook: none set, or an empty chain (newer Tritons keep a chain of hooks)."""
    return hook is None or getattr(hook, "calls", None) == []


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
    """Arguments fixed for a plan's calls (plan tensors, their strides, bounds), keyed once;
    ``pointers``: the same with each tensor as its address (the plan keeps the tensors)."""

    __slots__ = ("args", "key", "pointers")

    def __init__(self, args: Sequence[Any]) -> None:
        self.args = tuple(args)
        self.key = LaunchKey(*((a.dtype, a.data_ptr() & 15 == 0) if isinstance(a, torch.Tensor)
                               else a for a in self.args))
        self.pointers = tuple(a.data_ptr() if isinstance(a, torch.Tensor) else a
                              for a in self.args)


class BoundKernel:
    """A ``@triton.jit`` kernel whose compiled binaries are found by a cheap key."""

    def __init__(self, fn: triton.runtime.JITFunction) -> None:
        self.fn = fn
        self.binaries: dict[tuple, Any] = {}
        # TRITON_INTERPRET=1 at import made @triton.jit return the interpreter's function, which
        # has no parameter list (checked by duck type: Triton imports its interpreter, and
        # numpy with it, only when interpreting); every launch of it goes through Triton
        self.interpreted = not hasattr(fn, "params")

    @functools.cached_property
    def constexpr_names(self) -> tuple[str, ...]:
        """The constexprs in parameter order (compiled kernels only: the interpreter's
        function has no parameter list)."""
        return tuple(p.name for p in self.fn.params if p.is_constexpr)

    def __call__(self, grid: tuple[int, int, int], key: Hashable | None,
                 tensors: Sequence[torch.Tensor], ints: tuple[int, ...], free: tuple[int, ...],
                 floats: tuple[float, ...], static: Static, constexprs: dict,
                 options: dict) -> None:
        """One launch (a call whose signature nothing keeps: merges, cache writes)."""
        Launch(self, grid, key, ints, free, floats, static, constexprs, options)(tensors)


class Launch:
    """A launch of ``kernel`` with everything but its tensors fixed; call it with them."""

    __slots__ = ("kernel", "grid", "key", "ints", "free", "floats", "static", "constexprs",
                 "options", "_by_dtypes", "_tail", "_found")

    def __init__(self, kernel: BoundKernel, grid: tuple[int, int, int], key: Hashable | None,
                 ints: tuple[int, ...], free: tuple[int, ...], floats: tuple[float, ...],
                 static: Static, constexprs: dict, options: dict) -> None:
        self.kernel, self.grid, self.static = kernel, grid, static
        self.ints, self.free, self.floats = ints, free, floats
        self.constexprs, self.options = constexprs, options
        self._by_dtypes = key is None
        self.key = (LaunchKey(tuple(constexprs.values()), tuple(options.values()))
                    if key is None else key)
        self._tail = () if kernel.interpreted else (  # the compiled launcher's arguments after the tensors
            *ints, *free, *floats, *static.pointers,
            *(constexprs[n] for n in kernel.constexpr_names))
        self._found: dict[tuple, Any] = {}

    def __call__(self, tensors: Sequence[torch.Tensor]) -> None:
        if self.kernel.interpreted:
            self._through_triton(tensors)
            return
        ptrs = [t.data_ptr() for t in tensors]
        bits = 0
        for p in ptrs:
            bits |= p
        aligned = not bits & 15 or tuple(p & 15 == 0 for p in ptrs)
        driver = triton.runtime.driver.active
        device = driver.get_current_device()
        local = ((device, aligned, tuple(t.dtype for t in tensors)) if self._by_dtypes
                 else (device, aligned))
        binary = self._found.get(local)
        if binary is None:
            full = (local, self.key, self.ints, _free_key(self.free), self.static.key)
            binary = self.kernel.binaries.get(full)
            if binary is None:
                self.kernel.binaries[full] = self._through_triton(tensors)
                return
            self._found[local] = binary
        stream = driver.get_current_stream(device)
        hooks = triton.knobs.runtime
        enter, leave = hooks.launch_enter_hook, hooks.launch_exit_hook
        grid = self.grid
        meta = (None if _idle(enter) and _idle(leave)
                else binary.launch_metadata(grid, stream, *self._args(tensors)))
        binary.run(grid[0], grid[1], grid[2], stream, binary.function, binary.packed_metadata,
                   meta, enter, leave, *ptrs, *self._tail)

    def _args(self, tensors: Sequence[torch.Tensor]) -> tuple:
        """The kernel's arguments as Triton takes them (tensors, not addresses)."""
        return (*tensors, *self.ints, *self.free, *self.floats, *self.static.args,
                *(self.constexprs[n] for n in self.kernel.constexpr_names))

    def _through_triton(self, tensors: Sequence[torch.Tensor]) -> Any:
        return self.kernel.fn[self.grid](*tensors, *self.ints, *self.free, *self.floats,
                                         *self.static.args, **self.constexprs, **self.options)
