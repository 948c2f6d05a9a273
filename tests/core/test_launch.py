"""The compiled-kernel launch path of ``core.providers.triton.launch`` (which the interpreter
never takes), against what Triton's own launch receives.

A stand-in for a ``@triton.jit`` function records the arguments Triton's path gets (the first
launch of each specialization goes through it and returns the compiled binary) and a
stand-in binary records what its launcher gets on later launches. Every later launch must
hand the launcher exactly Triton's arguments, with each tensor as its address and the
constexprs in parameter order, and every change that would change Triton's specialization
(a pointer's alignment, an int's range, a dtype) must go back through Triton.
"""
import random
from types import SimpleNamespace

import pytest
import torch
import triton

from anyattn.core.providers.triton import launch


class FakeBinary:
    function, packed_metadata = 0xF00, ("packed",)

    def __init__(self) -> None:
        self.runs: list[tuple] = []
        self.metadata_args: list[tuple] = []

    def run(self, *args) -> None:
        self.runs.append(args)

    def launch_metadata(self, grid, stream, *args):
        self.metadata_args.append(args)
        return "metadata"


class FakeJit:
    """Parameters: two tensors, two ints, one free int, a float, the static group (one
    tensor, one int), then constexprs B and A (declared in that order)."""

    def __init__(self) -> None:
        names = ["X", "Y", "sx", "sy", "n", "scale", "P", "sp", "B", "A"]
        self.params = [SimpleNamespace(name=n, is_constexpr=n in ("A", "B")) for n in names]
        self.compiled: list[tuple] = []

    def __getitem__(self, grid):
        def compile_and_run(*args, **kwargs):
            binary = FakeBinary()
            self.compiled.append((grid, args, kwargs, binary))
            return binary
        return compile_and_run


@pytest.fixture
def compiled(monkeypatch):
    """A compiled-kernel launch on fake driver calls (device 0, stream 1234)."""
    driver = SimpleNamespace(active=SimpleNamespace(get_current_device=lambda: 0,
                                                    get_current_stream=lambda device: 1234))
    monkeypatch.setattr(triton.runtime, "driver", driver)
    monkeypatch.setattr(triton.knobs.runtime, "launch_enter_hook", None)
    monkeypatch.setattr(triton.knobs.runtime, "launch_exit_hook", None)
    fn = FakeJit()
    return fn, launch.BoundKernel(fn)


def _tensors(offset_elems: int = 0, dtype=torch.float32):
    base = torch.zeros(64, dtype=dtype)
    return (base[offset_elems:offset_elems + 8], torch.zeros(8, dtype=dtype))


def _launch(kernel, tensors, static, free=(7,), key=("variant",)):
    kernel((2, 3, 1), key, tensors, (1, 16), free, (0.5,), static, dict(A=11, B=22),
           dict(num_warps=4))


def test_later_launches_get_tritons_arguments_as_addresses(compiled):
    fn, kernel = compiled
    static = launch.Static((torch.zeros(4, dtype=torch.int32), 5))
    first = _tensors()
    _launch(kernel, first, static)
    assert len(fn.compiled) == 1
    grid, args, kwargs, binary = fn.compiled[0]
    assert grid == (2, 3, 1) and kwargs == dict(A=11, B=22, num_warps=4)
    assert args[:2] == first and args[2:] == (1, 16, 7, 0.5, *static.args)
    assert binary.runs == []  # Triton's own path ran it
    for _ in range(3):
        tensors = _tensors()
        _launch(kernel, tensors, static)
        run = binary.runs[-1]
        expected = [a.data_ptr() if isinstance(a, torch.Tensor) else a
                    for a in (*tensors, *args[2:])] + [22, 11]  # constexprs in parameter order
        assert run[:9] == (2, 3, 1, 1234, FakeBinary.function, FakeBinary.packed_metadata,
                           None, None, None)
        assert list(run[9:]) == expected
        assert all(type(a) is not torch.Tensor for a in run[9:])
    assert len(fn.compiled) == 1 and len(binary.runs) == 3


@pytest.mark.parametrize("change", ["misaligned", "free int out of int32", "dtype (no key)",
                                    "other static"])
def test_a_new_specialization_goes_through_triton(compiled, change):
    fn, kernel = compiled
    static = launch.Static((torch.zeros(4, dtype=torch.int32), 5))
    key = None if change == "dtype (no key)" else ("variant",)
    _launch(kernel, _tensors(), static, key=key)
    _launch(kernel, _tensors(), static, key=key)
    assert len(fn.compiled) == 1 and len(fn.compiled[0][3].runs) == 1
    tensors, free = _tensors(), (7,)
    if change == "misaligned":
        tensors = _tensors(offset_elems=1)
    elif change == "free int out of int32":
        free = (2 ** 31,)
    elif change == "dtype (no key)":
        tensors = _tensors(dtype=torch.float16)
    else:
        static = launch.Static((torch.zeros(4, dtype=torch.int32), 6))
    _launch(kernel, tensors, static, free=free, key=key)
    assert len(fn.compiled) == 2
    assert fn.compiled[1][1][:2] == tensors


def test_one_launch_object_serves_a_signature(compiled):
    """The run path keeps a Launch per call signature and calls it with each call's tensors."""
    fn, kernel = compiled
    static = launch.Static((torch.zeros(4, dtype=torch.int32), 5))
    fixed = launch.Launch(kernel, (4, 1, 1), ("v",), (3,), (), (), static, dict(A=1, B=2), {})
    rng = random.Random(0)
    calls = [_tensors(offset_elems=4 * rng.randrange(4)) for _ in range(6)]
    for tensors in calls:
        fixed(tensors)
    binary = fn.compiled[0][3]
    assert len(fn.compiled) == 1 and len(binary.runs) == len(calls) - 1
    for tensors, run in zip(calls[1:], binary.runs):
        assert run[9:11] == tuple(t.data_ptr() for t in tensors)


def test_launch_hooks_see_the_tensors(compiled, monkeypatch):
    fn, kernel = compiled
    static = launch.Static((torch.zeros(4, dtype=torch.int32), 5))
    _launch(kernel, _tensors(), static)
    enter, leave = (lambda metadata: None), (lambda metadata: None)
    monkeypatch.setattr(triton.knobs.runtime, "launch_enter_hook", enter)
    monkeypatch.setattr(triton.knobs.runtime, "launch_exit_hook", leave)
    tensors = _tensors()
    _launch(kernel, tensors, static)
    binary = fn.compiled[0][3]
    assert binary.runs[-1][6:9] == ("metadata", enter, leave)
    assert binary.metadata_args[-1][:2] == tensors
    assert binary.metadata_args[-1][2:] == (1, 16, 7, 0.5, *static.args, 22, 11)


@pytest.mark.parametrize("hooks", ["enter", "exit"])
def test_metadata_is_built_when_either_hook_is_set(compiled, monkeypatch, hooks):
    """Triton hands its launch metadata to enter and exit hooks alike."""
    fn, kernel = compiled
    static = launch.Static((torch.zeros(4, dtype=torch.int32), 5))
    _launch(kernel, _tensors(), static)
    hook = lambda metadata: None  # noqa: E731
    monkeypatch.setattr(triton.knobs.runtime, f"launch_{hooks}_hook", hook)
    _launch(kernel, _tensors(), static)
    assert fn.compiled[0][3].runs[-1][6] == "metadata"
