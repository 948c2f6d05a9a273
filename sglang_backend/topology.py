"""The speculative topology of a TARGET_VERIFY step, read from the batch.

``spec_info`` says what the step holds: ``num_tokens_per_req`` / ``draft_token_num`` draft
tokens per request, their branching (``tree_topk``: EAGLE's topk, -1 for n-gram's irregular
trees; ``topk`` on inputs without it, such as DFlash's chains) and the tree itself
(``custom_mask``). The server settings (``--speculative-eagle-topk``,
``--speculative-num-draft-tokens``) are the configured bounds: a batch that exceeds or
contradicts them is refused, and a batch is never computed as a different topology.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from anyattn.core import expect
from sglang.srt.speculative import eagle_utils


@dataclass(frozen=True)
class VerifyShape:
    num_draft: int
    tree: bool
    mask_has_prefix: bool = True  # FULL_MASK rows span prefix + drafts; QLEN_ONLY rows drafts

    def mask_prefix_lens(self, seq_lens: torch.Tensor) -> torch.Tensor:
        """The prefix columns each request's ``custom_mask`` rows start with."""
        return seq_lens if self.mask_has_prefix else torch.zeros_like(seq_lens)


def verify_shape(spec_info, *, topk_setting: int, draft_setting: int) -> VerifyShape:
    """Draft count and chain / tree of this verify step (``*_setting``: 0 when unset)."""
    expect(spec_info is not None, "TARGET_VERIFY: forward_batch.spec_info (the verify "
                  "input) is None")
    n = int(getattr(spec_info, "num_tokens_per_req", -1) or -1)
    if n <= 0:
        n = int(getattr(spec_info, "draft_token_num", 0) or draft_setting)
    expect(n > 0, "TARGET_VERIFY: spec_info carries no draft_token_num and "
                  "--speculative-num-draft-tokens is unset")
    expect(draft_setting <= 0 or n <= draft_setting,
                  lambda: f"spec_info: {n} draft tokens per request, but the server runs with "
                  f"--speculative-num-draft-tokens {draft_setting}")
    branching = getattr(spec_info, "tree_topk", getattr(spec_info, "topk", None))
    expect(not (topk_setting > 0 and branching is not None and branching > 0
                       and branching != topk_setting),
                  lambda: f"spec_info: a draft tree of topk {branching}, but the server runs "
                  f"with --speculative-eagle-topk {topk_setting}")
    mask = getattr(spec_info, "custom_mask", None)
    if branching is not None and branching != 1:
        expect(mask is not None, lambda: f"TARGET_VERIFY with topk {branching}: "
                      "spec_info.custom_mask is required (the draft tree), got None")
    return VerifyShape(n, tree=mask is not None and branching != 1,
                       mask_has_prefix=_mask_has_prefix())


def _mask_has_prefix() -> bool:
    """Which custom_mask layout SGLang's tree builder writes for a backend that keeps no
    verify-mask buffer: FULL_MASK (rows span prefix + drafts) on GPUs, QLEN_ONLY (drafts
    only, for its intel_amx kernel) on the CPU engine."""
    mode = eagle_utils.default_tree_mask_mode()
    if mode == eagle_utils.TreeMaskMode.FULL_MASK:
        return True
    if mode == eagle_utils.TreeMaskMode.QLEN_ONLY:
        return False
    raise NotImplementedError(f"anyattn: SGLang's {mode} tree-mask layout is not supported")
