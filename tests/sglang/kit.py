"""SGLang's own attention test kit (``sglang.test.kits.attention_unittest``, from the installed
wheel) driven on the CPU, plus the checks that tell where its fixtures are consistent.

The kit's runners take a ``unittest.TestCase``, a backend name and a device; every runner
compares the backend's output with the kit's own dense reference (or, for the EAGLE draft
runners, with itself under a CUDA graph). Here they run in fp32 on the CPU, under
``torch.no_grad()`` (the kit's fixtures write projected K/V into the pool), with a
``TestCase`` whose ``skipTest`` fails: a case the kit cannot run is an error, never a skip.
"""
from __future__ import annotations

import unittest
from contextlib import contextmanager

import torch

from sglang.test.kits.attention_unittest.attention_methods import dense_attention as dense
from sglang.test.kits.attention_unittest.runner_modes import (
    cuda_graph_decode_runner as graph_decode,
    speculative_draft_extend_runner as draft_extend,
    speculative_draft_runner as draft,
    speculative_target_verify_runner as verify,
    split_op_runner as split_op,
)
from sglang.srt.model_executor.forward_batch_info import ForwardMode

from anyattn.sglang_backend import NAME

__all__ = ["dense", "draft", "draft_extend", "graph_decode", "split_op", "verify", "ForwardMode",
           "BACKENDS", "CPU", "KitTestCase", "case", "cpu_rng", "run", "prefix_rewrite_collisions",
           "page_rule_breaks"]

# anyattn is the backend under test; SGLang's Triton backend (interpreter) runs every case
# too, as the check that the kit's case is sound on this machine.
BACKENDS = [NAME, "triton"]
CPU = dict(device="cpu", dtype=torch.float32)

# The kit asks every backend to declare which sliding-window decode rule its metadata
# follows. anyattn's keys for a query at p are [p - w, p] (w = SGLang's window - 1), the
# "extend window" rule, like torch_native / fa3 / flashinfer.
dense._SWA_DECODE_EXTEND_WINDOW = dense._SWA_DECODE_EXTEND_WINDOW | {NAME}


class KitTestCase(unittest.TestCase):
    def skipTest(self, reason):  # noqa: N802 (unittest's name)
        raise AssertionError(f"SGLang's attention kit skipped the case: {reason}")

    def runTest(self):  # noqa: N802
        pass


def case(backend: str, mode: ForwardMode, *, name: str = "anyattn", num_heads: int = 4,
         num_kv_heads: int = 2, page_size: int = 1, prefix_lens=(5, 9), extend_lens=(3, 3),
         sliding_window_size: int | None = None) -> dense.DenseAttentionCase:
    """A kit case; decode cases take no extend lengths. The name seeds the kit's weights
    and page layout, so two backends given the same name see identical inputs."""
    return dense.DenseAttentionCase(
        name=name, backend=backend, forward_mode=mode, num_heads=num_heads,
        num_kv_heads=num_kv_heads, page_size=page_size, prefix_lens=tuple(prefix_lens),
        extend_lens=() if mode.is_decode() else tuple(extend_lens),
        sliding_window_size=sliding_window_size)


def run(runner, kit_case: dense.DenseAttentionCase, **kwargs):
    """One kit runner on the CPU in fp32; returns what the runner returns."""
    with torch.no_grad():
        return runner(KitTestCase(), kit_case, **{**CPU, **kwargs})


@contextmanager
def cpu_rng():
    """The kit's EAGLE draft runners save and restore the CUDA RNG around their seeded
    inputs (``_seeded_rng``); a CPU build of torch has none. Inside, that state is empty."""
    saved = torch.cuda.get_rng_state, torch.cuda.set_rng_state
    torch.cuda.get_rng_state = lambda device=None: torch.empty(0, dtype=torch.uint8)
    torch.cuda.set_rng_state = lambda state, device=None: None
    try:
        yield
    finally:
        torch.cuda.get_rng_state, torch.cuda.set_rng_state = saved


def prefix_rewrite_collisions(kit_case: dense.DenseAttentionCase,
                              max_context_len: int = dense.DEFAULT_MAX_CONTEXT_LEN) -> list:
    """Prefix tokens whose K/V the kit overwrites with another token's.

    The kit builds a fixture with shuffled pages (``make_loc_fn("shuffled_pages")``) and
    populates the prefix there; the CUDA-graph and split-op runners then write the prefix
    again through ``prepare_dense_runner_inputs``, at the contiguous ``_token_loc`` slots.
    Wherever such a slot holds a different prefix token of the shuffled layout, the cache no
    longer matches the kit's reference, for every backend. Returns ``(request, position)``
    of each overwritten prefix token.
    """
    with torch.no_grad():
        fixture = dense.build_dense_attention_fixture(KitTestCase(), kit_case,
                                                      max_context_len=max_context_len, **CPU)
    r2t = fixture.runner.req_to_token_pool.req_to_token
    owner = {int(r2t[r, p]): (r, p) for r, n in enumerate(kit_case.prefix_lens) for p in range(n)}
    rewritten = [dense._token_loc(r, p, page_size=kit_case.page_size,
                                  max_context_len=max_context_len)
                 for r, n in enumerate(kit_case.prefix_lens) for p in range(n)]
    written = [(r, p) for r, n in enumerate(kit_case.prefix_lens) for p in range(n)]
    return sorted({owner[s] for s, tok in zip(rewritten, written)
                   if s in owner and owner[s] != tok})


def page_rule_breaks(slots: torch.Tensor, page_size: int) -> list[int]:
    """Positions where a request's token slots break SGLang's page rule: position ``t`` lives
    at ``page(t // page_size) * page_size + t % page_size``, one physical page per logical
    page (its allocator keeps it; anyattn reads whole pages through page ids)."""
    bad = []
    for t in range(slots.shape[0]):
        first = int(slots[t - t % page_size])
        if int(slots[t]) != first + t % page_size or first % page_size:
            bad.append(t)
    return bad
