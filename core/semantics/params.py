"""Per-layer attention semantics, shared by the reference and the Triton kernels."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class AttnParams:
    """Per-layer attention semantics (docs/semantics.md).

    ``window_left``/``window_right``: a query at position p sees keys in
    ``[p - left, p + right]`` inclusive, -1 = unbounded (FlashAttention's convention).
    ``chunk_size`` > 0: Llama-4 chunked-local attention. ``softcap`` > 0: ``cap * tanh(s / cap)``
    on the scaled scores, before masking.
    ``use_spans``: apply the plan's bidirectional spans (``plan.spans``, :mod:`core.semantics.spans`), if
    it has any; a layer that must stay causal where others of its step do not sets it False.
    ``spans_in_window``: a span's keys must also lie within the left window (vLLM's
    ``mm_prefix_clamp_sliding_window``); otherwise a span overrides the window.
    """

    softmax_scale: float
    causal: bool = True
    window_left: int = -1
    window_right: int = -1
    chunk_size: int = 0
    softcap: float = 0.0
    use_spans: bool = True
    spans_in_window: bool = False

    def __post_init__(self) -> None:
        """Refuse settings a kernel would turn into NaN or silently ignore (once per layer's
        params, not per call)."""
        scale, cap = self.softmax_scale, self.softcap
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"softmax_scale: expected a positive finite float, got {scale}")
        if not (math.isfinite(cap) and cap >= 0):
            raise ValueError(f"softcap: expected a finite float >= 0 (0 = off), got {cap}")
        if self.chunk_size < 0:
            raise ValueError(f"chunk_size: expected an int >= 0 (0 = off), got {self.chunk_size}")
        for name in ("window_left", "window_right"):
            if getattr(self, name) < -1:
                raise ValueError(f"{name}: expected an int >= -1 (-1 = unbounded), got "
                                 f"{getattr(self, name)}")
        object.__setattr__(self, "_hash", hash(tuple(self.__dict__.values())))  # the fields

    def __hash__(self) -> int:
        """Hashed once: every call's signature key holds its layer's params."""
        return self._hash

    @property
    def positional(self) -> bool:
        """Whether q_len > k_len is an error: causal and chunked masks would hide keys from the
        first queries without a word (bottom-right alignment puts them before position 0).

        A non-causal window is defined for any lengths: a query at a negative position sees
        the keys its window reaches. The prefix pass of a speculative cascade relies on it
        (:mod:`anyattn.core.cascade`: draft tokens may outnumber the cached keys).
        """
        return self.causal or self.chunk_size > 0
