"""Per-layer attention semantics, shared by the reference and the Triton kernels."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AttnParams:
    """Per-layer attention semantics (DESIGN.md, "Semantics").

    ``window_left``/``window_right``: a query at position p sees keys in
    ``[p - left, p + right]`` inclusive, -1 = unbounded (FlashAttention's convention).
    ``chunk_size`` > 0: Llama-4 chunked-local attention. ``softcap`` > 0: ``cap * tanh(s / cap)``
    on the scaled scores, before masking.
    """

    softmax_scale: float
    causal: bool = True
    window_left: int = -1
    window_right: int = -1
    chunk_size: int = 0
    softcap: float = 0.0

    @property
    def positional(self) -> bool:
        """Whether visibility depends on positions; then q_len > k_len is an error."""
        return self.causal or self.window_left >= 0 or self.window_right >= 0 or self.chunk_size > 0
