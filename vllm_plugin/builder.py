"""Per-step metadata: vLLM's ``CommonAttentionMetadata`` -> core's ``AttnPlan``.

Every layer of a KV-cache group shares the plan built here: ``build_plan`` for every step,
copied into ``GraphPlans`` storage for steps a full CUDA graph may replay; this module only
maps vLLM's field names.

Bidirectional image spans (prefix-LM models such as Gemma-3/4, PaliGemma): vLLM's model
runner passes ``CommonAttentionMetadata.mm_req_doc_ranges`` (0.26 through 0.33), request
index -> ``(start, end)`` token positions with ``end`` INCLUSIVE (``PlaceholderRange.
extract_embeds_range``), every image of the request, possibly past this step's keys, already
without the ranges longer than a sliding window unless the model clamps them in the kernel.
They become core's half-open spans ``[start, end + 1)``, cut to the step (``step_spans``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from vllm import envs
from vllm.config import VllmConfig
from vllm.logger import init_logger
from vllm.utils.math_utils import cdiv
from vllm.v1.attention.backend import (AttentionCGSupport, AttentionMetadataBuilder,
                                       CommonAttentionMetadata)
from vllm.v1.kv_cache_interface import (AttentionSpec, CrossAttentionSpec,
                                        EncoderOnlyAttentionSpec)

from anyattn.core import (AttnPlan, GraphPlans, Workload, build_plan, describe_providers,
                          expect, span_table, step_spans, validate_plan)

from . import selected_name
from .compat import max_decode_query_len
from .backend import fp8_storage_dtype

logger = init_logger("vllm.anyattn")
_UNIFORM = "uniform"  # the one step kind vLLM replays as a full CUDA graph


@dataclass
class AnyAttnMetadata:
    plan: AttnPlan
    # Rows of q/k/v/output this step's requests own (query_start_loc_cpu[num_reqs]): what
    # the impl computes. vLLM may pad the token dimension past them (num_actual_tokens) and
    # ignores the padding rows' output.
    num_query_rows: int
    # The plan's span table while this metadata's layers apply it. TRITON_ATTN's name:
    # Gemma-4 sets it to None on its full-attention layers' metadata each step
    # (Gemma4ForConditionalGeneration._clear_mm_prefix_for_full_attn_layers), which then
    # run causal; the impl reads it, not the plan.
    mm_prefix_range_tensor: torch.Tensor | None = None


class AnyAttnMetadataBuilder(AttentionMetadataBuilder[AnyAttnMetadata]):
    # Full CUDA graphs replay uniform batches: plain decode, and speculative verify with
    # 1 + num_speculative_tokens queries per request. A captured plan bakes in
    # max_seqlen_q, which sizes the launch grid; ALWAYS would bake in the largest
    # prefill and launch every decode step at that size. Mixed steps run piecewise.
    _cudagraph_support: ClassVar[AttentionCGSupport] = AttentionCGSupport.UNIFORM_BATCH

    def __init__(self, kv_cache_spec: AttentionSpec, layer_names: list[str],
                 vllm_config: VllmConfig, device: torch.device) -> None:
        super().__init__(kv_cache_spec, layer_names, vllm_config, device)
        self.num_kv_heads = kv_cache_spec.num_kv_heads
        # The builder's spec carries the kernel block size (= page size of the cache view).
        self.page_size = kv_cache_spec.block_size
        max_len = vllm_config.model_config.max_model_len
        if isinstance(kv_cache_spec, CrossAttentionSpec):
            # Cross-attention pages hold the encoder output, which may outgrow the decoder.
            max_len = max(max_len, vllm_config.scheduler_config.max_num_encoder_input_tokens)
        self.max_pages = kv_cache_spec.max_num_blocks_per_req(vllm_config, max_len)
        self.encoder_only = isinstance(kv_cache_spec, EncoderOnlyAttentionSpec)
        self.deterministic = envs.VLLM_BATCH_INVARIANT
        self.mm_prefix = bool(vllm_config.model_config.is_mm_prefix_lm)
        self.workload = self._workload()
        self.graph_buffers = self._make_graph_buffers()
        logger.info_once("anyattn attention backend (--attention-backend %s): %s",
                         selected_name(), describe_providers(device))

    def _workload(self) -> Workload:
        """The layers' tensor facts, so every plan picks its kernels when it is built."""
        model = self.vllm_config.model_config
        spec = self.kv_cache_spec
        dtype = model.dtype
        kv_dtype = fp8_storage_dtype(self.vllm_config.cache_config.cache_dtype) or dtype
        return Workload(self.device, dtype, kv_dtype, spec.head_size, spec.head_size,
                        model.get_num_attention_heads(self.vllm_config.parallel_config),
                        self.num_kv_heads)

    def _make_graph_buffers(self) -> GraphPlans | None:
        compilation = self.vllm_config.compilation_config
        if self.encoder_only or not compilation.cudagraph_mode.has_full_cudagraphs():
            return None
        # Capture sizes count tokens; a uniform batch has max_seqlen_q tokens per request.
        max_seqlen_q = max_decode_query_len(self.vllm_config)
        max_batch = min(self.vllm_config.scheduler_config.max_num_seqs,
                        cdiv(compilation.max_cudagraph_capture_size, max_seqlen_q))
        graphs = GraphPlans(max_batch, num_kv_heads=self.num_kv_heads, device=self.device,
                            deterministic=self.deterministic, workload=self.workload)
        # A prefix-LM model's uniform steps may hold image tokens (a short prefill chunk):
        # at most one span per query reaches the step (step_spans).
        graphs.reserve(_UNIFORM, max_pages=self.max_pages, max_seqlen_q=max_seqlen_q,
                       page_size=self.page_size, max_spans=max_seqlen_q if self.mm_prefix else 0)
        return graphs

    def _fits_graph(self, cm: CommonAttentionMetadata) -> bool:
        g = self.graph_buffers
        return g is not None and g.fits(_UNIFORM, cm.num_reqs, cm.max_query_len)

    def build(self, common_prefix_len: int, common_attn_metadata: CommonAttentionMetadata,
              fast_build: bool = False) -> AnyAttnMetadata:
        cm = common_attn_metadata
        if isinstance(cm.causal, torch.Tensor):
            raise ValueError("anyattn: per-request causal flags (CommonAttentionMetadata."
                             "causal as a tensor) are not supported")
        rows = self._check_step(cm)
        spans = self._spans(cm)
        if self.encoder_only:
            # No cache: every sequence attends its own new keys, which sit in the same
            # rows of the key tensor as its queries.
            plan = build_plan(cm.query_start_loc, None, max_seqlen_q=cm.max_query_len,
                              max_seqlen_k=cm.max_seq_len, cu_seqlens_k=cm.query_start_loc,
                              num_kv_heads=self.num_kv_heads, deterministic=self.deterministic,
                              workload=self.workload, total_q=rows, total_k=rows)
            return AnyAttnMetadata(plan=plan, num_query_rows=rows)
        graph = self._fits_graph(cm)
        plan = build_plan(cm.query_start_loc, cm.seq_lens, max_seqlen_q=cm.max_query_len,
                          max_seqlen_k=cm.max_seq_len,
                          page_table=cm.block_table_tensor[:, : self.max_pages],
                          page_size=self.page_size, num_kv_heads=self.num_kv_heads,
                          deterministic=self.deterministic,
                          workload=None if graph else self.workload, spans=spans, total_q=rows)
        # Before any layer writes its cache: refused here, a bad step touches nothing.
        validate_plan(plan, positional=cm.causal, num_pages=self._cache_pages())
        if graph:
            # Same storage for every step of this batch size, so a captured graph replays
            # with this step's lengths and pages. vLLM pads requests with q_len 0, seq_len 0.
            plan = self.graph_buffers.fill(_UNIFORM, {"main": plan}, cm.num_reqs)["main"]
        return AnyAttnMetadata(plan=plan, num_query_rows=rows, mm_prefix_range_tensor=plan.spans)

    def _check_step(self, cm: CommonAttentionMetadata) -> int:
        """The step's host facts: query offsets from ``query_start_loc_cpu`` (first entry 0,
        non-decreasing) and, for causal layers, ``seq_lens_cpu_upper_bound`` no shorter than
        the queries. Returns the rows the requests own. The device values (``seq_lens``, the
        block table) are checked from the plan where reading them is free
        (:func:`anyattn.core.validate_plan`)."""
        starts = cm.query_start_loc_cpu[: cm.num_reqs + 1]
        q_lens = starts[1:] - starts[:-1]
        expect(int(starts[0]) == 0 and bool((q_lens >= 0).all()),
                      lambda: "query_start_loc: expected non-decreasing offsets from 0, got "
                      f"{starts.tolist()[:8]}")
        bound = cm.seq_lens_cpu_upper_bound
        if cm.causal and bound is not None:
            short = (bound[: cm.num_reqs] < q_lens).nonzero()
            expect(short.numel() == 0, lambda: f"seq_lens: request {int(short[0])} has "
                          f"{int(q_lens[short[0]])} queries but at most "
                          f"{int(bound[short[0]])} keys (causal: q_len <= seq_len)")
        return int(starts[-1])

    def _cache_pages(self) -> int | None:
        """Pages in this group's KV cache, from its first layer's bound cache (as vLLM's own
        ROCm backend sizes its scales); None before the caches are bound."""
        layer = self.vllm_config.compilation_config.static_forward_context.get(self.layer_names[0])
        cache = getattr(layer, "kv_cache", None)
        return cache.shape[0] if isinstance(cache, torch.Tensor) and cache.numel() else None

    def _spans(self, cm: CommonAttentionMetadata) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The step's span table from ``mm_req_doc_ranges`` (None: no image tokens here).

        Host values only: query offsets from ``query_start_loc_cpu`` and key counts from
        ``seq_lens_cpu_upper_bound``, exact for prefill rows, where images are; a decode
        row's optimistic bound only moves its queries further past its prompt's images.
        """
        ranges = cm.mm_req_doc_ranges
        if not ranges or self.encoder_only:
            return None  # encoder-only layers see their whole sequence already
        if cm.seq_lens_cpu_upper_bound is None:
            raise ValueError("anyattn: mm_req_doc_ranges needs CommonAttentionMetadata."
                             "seq_lens_cpu_upper_bound (host key counts)")
        n = cm.num_reqs
        starts = cm.query_start_loc_cpu[: n + 1].tolist()
        q_lens = [b - a for a, b in zip(starts, starts[1:])]
        whole = [[(int(s), int(e) + 1) for s, e in ranges.get(r, ())] for r in range(n)]
        step = step_spans(whole, q_lens, cm.seq_lens_cpu_upper_bound[:n].tolist(),
                                     name="mm_req_doc_ranges (as [start, end + 1))")
        if not any(step):
            return None
        return span_table(step, self.device)

    def build_for_cudagraph_capture(
            self, common_attn_metadata: CommonAttentionMetadata) -> AnyAttnMetadata:
        """A plan on the persistent graph buffers; an eager plan would leave the captured
        graph pointing at tensors that later steps never update."""
        if not self._fits_graph(common_attn_metadata):
            raise ValueError(
                f"anyattn: cannot capture a full CUDA graph for {common_attn_metadata.num_reqs} "
                f"requests with max_query_len {common_attn_metadata.max_query_len}: the plan "
                f"buffers hold {getattr(self.graph_buffers, 'max_batch', 0)} requests of at "
                f"most {max_decode_query_len(self.vllm_config)} queries")
        return self.build(0, common_attn_metadata)
