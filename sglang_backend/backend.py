"""``AnyAttnBackend``: SGLang's ``AttentionBackend`` on top of anyattn's plans and kernels.

One backend instance serves the target model (every forward mode, target verify included),
an EAGLE draft-extend step, or one step of multi-step draft decode (created by
:class:`anyattn.sglang_backend.draft.AnyAttnMultiStepDraftBackend` with a
``speculative_step_id``). Metadata is built once per forward step
(:meth:`init_forward_metadata`, or :meth:`init_forward_metadata_out_graph` around CUDA
graphs) and shared by every layer; the forwards only write K/V and call ``core.ops``.
"""
from __future__ import annotations

import torch

from anyattn.core import checks
from anyattn.core.ops import AttnParams, attention, merge_state

from sglang.srt.layers.attention.base_attn_backend import AttentionBackend
from sglang.srt.layers.radix_attention import AttentionType
from sglang.srt.mem_cache.memory_pool import KVWriteLoc
from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool
from sglang.srt.runtime_context import get_exec, get_parallel, get_spec

from .metadata import GraphPasses, LayoutBuilder, Pass, StepMetadata, eager_pass


class AnyAttnBackend(AttentionBackend):
    """Every SGLang forward mode through ``anyattn.core`` (see ``metadata.py`` for layouts)."""

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
        self.req_to_token = model_runner.req_to_token_pool.req_to_token
        self.page_size = model_runner.page_size
        self.max_context_len = model_runner.model_config.context_len
        self.kv_cache_dtype = model_runner.kv_cache_dtype
        self.fp8_cache = self.kv_cache_dtype in checks.FP8_DTYPES
        self.num_kv_heads = model_runner.model_config.get_num_kv_heads(
            get_parallel().attn_tp_size)
        self.attention_chunk_size = getattr(model_runner, "attention_chunk_size", None) or 0
        self.deterministic = bool(get_exec().deterministic.enable_deterministic_inference)
        spec = get_spec()
        self.topk = topk if topk is not None else (spec.speculative_eagle_topk or 0)
        self.num_draft_tokens = int(spec.speculative_num_draft_tokens or 0)
        self.speculative_num_steps = speculative_num_steps
        self.speculative_step_id = speculative_step_id
        self.layouts = LayoutBuilder(
            req_to_token=self.req_to_token, page_size=self.page_size,
            max_context_len=self.max_context_len, topk=self.topk,
            num_draft_tokens=self.num_draft_tokens,
            speculative_num_steps=speculative_num_steps,
            speculative_step_id=speculative_step_id)
        self.graph: GraphPasses | None = None
        self.forward_metadata: StepMetadata | None = None

    # -- metadata ------------------------------------------------------------------------
    def _is_draft_step(self, fb) -> bool:
        return (fb.forward_mode.is_decode_or_idle() and fb.spec_info is not None
                and self.speculative_num_steps > 0)

    def _describe(self, fb, max_k: int, *, graph: bool) -> dict[str, tuple]:
        """Layouts of this step by role (``main``, ``draft``, ``cross``).

        Each value is ``(layout, rows_per_seq, max_tokens)``; the last two size CUDA-graph
        buffers. ``max_k`` bounds the keys of the request's own tokens before any draft.
        """
        mode = fb.forward_mode
        b = self.layouts
        out: dict[str, tuple] = {}
        q_lens: torch.Tensor | int = 1
        max_q = 1
        if self._is_draft_step(fb):
            depth = self.speculative_step_id + 1
            if self.topk <= 1:
                out["main"] = (b.draft_chain(fb, max_k - depth if graph else max_k), 1, None)
            else:
                out["main"] = (b.prefix_shared(fb, self.topk, max_k), 1, None)
                out["draft"] = (b.draft_tree(fb), self.topk, depth)
        elif mode.is_decode_or_idle():
            out["main"] = (b.plain(fb, 1, 1, max_k), 1, None)
        elif mode.is_target_verify():
            n = self.num_draft_tokens
            if n <= 0:
                raise ValueError("anyattn: TARGET_VERIFY needs speculative_num_draft_tokens > 0")
            if getattr(fb.spec_info, "ragged_verify_layout", None) is not None:
                raise NotImplementedError("anyattn: ragged target verify is not supported")
            if self.topk <= 1:
                out["main"] = (b.verify_chain(fb, max_k - n if graph else max_k), 1, None)
            else:
                out["main"] = (b.prefix_shared(fb, n, max_k), 1, None)
                out["draft"] = (b.verify_tree(fb), n, n)
        elif mode.is_extend(include_draft_extend_v2=True):
            q_lens, max_q = self._extend_q_lens(fb, graph=graph)
            out["main"] = (b.plain(fb, q_lens, max_q, max_k, clamp_k=graph), 1, None)
        else:
            raise NotImplementedError(f"anyattn: forward mode {mode.name} is not supported")
        if getattr(fb, "encoder_lens", None) is not None:
            if "draft" in out:
                raise NotImplementedError("anyattn: speculative decoding of encoder-decoder models")
            max_enc = self.max_context_len
            if not graph and getattr(fb, "encoder_lens_cpu", None) is not None:
                max_enc = max(1, max(int(x) for x in fb.encoder_lens_cpu))
            out["cross"] = (b.cross(fb, q_lens, max_q, max_enc), 1, max_enc)
        return out

    def _extend_q_lens(self, fb, *, graph: bool) -> tuple[torch.Tensor, int]:
        bs = fb.batch_size
        q_lens = fb.extend_seq_lens
        if q_lens is None and fb.spec_info is not None:
            q_lens = getattr(fb.spec_info, "extend_seq_lens_tensor", None)
        if q_lens is None:
            if not fb.forward_mode.is_draft_extend_v2():
                raise ValueError("anyattn: extend batch without extend_seq_lens")
            q_lens = torch.full((bs,), self.num_draft_tokens, dtype=torch.int32,
                                device=fb.seq_lens.device)
        q_lens = q_lens[:bs]
        if graph:
            return q_lens, max(1, self.num_draft_tokens)
        host = fb.extend_seq_lens_cpu
        if host is None and fb.spec_info is not None:
            host = getattr(fb.spec_info, "extend_seq_lens_cpu", None)
        if host is not None and len(host):
            return q_lens, max(1, max(int(x) for x in host))
        # No host lengths: the widest possible query (a bound, never read back).
        return q_lens, max(self.num_draft_tokens, self.max_context_len)

    def _host_max_k(self, fb) -> int:
        seq_lens_cpu = getattr(fb, "seq_lens_cpu", None)
        if seq_lens_cpu is not None and seq_lens_cpu.numel() > 0:
            return max(1, int(seq_lens_cpu[: fb.batch_size].max()))
        return self.max_context_len

    def init_forward_metadata(self, forward_batch) -> None:
        """Eager step: build fresh plans (host bounds from ``seq_lens_cpu`` when published)."""
        if forward_batch.forward_mode.is_idle() or forward_batch.batch_size == 0:
            self.forward_metadata = None
            return
        max_k = self._host_max_k(forward_batch)
        passes = {
            role: eager_pass(layout, num_kv_heads=self.num_kv_heads,
                             max_seqlen_k=max_k + self._extra_keys(forward_batch),
                             deterministic=self.deterministic)
            for role, (layout, _, _) in self._describe(forward_batch, max_k, graph=False).items()
        }
        self.forward_metadata = StepMetadata(**passes)

    def _extra_keys(self, fb) -> int:
        """Keys beyond ``seq_lens`` a mode reads (draft tokens not counted in seq_lens)."""
        if fb.forward_mode.is_target_verify() and self.topk <= 1:
            return self.num_draft_tokens
        if self._is_draft_step(fb) and self.topk <= 1:
            return self.speculative_step_id + 1
        return 0

    # -- CUDA graphs ---------------------------------------------------------------------
    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int) -> None:
        self.graph = GraphPasses(max_bs=max_bs, max_context_len=self.max_context_len,
                                 page_size=self.page_size, num_kv_heads=self.num_kv_heads,
                                 device=self.device, deterministic=self.deterministic)

    def init_forward_metadata_out_graph(self, forward_batch, in_capture: bool = False) -> None:
        """Capture and replay: copy this step into the preallocated plans, in place.

        Nothing here reads a device value on the host; the plans' bounds are static, so a
        captured graph stays valid for every replay at the same batch size.
        """
        if self.graph is None:
            raise RuntimeError("anyattn: init_cuda_graph_state must run before "
                               "init_forward_metadata_out_graph")
        mode = forward_batch.forward_mode
        prefix = ("draft" if self._is_draft_step(forward_batch) else
                  "verify" if mode.is_target_verify() else
                  "draft_extend" if mode.is_draft_extend_v2() else
                  "decode" if mode.is_decode_or_idle() else None)
        if prefix is None:
            raise NotImplementedError(f"anyattn: no CUDA-graph metadata for {mode.name}; "
                                      "extend steps run eagerly")
        described = self._describe(forward_batch, self.max_context_len, graph=True)
        passes = {role: self.graph.fill(f"{prefix}.{role}", layout, rows_per_seq=rows,
                                        max_tokens=width)
                  for role, (layout, rows, width) in described.items()}
        self.forward_metadata = StepMetadata(**passes)

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
        unsupported = [name for name, value in extra.items() if value is not None]
        if unsupported:
            raise NotImplementedError(f"anyattn: forward arguments {unsupported} are not supported")
        if k is not None and save_kv_cache:
            self.token_to_kv_pool.set_kv_buffer(
                layer, KVWriteLoc.for_layer(fb, layer),
                k.view(-1, layer.tp_k_head_num, layer.head_dim),
                v.view(-1, layer.tp_v_head_num, layer.v_head_dim),
                layer.k_scale, layer.v_scale)
        md = self.forward_metadata
        if md is None:
            raise RuntimeError("anyattn: init_forward_metadata was not called for this step")
        q3 = q.reshape(-1, layer.tp_q_head_num, layer.head_dim)
        out = q.new_empty(q3.shape[0], layer.tp_q_head_num, layer.v_head_dim)
        k_buf, v_buf = self.token_to_kv_pool.get_kv_buffer(layer.layer_id)
        if layer.is_cross_attention:
            if md.cross is None:
                raise ValueError("anyattn: cross-attention layer but the batch has no encoder_lens")
            self._run(q3, k_buf, v_buf, md.cross, self._params(layer, causal=False),
                      layer, sinks, out)
        elif md.draft is None:
            self._run(q3, k_buf, v_buf, md.main, self._params(layer), layer, sinks, out)
        else:
            self._cascade(q3, k_buf, v_buf, md, layer, sinks, out)
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

    def _cascade(self, q3, k_buf, v_buf, md: StepMetadata, layer, sinks, out) -> None:
        """Prefix (non-causal) + draft keys, merged by LSE. Sinks join the first half only."""
        params = self._params(layer, causal=False)
        if params.window_left >= 0 or params.chunk_size > 0:
            raise NotImplementedError(
                "anyattn: sliding-window / chunked-local layers with EAGLE topk > 1 are not "
                "supported yet (the prefix half of the cascade is position-free)")
        o_prefix, lse_prefix = self._run(q3, k_buf, v_buf, md.main, params, layer, sinks, None,
                                         return_lse=True)
        o_draft, lse_draft = self._run(q3, k_buf, v_buf, md.draft, params, layer, None, None,
                                       return_lse=True)
        merged, _ = merge_state(o_prefix, lse_prefix, o_draft, lse_draft)
        out.copy_(merged)

    def _run(self, q3, k_buf, v_buf, p: Pass, params: AttnParams, layer, sinks, out,
             return_lse: bool = False):
        page = 1 if p.token_table else self.page_size
        k_cache = _paged_view(k_buf, page)
        v_cache = _paged_view(v_buf, page)
        k_descale = v_descale = None
        if self.fp8_cache and layer.k_scale is not None:
            k_descale = _descale(layer.k_scale, p.plan.batch_size, k_cache.shape[-2], q3.device)
            v_descale = _descale(layer.v_scale, p.plan.batch_size, v_cache.shape[-2], q3.device)
        return attention(q3, k_cache, v_cache, p.plan, params, sinks=sinks, k_descale=k_descale,
                         v_descale=v_descale, out=out, return_lse=return_lse)


def _paged_view(buf: torch.Tensor, page_size: int) -> torch.Tensor:
    """SGLang's ``[num_slots, H, D]`` buffer as ``[num_pages, page_size, H, D]`` (no copy)."""
    num_pages = buf.shape[0] // page_size
    return buf[: num_pages * page_size].unflatten(0, (num_pages, page_size))


def _descale(scale, batch: int, heads: int, device: torch.device) -> torch.Tensor:
    scale = torch.as_tensor(scale, dtype=torch.float32, device=device)
    return scale.reshape(-1)[:1].expand(batch, heads) if scale.numel() == 1 else \
        scale.reshape(1, heads).expand(batch, heads)
