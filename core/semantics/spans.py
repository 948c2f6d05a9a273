"""Bidirectional spans (prefix-LM image tokens; vLLM's ``mm_prefix``): what they mean, and
the per-step table a plan carries.

A span ``[start, end)`` of sequence ``b`` is a run of key positions (an image's tokens) that
attend each other both ways. A query at position ``p`` sees key ``k`` when ``k < k_len`` and

    (causal(p, k) and window(p, k) and chunk(p, k))  or  (p and k lie in the same span
                                                          [and k >= p - window_left])

The bracket applies when the layer sets ``AttnParams.spans_in_window`` and has a left window:
vLLM's ``mm_prefix_clamp_sliding_window`` (Gemma-4's sliding layers), which keeps a span's keys
inside the window's left edge while future span keys stay visible. Without it a span
overrides the window, as in vLLM's TRITON_ATTN (``compute_kv_seq_mask``: ``(causal AND
window) OR mm_prefix``) and FlexAttention. Keys past ``k_len`` do not exist yet: a span cut by
a chunked-prefill step is bidirectional over the part already computed (engines keep an
image in one step: vLLM forces ``disable_chunked_mm_input`` for prefix-LM models).

The table: ``plan.spans [B, S, 2]`` int32 (half-open, absolute key positions) and
``plan.span_counts [B]`` int32, the first ``span_counts[b]`` rows of ``spans[b]`` valid, sorted
by start and disjoint, with ``0 <= start < end <= k_len``. O(number of spans) memory; the
kernel finds each query's span in its program's prologue and widens the keys the program
visits to the span's end.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from .checks import expect
from .params import AttnParams

if TYPE_CHECKING:
    from ..plan.plan import AttnPlan

Span = tuple[int, int]


def applies(plan: AttnPlan, params: AttnParams) -> bool:
    """Whether a call on ``plan`` with ``params`` applies bidirectional spans: the plan has a
    span table and the layer does not keep its attention causal (``params.use_spans``)."""
    return params.use_spans and plan.spans is not None


def check_span_list(name: str, b: int, spans: Sequence[Span], k_len: int | None) -> None:
    """One sequence's host spans: ``0 <= start < end`` (``<= k_len`` when known), sorted,
    disjoint. Raises ValueError naming ``name``, the sequence and the span."""
    prev_end = 0
    for i, span in enumerate(spans):
        expect(len(span) == 2,
               lambda: f"{name}: sequence {b} span {i}: expected (start, end), got {span!r}")
        start, end = (int(x) for x in span)
        expect(0 <= start < end, lambda: f"{name}: sequence {b} span {i} {span!r}: expected "
               "0 <= start < end (half-open key positions)")
        expect(start >= prev_end, lambda: f"{name}: sequence {b} span {i} {span!r} overlaps or "
               f"precedes the span before it (ending at {prev_end}): spans must be sorted "
               "and disjoint")
        expect(k_len is None or end <= k_len, lambda: f"{name}: sequence {b} span {i} {span!r} "
               f"runs past the sequence's {k_len} keys")
        prev_end = end


def step_spans(spans: Sequence[Sequence[Span]], q_lens: Sequence[int],
               k_lens: Sequence[int], *, name: str = "spans") -> list[list[Span]]:
    """The spans of a step: each sequence's spans that hold one of its queries (positions
    ``k_len - q_len .. k_len - 1``), cut at ``k_len``; spans elsewhere change nothing.

    ``spans`` are whole-request spans (an engine's image positions, possibly past this
    step's keys); at most ``q_len`` spans per sequence remain. Validated first
    (:func:`check_span_list` without a key bound; errors name ``name``).
    """
    out = []
    for b, (seq, q_len, k_len) in enumerate(zip(spans, q_lens, k_lens)):
        check_span_list(name, b, seq, None)
        first_q = k_len - q_len
        out.append([(s, min(e, k_len)) for s, e in seq if s < k_len and e > first_q])
    return out


def span_table(spans: Sequence[Sequence[Span]], device: torch.device | str, *,
               k_lens: Sequence[int] | None = None, capacity: int = 0,
               name: str = "spans") -> tuple[torch.Tensor, torch.Tensor]:
    """Host span lists -> ``(spans [B, S, 2], span_counts [B])`` int32 on ``device``, with
    ``S = max(capacity, most spans of a sequence, 1)``. Validated on the host (no device
    read), so an engine's builder refuses bad spans before any layer writes its cache."""
    for b, seq in enumerate(spans):
        check_span_list(name, b, seq, None if k_lens is None else int(k_lens[b]))
    width = max([capacity, 1] + [len(s) for s in spans])
    table = torch.zeros(len(spans), width, 2, dtype=torch.int32)
    for b, seq in enumerate(spans):
        if seq:
            table[b, : len(seq)] = torch.tensor(seq, dtype=torch.int32)
    counts = torch.tensor([len(s) for s in spans], dtype=torch.int32)
    device = torch.device(device)
    return table.to(device, non_blocking=True), counts.to(device, non_blocking=True)


def check_span_tensors(spans: torch.Tensor, counts: torch.Tensor, batch: int,
                       device: torch.device) -> None:
    """Shapes, dtypes and devices of a plan's span table (host attributes only)."""
    expect(spans.dim() == 3 and spans.shape[0] == batch and spans.shape[2] == 2
           and spans.dtype == torch.int32 and spans.stride(2) == 1,
           lambda: f"spans: expected int32 [batch={batch}, max_spans, 2] (start, end) with a "
           f"contiguous last dim, got {spans.dtype} {tuple(spans.shape)}")
    expect(tuple(counts.shape) == (batch,) and counts.dtype == torch.int32,
           lambda: f"span_counts: expected int32 [batch={batch}], got {counts.dtype} "
           f"{tuple(counts.shape)}")
    for name, t in (("spans", spans), ("span_counts", counts)):
        expect(t.device == device,
               lambda: f"{name}: expected a tensor on {device} (like q), got {t.device}")


def check_span_values(spans: torch.Tensor, counts: torch.Tensor, k_lens: torch.Tensor) -> None:
    """The table's values (reads it on the host: CPU tensors, or debug mode)."""
    counts = counts.cpu().tolist()
    table = spans.cpu()
    for b, (n, k_len) in enumerate(zip(counts, k_lens.cpu().tolist())):
        expect(0 <= n <= table.shape[1], lambda: f"span_counts: sequence {b} has {n} spans, "
               f"expected 0..{table.shape[1]} (spans.shape[1])")
        check_span_list("spans", b, [tuple(r) for r in table[b, :n].tolist()], k_len)
