"""``AnyAttnBackend``: SGLang's ``AttentionBackend`` on top of anyattn's plans and kernels.

One backend instance serves the target model (every forward mode, target verify included),
an EAGLE draft-extend step, or one step of multi-step draft decode (created by
:class:`anyattn.sglang_backend.draft.AnyAttnMultiStepDraftBackend` with a
``speculative_step_id``). Metadata is built once per forward step
(:meth:`init_forward_metadata`, or :meth:`init_forward_metadata_out_graph` around CUDA
graphs) and shared by every layer; the forwards only write K/V and call core's attention.
"""
from __future__ import annotations

import torch

from anyattn.core import (FP8_DTYPES, AttnParams, GraphPlans, attention, cascade_attention,
                          cascade_params, check_alibi_slopes)

from sglang.srt.layers.attention.base_attn_backend import AttentionBackend
from sglang.srt.layers.radix_attention import AttentionType
from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool
from sglang.srt.runtime_context import get_exec, get_parallel, get_spec

from .compat import write_loc
from .metadata import EngineShape, StepMetadata, StepPlanner


class AnyAttnBackend(AttentionBackend):
    """Every SGLang forward mode through ``anyattn.core`` (see ``metadata.py`` for the plans)."""

    # Metadata never reads seq_lens_cpu when it is absent (falls back to static bounds).
    needs_cpu_seq_lens = False

    def __init__(self, model_runner, skip_prefill: bool = False, *, speculative_step_id: int = 0,
                 topk: int | None = None, speculative_num_steps: int = 0) -> None:
        super().__init__()
        if model_runner.use_mla_backend:
            raise ValueError("anyattn: MLA models are not supported; use an MHA/GQA/MQA model")
        translator = getattr(model_runner, "kv_index_translator", None)
        if translator is not None and translator.is_translating:
            raise ValueError("anyattn: --enable-unified-memory (translated KV ids) is not "
                             "supported")
        pool = model_runner.token_to_kv_pool
        if isinstance(pool, SWAKVPool):
            raise ValueError("anyattn: hybrid sliding-window KV pools are not supported; "
                             "sliding-window layers work on the ordinary MHA pool")
        self.device = torch.device(model_runner.device)
        self.token_to_kv_pool = pool
        self.fp8_cache = model_runner.kv_cache_dtype in FP8_DTYPES
        self.num_kv_heads = model_runner.model_config.get_num_kv_heads(
            get_parallel().attn_tp_size)
        self.attention_chunk_size = getattr(model_runner, "attention_chunk_size", None) or 0
        self.deterministic = bool(get_exec().deterministic.enable_deterministic_inference)
        # SGLang 0.5.17's EAGLE workers size their graph-capture batches from it.
        self.max_context_len = model_runner.model_config.context_len
        spec = get_spec()
        self.planner = StepPlanner(EngineShape(
            req_to_token=model_runner.req_to_token_pool.req_to_token,
            page_size=model_runner.page_size, max_context_len=self.max_context_len,
            num_kv_heads=self.num_kv_heads, deterministic=self.deterministic,
            topk=topk if topk is not None else int(spec.speculative_eagle_topk or 0),
            num_draft_tokens=int(spec.speculative_num_draft_tokens or 0),
            num_steps=speculative_num_steps, step_id=speculative_step_id,
            num_slots=pool.size + pool.page_size))
        self.graph: GraphPlans | None = None
        self.forward_metadata: StepMetadata | None = None

    def init_forward_metadata(self, forward_batch) -> None:
        """Eager step: build fresh plans (host bounds from ``seq_lens_cpu`` when published)."""
        if forward_batch.forward_mode.is_idle() or forward_batch.batch_size == 0:
            self.forward_metadata = None
            return
        self.forward_metadata = StepMetadata(**self.planner.plans(forward_batch, graph=False))

    # -- CUDA graphs ---------------------------------------------------------------------
    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int) -> None:
        self.graph = GraphPlans(max_bs, num_kv_heads=self.num_kv_heads, device=self.device,
                                deterministic=self.deterministic)

    def init_forward_metadata_out_graph(self, forward_batch, in_capture: bool = False) -> None:
        """Capture and replay: copy this step into the preallocated plans, in place.

        Nothing here reads a device value on the host; the plans' bounds are static, so a
        captured graph stays valid for every replay at the same batch size.
        """
        if self.graph is None:
            raise RuntimeError("anyattn: init_cuda_graph_state must run before "
                               "init_forward_metadata_out_graph")
        mode = forward_batch.forward_mode
        step = ("draft" if self.planner.is_draft_step(forward_batch) else
                "verify" if mode.is_target_verify() else
                "draft_extend" if mode.is_draft_extend_v2() else
                "decode" if mode.is_decode_or_idle() else None)
        if step is None:
            raise NotImplementedError(f"anyattn: no CUDA-graph metadata for {mode.name}; "
                                      "extend steps run eagerly")
        plans = self.graph.fill(step, self.planner.plans(forward_batch, graph=True),
                                forward_batch.batch_size, capture=in_capture)
        self.forward_metadata = StepMetadata(**plans)

    def get_cuda_graph_seq_len_fill_value(self) -> int:
        # Padded rows read one key (slot of request 0), so no row is empty of keys.
        return 1

    # -- forwards ------------------------------------------------------------------------
    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache: bool = True,
                       sinks: torch.Tensor | None = None, **kwargs):
        return self._forward(q, k, v, layer, forward_batch, save_kv_cache, sinks, kwargs)

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache: bool = True,
                       sinks: torch.Tensor | None = None, **kwargs):
        return self._forward(q, k, v, layer, forward_batch, save_kv_cache, sinks, kwargs)

    def _forward(self, q, k, v, layer, fb, save_kv_cache, sinks, extra):
        # ALiBi: RadixAttention forwards a model's ``slopes`` (Baichuan-13B passes its heads'
        # slopes this way, on NPU builds) to the backend.
        slopes = extra.get("slopes")
        unsupported = [name for name, value in extra.items()
                       if value is not None and name != "slopes"]
        if unsupported:
            raise NotImplementedError(f"anyattn: forward arguments {unsupported} are not supported")
        md = self.forward_metadata
        if md is None:
            raise RuntimeError("anyattn: init_forward_metadata was not called for this step")
        params = self._params(layer)
        if slopes is not None:
            check_alibi_slopes(slopes, layer.tp_q_head_num, q.device)
            if md.draft is not None or layer.is_cross_attention:
                raise NotImplementedError("anyattn: ALiBi in a speculative tree cascade or in "
                                          "cross-attention is not supported")
        if md.draft is not None:  # refuse what the cascade cannot compute before any write
            cascade_params(params, md.main.max_seqlen_q)
            if self.planner.is_draft_step(fb) and params.window_left >= 0:
                # A draft step's branches share one position; the cascade's window places a
                # prefix row's queries one position apart (target verify's convention).
                raise NotImplementedError("anyattn: sliding-window layers in multi-step draft "
                                          "decode with topk > 1 are not supported")
        if k is not None and save_kv_cache:
            self.token_to_kv_pool.set_kv_buffer(
                layer, write_loc(fb, layer),
                k.view(-1, layer.tp_k_head_num, layer.head_dim),
                v.view(-1, layer.tp_v_head_num, layer.v_head_dim),
                layer.k_scale, layer.v_scale)
        q3 = q.reshape(-1, layer.tp_q_head_num, layer.head_dim)
        out = q.new_empty(q3.shape[0], layer.tp_q_head_num, layer.v_head_dim)
        k_buf, v_buf = self.token_to_kv_pool.get_kv_buffer(layer.layer_id)
        scales = (layer.k_scale, layer.v_scale) if self.fp8_cache else (None, None)
        if layer.is_cross_attention:
            if md.cross is None:
                raise ValueError("anyattn: cross-attention layer but the batch has no encoder_lens")
            attention(q3, k_buf, v_buf, md.cross, self._params(layer, causal=False), sinks=sinks,
                      k_descale=scales[0], v_descale=scales[1], out=out)
        elif md.draft is None:
            attention(q3, k_buf, v_buf, md.main, params, sinks=sinks, k_descale=scales[0],
                      v_descale=scales[1], out=out, alibi_slopes=slopes)
        else:
            cascade_attention(q3, k_buf, v_buf, md.main, md.draft, params, sinks=sinks,
                              k_descale=scales[0], v_descale=scales[1], out=out)
        return out.view(-1, layer.tp_q_head_num * layer.v_head_dim)

    def _params(self, layer, causal: bool | None = None) -> AttnParams:
        if causal is None:
            causal = layer.attn_type not in (AttentionType.ENCODER_ONLY,
                                             AttentionType.DECODER_BIDIRECTIONAL)
        window = layer.sliding_window_size
        window = -1 if window is None or window < 0 or layer.is_cross_attention else int(window)
        # SGLang's sliding_window_size is already "window - 1" (the model subtracts one), and
        # like FlashAttention's window it is inclusive: a query at p sees keys [p - w, p].
        return AttnParams(
            softmax_scale=float(layer.scaling), causal=causal, window_left=window,
            window_right=window if (window >= 0 and not causal) else -1,
            chunk_size=self.attention_chunk_size if getattr(layer, "use_irope", False) else 0,
            softcap=float(layer.logit_cap or 0.0))

