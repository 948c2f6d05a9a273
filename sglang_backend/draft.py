"""EAGLE multi-step draft decode: one ``AnyAttnBackend`` per speculative step.

Step ``i`` of the draft loop attends the prefix plus its branch's first ``i + 1`` draft
tokens; SGLang's draft worker calls the container once per draft forward and then runs the
steps with ``attn_backends[i]``.
"""
from __future__ import annotations

from sglang.srt.model_executor.forward_batch_info import ForwardMode, build_inner_fb_view

from .backend import AnyAttnBackend


class AnyAttnMultiStepDraftBackend:
    # Step metadata never needs the host copy of seq_lens.
    needs_cpu_seq_lens = False

    def __init__(self, model_runner, topk: int, speculative_num_steps: int) -> None:
        if speculative_num_steps < 2:
            raise ValueError(f"speculative_num_steps: a multi-step draft backend needs >= 2 "
                             f"steps, got {speculative_num_steps}")
        self.topk = topk
        self.speculative_num_steps = speculative_num_steps
        # The last step's token is never attended by a further draft step.
        self.attn_backends = [
            AnyAttnBackend(model_runner, speculative_step_id=i, topk=topk,
                           speculative_num_steps=speculative_num_steps)
            for i in range(speculative_num_steps - 1)
        ]
        self.attn_backend_list = self.attn_backends
        self.forward_metadata = None

    def init_forward_metadata(self, forward_batch) -> None:
        for backend in self.attn_backends:
            backend.init_forward_metadata(forward_batch)

    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int) -> None:
        for backend in self.attn_backends:
            backend.init_cuda_graph_state(max_bs, max_num_tokens)

    def init_forward_metadata_out_graph(self, forward_batch, in_capture: bool = False) -> None:
        if forward_batch.spec_info is None:
            raise ValueError("draft decode: forward_batch.spec_info (the draft input) is None")
        # The draft runner may hand a batch whose mode is not DECODE; every step is one.
        step_batch = build_inner_fb_view(forward_batch, bs=forward_batch.batch_size,
                                         forward_mode=ForwardMode.DECODE,
                                         encoder_lens=forward_batch.encoder_lens)
        for backend in self.attn_backends:
            backend.init_forward_metadata_out_graph(step_batch, in_capture=in_capture)

    def init_forward_metadata_in_graph(self, forward_batch) -> None:
        for backend in self.attn_backends:
            backend.init_forward_metadata_in_graph(forward_batch)
