"""Backend-level harness: real SGLang pools, ForwardBatch and RadixAttention on the CPU.

A :class:`Scenario` owns a ReqToTokenPool / MHATokenToKVPool (through the ModelRunner mock of
SGLang's own attention test kit), a shuffled page layout, cached prefix K/V and the new
tokens' q/k/v. :meth:`Scenario.run` drives any attention backend through the public
``AttentionBackend`` API (``init_forward_metadata`` then ``forward``) on a fresh copy of the
KV cache, so two backends can be compared on identical inputs.
"""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field

import torch

from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
from sglang.srt.layers.radix_attention import RadixAttention
from sglang.srt.model_executor.forward_batch_info import (CaptureHiddenMode, ForwardBatch,
                                                          ForwardMode)
from sglang.srt.model_executor.forward_context import ForwardContext, forward_context
from sglang.srt.runtime_context import get_context
from sglang.srt.speculative.eagle_info import EagleVerifyInput
from sglang.test.kits.attention_unittest.attention_methods.dense_attention import (
    DenseAttentionCase, MockModelRunner, TinyModelConfig)

from trees import ancestor_mask, custom_mask

HEAD_DIM = 32
MAX_CONTEXT = 96


def bind_batch(runner, forward_batch: ForwardBatch) -> None:
    """Bind a hand-built batch to its own KV-index plan where the release has one (0.5.23's
    ``kv_index_translator``; 0.5.17 has none and needs nothing)."""
    translator = getattr(runner, "kv_index_translator", None)
    if translator is not None:
        translator.bind_own_plan(forward_batch)


def count_kernel_launches(monkeypatch) -> list:
    """Record each call of anyattn's Triton attention entry point (the list fills as it runs)."""
    from anyattn.core.providers.triton import attention as kernels

    calls: list = []
    original = kernels.run_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(kernels, "run_attention", counted)
    return calls


def fp8_round_trip(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """What a scaled fp8 (e4m3) cache returns for ``x``: the pool's write (divide, cast),
    dequantized."""
    return (x / scale).to(torch.float8_e4m3fn).float() * scale


@dataclass
class Spec:
    """EAGLE settings published to the runtime config for this scenario."""

    topk: int = 0
    num_draft_tokens: int = 0
    num_steps: int = 0


class Runner(MockModelRunner):
    """The kit's ModelRunner mock, plus EAGLE fields in the published server args."""

    def __init__(self, case: DenseAttentionCase, *, spec: Spec, dtype: torch.dtype,
                 kv_dtype: torch.dtype | None = None, batch_capacity: int | None = None):
        config = TinyModelConfig(num_heads=case.num_heads, num_kv_heads=case.num_kv_heads,
                                 head_dim=HEAD_DIM, hidden_size=case.num_heads * HEAD_DIM,
                                 context_len=MAX_CONTEXT,
                                 sliding_window_size=case.sliding_window_size)
        super().__init__(case=case, model_config=config, dtype=dtype, device="cpu",
                         max_context_len=MAX_CONTEXT, head_dim=HEAD_DIM,
                         runner_batch_size=batch_capacity)
        fields = dict(self._server_args_override._fields)
        fields.update(page_size=case.page_size, speculative_eagle_topk=spec.topk,
                      speculative_num_draft_tokens=spec.num_draft_tokens,
                      speculative_num_steps=spec.num_steps)
        if kv_dtype is not None:
            fields["kv_cache_dtype"] = "fp8_e4m3"
            self.kv_cache_dtype = kv_dtype
            self.kv_cache_dtype_str = "fp8_e4m3"
        self._server_args_override.restore()
        self._server_args_override = get_context().override_server_args(**fields)
        self.server_args = self._server_args_override.install()
        if kv_dtype is not None:
            from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

            self.token_to_kv_pool = MHATokenToKVPool(
                size=self.token_to_kv_pool.size, page_size=case.page_size, dtype=kv_dtype,
                head_num=case.num_kv_heads, head_dim=HEAD_DIM, layer_num=1, device="cpu",
                enable_memory_saver=False, enable_alt_stream=False)

    def close(self) -> None:
        self._server_args_override.restore()


@dataclass
class Scenario:
    mode: ForwardMode
    prefix_lens: tuple[int, ...]
    new_lens: tuple[int, ...]
    page_size: int = 1
    num_heads: int = 4
    num_kv_heads: int = 2
    sliding_window: int | None = None
    logit_cap: float = 0.0
    spec: Spec = field(default_factory=Spec)
    tree_parents: list[int] | list[list[int]] | None = None  # one tree, or one per request
    batch_topk: int | None = None  # spec_info.topk of a verify batch (default: the setting's)
    qlen_only_mask: bool = False  # custom_mask in SGLang's CPU-engine layout (drafts only)
    dtype: torch.dtype = torch.float32
    kv_dtype: torch.dtype | None = None
    encoder_lens: tuple[int, ...] | None = None
    cross_attention: bool = False
    configured_backend: str = "triton"  # the --attention-backend the runtime config names
    attention_chunk: int = 0  # Llama-4 attention_chunk_size; the layer then uses iRoPE
    seed: int = 0

    def __post_init__(self) -> None:
        g = torch.Generator().manual_seed(self.seed)
        self.batch = len(self.prefix_lens)
        case = DenseAttentionCase(
            name="anyattn", backend=self.configured_backend, forward_mode=ForwardMode.EXTEND,
            num_heads=self.num_heads, num_kv_heads=self.num_kv_heads, page_size=self.page_size,
            prefix_lens=self.prefix_lens, extend_lens=self.new_lens,
            sliding_window_size=self.sliding_window)
        self.runner = Runner(case, spec=self.spec, dtype=self.dtype, kv_dtype=self.kv_dtype)
        self.runner.attention_chunk_size = self.attention_chunk or None
        self.layer = RadixAttention(
            num_heads=self.num_heads, head_dim=HEAD_DIM, scaling=HEAD_DIM ** -0.5,
            num_kv_heads=self.num_kv_heads, layer_id=0, logit_cap=self.logit_cap,
            sliding_window_size=self.sliding_window if self.sliding_window is not None else -1,
            is_cross_attention=self.cross_attention, use_irope=self.attention_chunk > 0)
        if self.kv_dtype is not None:
            # Both forms SGLang's BaseKVCacheMethod leaves on a layer: tensors (the pool's
            # write divides by them) and floats (SGLang's Triton backend reads with them).
            self.layer.k_scale, self.layer.k_scale_float = torch.tensor(0.5), 0.5
            self.layer.v_scale, self.layer.v_scale_float = torch.tensor(0.25), 0.25
        self._layout(random.Random(self.seed))
        total_new = sum(self.new_lens)
        hk, hq = self.num_kv_heads, self.num_heads
        self.q = torch.randn(total_new, hq * HEAD_DIM, generator=g).to(self.dtype)
        self.k = torch.randn(total_new, hk * HEAD_DIM, generator=g).to(self.dtype)
        self.v = torch.randn(total_new, hk * HEAD_DIM, generator=g).to(self.dtype)
        pool = self.runner.token_to_kv_pool
        with torch.no_grad():
            k_buf, v_buf = pool.get_kv_buffer(0)
            k_buf.copy_(torch.randn(k_buf.shape, generator=g).to(k_buf.dtype))
            v_buf.copy_(torch.randn(v_buf.shape, generator=g).to(v_buf.dtype))
        self.kv_snapshot = [t.clone() for t in pool.get_kv_buffer(0)]

    def _layout(self, rng: random.Random) -> None:
        """Each request owns shuffled whole pages; a token's slot comes from its page."""
        ps = self.page_size
        enc = self.encoder_lens or (0,) * self.batch
        need = [-(-(e + p + n) // ps) + 1 for e, p, n in zip(enc, self.prefix_lens, self.new_lens)]
        pages = list(range(1, 1 + sum(need)))  # page 0 stays the padding page
        rng.shuffle(pages)
        r2t = self.runner.req_to_token_pool.req_to_token
        self.req_pool_indices = torch.arange(1, self.batch + 1, dtype=torch.int32)
        self.new_slots, self.encoder_slots = [], []
        for b in range(self.batch):
            mine, pages = pages[: need[b]], pages[need[b]:]
            total = enc[b] + self.prefix_lens[b] + self.new_lens[b]
            slots = torch.tensor([mine[i // ps] * ps + i % ps for i in range(total)])
            r2t[self.req_pool_indices[b], :total] = slots.to(r2t.dtype)
            start = enc[b] + self.prefix_lens[b]
            self.new_slots.append(slots[start:])
            self.encoder_slots.append(slots[: enc[b]])

    def forward_batch(self, mode: ForwardMode | None = None) -> ForwardBatch:
        mode = mode or self.mode
        seq = [p + n for p, n in zip(self.prefix_lens, self.new_lens)]
        if mode.is_target_verify():
            seq = list(self.prefix_lens)  # SGLang: verify seq_lens exclude the draft tokens
        positions = torch.cat([torch.arange(p, p + n) for p, n in
                               zip(self.prefix_lens, self.new_lens)])
        fb = ForwardBatch(
            forward_mode=mode, batch_size=self.batch,
            input_ids=torch.zeros(sum(self.new_lens), dtype=torch.int64),
            req_pool_indices=self.req_pool_indices.clone(),
            seq_lens=torch.tensor(seq, dtype=torch.int32),
            seq_lens_cpu=torch.tensor(seq, dtype=torch.int32),
            out_cache_loc=torch.cat(self.new_slots).to(torch.int64),
            seq_lens_sum=sum(seq), positions=positions)
        bind_batch(self.runner, fb)
        if mode.is_extend(include_draft_extend_v2=True) and not mode.is_target_verify():
            fb.extend_prefix_lens = torch.tensor(self.prefix_lens, dtype=torch.int32)
            fb.extend_prefix_lens_cpu = list(self.prefix_lens)
            fb.extend_seq_lens = torch.tensor(self.new_lens, dtype=torch.int32)
            fb.extend_seq_lens_cpu = list(self.new_lens)
            fb.extend_num_tokens = sum(self.new_lens)
        if self.encoder_lens is not None:
            fb.encoder_lens = torch.tensor(self.encoder_lens, dtype=torch.int32)
            fb.encoder_lens_cpu = list(self.encoder_lens)
            fb.encoder_out_cache_loc = torch.cat(self.encoder_slots).to(torch.int64)
        if mode.is_target_verify():
            fb.spec_info = self._verify_input(fb)
        return fb

    def _verify_input(self, fb: ForwardBatch) -> EagleVerifyInput:
        n = self.new_lens[0]
        prefix = [0] * self.batch if self.qlen_only_mask else list(self.prefix_lens)
        mask = custom_mask(self.draft_masks(), prefix)
        idx = torch.arange(n, dtype=torch.long).repeat(self.batch, 1)
        topk = self.batch_topk if self.batch_topk is not None else max(1, self.spec.topk)
        return EagleVerifyInput(
            draft_token=fb.input_ids, custom_mask=mask, positions=fb.positions,
            retrieve_index=idx, retrieve_next_token=torch.full_like(idx, -1),
            retrieve_next_sibling=torch.full_like(idx, -1),
            retrieve_cum_len=torch.arange(self.batch + 1, dtype=torch.int32) * n,
            spec_steps=max(0, n - 1), topk=topk, draft_token_num=n,
            capture_hidden_mode=CaptureHiddenMode.FULL, seq_lens_sum=fb.seq_lens_sum,
            seq_lens_cpu=fb.seq_lens_cpu)

    def shrink(self, prefix_lens: tuple[int, ...], new_lens: tuple[int, ...], *,
               seed: int = 1) -> "Scenario":
        """Another step on the same pools and layer: the first ``len(prefix_lens)`` requests,
        with lengths no longer than this scenario's, and fresh q/k/v."""
        rows = len(prefix_lens)
        if any(p + n > p0 + n0 for p, n, p0, n0 in
               zip(prefix_lens, new_lens, self.prefix_lens, self.new_lens)) or rows > self.batch:
            raise ValueError("shrink: the step must fit the scenario's requests")
        step = copy.copy(self)
        step.prefix_lens, step.new_lens, step.batch = tuple(prefix_lens), tuple(new_lens), rows
        step.req_pool_indices = self.req_pool_indices[:rows].clone()
        r2t = self.runner.req_to_token_pool.req_to_token
        step.new_slots = [r2t[step.req_pool_indices[b], p:p + n].long()
                          for b, (p, n) in enumerate(zip(prefix_lens, new_lens))]
        g = torch.Generator().manual_seed(seed)
        total, width_q, width_kv = sum(new_lens), self.q.shape[1], self.k.shape[1]
        step.q = torch.randn(total, width_q, generator=g).to(self.dtype)
        step.k = torch.randn(total, width_kv, generator=g).to(self.dtype)
        step.v = torch.randn(total, width_kv, generator=g).to(self.dtype)
        return step

    def draft_masks(self) -> list[torch.Tensor]:
        """Each request's ``[n, n]`` draft mask (ancestors; a causal chain without a tree)."""
        n, trees = self.new_lens[0], self.tree_parents
        if not trees:
            return [torch.ones(n, n, dtype=torch.bool).tril()] * self.batch
        per_request = trees if isinstance(trees[0], list) else [trees] * self.batch
        return [ancestor_mask(parents) for parents in per_request]

    def request_kv(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V ``[prefix + new, Hk, D]`` (float32) of request ``b`` as its cache holds them
        after the step, rebuilt without the backend: the prefix from the cache snapshot, the
        new tokens from this step's k/v (through the fp8 round trip of an fp8 pool)."""
        hk, lo = self.num_kv_heads, sum(self.new_lens[:b])
        new_k = self.k[lo:lo + self.new_lens[b]].float().view(-1, hk, HEAD_DIM)
        new_v = self.v[lo:lo + self.new_lens[b]].float().view(-1, hk, HEAD_DIM)
        r2t = self.runner.req_to_token_pool.req_to_token
        slots = r2t[self.req_pool_indices[b], :self.prefix_lens[b]].long()
        k_prefix, v_prefix = (buf[slots].float() for buf in self.kv_snapshot)
        if self.kv_dtype is not None:
            k_prefix, v_prefix = k_prefix * self.layer.k_scale, v_prefix * self.layer.v_scale
            new_k = fp8_round_trip(new_k, self.layer.k_scale)
            new_v = fp8_round_trip(new_v, self.layer.v_scale)
        return torch.cat([k_prefix, new_k]), torch.cat([v_prefix, new_v])

    def backend(self, name: str):
        return ATTENTION_BACKENDS[name](self.runner)

    def reset_cache(self) -> None:
        with torch.no_grad():
            for buf, saved in zip(self.runner.token_to_kv_pool.get_kv_buffer(0), self.kv_snapshot):
                buf.copy_(saved)

    def run(self, backend, fb: ForwardBatch | None = None, *, init=None,
            write_kv: bool = True, **forward_kwargs) -> torch.Tensor:
        """Fresh cache, metadata (``init`` or ``init_forward_metadata``), one layer forward.

        ``write_kv=False`` passes no new K/V (a cross-attention layer whose encoder K/V
        are already cached). K/V are copied: with an fp8 pool, SGLang's ``set_kv_buffer``
        divides them by the layer's scales in place.
        """
        self.reset_cache()
        fb = fb or self.forward_batch()
        k, v = (self.k.clone(), self.v.clone()) if write_kv else (None, None)
        with torch.no_grad(), forward_context(ForwardContext(attn_backend=backend)):
            (init or backend.init_forward_metadata)(fb)
            return self.layer(self.q, k, v, fb, **forward_kwargs).float()

    def close(self) -> None:
        self.runner.close()
