"""SGLang's attention test kit against anyattn, every dense runner mode that runs on a CPU.

Each case runs for anyattn and for SGLang's Triton backend (interpreter): Triton passing the
same case is the check that the kit's fixture is sound here. Where the fixture is not
consistent with what SGLang's allocator produces, the case is not run; a test below asserts
the inconsistency instead (``test_kit_fixture_inconsistencies``), so a kit that fixes it
makes that test fail and the case can join the others.

Runner modes that need a GPU: the kit's EAGLE draft, frozen-KV MTP and draft-extend CUDA-graph
runners capture real CUDA graphs (``EAGLEDraftCudaGraphRunner`` / ``FrozenKVMTPCudaGraphRunner``
/ ``EAGLEDraftExtendCudaGraphRunner`` -> ``full_cuda_graph_backend.capture_session`` ->
``torch.cuda.graph_pool_handle``). Their eager legs (SGLang's draft workers through the kit's
fixture) run here, against Triton.
"""
from __future__ import annotations

import pytest
import torch

from harness import bind_batch, count_kernel_launches
from kit import (BACKENDS, CPU, ForwardMode, KitTestCase, case, cpu_rng, dense, draft,
                 draft_extend, graph_decode, page_rule_breaks, prefix_rewrite_collisions, run,
                 split_op, verify)

EXTEND, DECODE, VERIFY = ForwardMode.EXTEND, ForwardMode.DECODE, ForwardMode.TARGET_VERIFY
DRAFT_EXTEND = ForwardMode.DRAFT_EXTEND_V2
LAYOUTS = ["contiguous", "shuffled_pages", "interleaved_pages", "non_monotonic_extend"]


def _kit_dense_cases(backend: str) -> list:
    return list(dense.make_dense_cases(backend) + dense.make_swa_no_prefix_input_config_cases(backend)
                + dense.make_swa_prefix_input_config_cases(backend))


def _dense_params():
    """Every kit dense case x page layout, except non_monotonic_extend with pages > 1."""
    for c in _kit_dense_cases("anyattn"):
        for layout in LAYOUTS:
            if layout != "non_monotonic_extend" or c.page_size == 1:
                yield pytest.param(c.name, layout, id=f"{c.name}-{layout}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,layout", list(_dense_params()))
def test_dense_extend_decode(backend, name, layout):
    kit_case = next(c for c in _kit_dense_cases(backend) if c.name == name)
    run(dense.run_dense_attention_case, kit_case, loc_layout=layout)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("page_size", [1, 16])
def test_sliding_window_decode(backend, page_size):
    """Decode on a window layer (the kit lists extend-only window cases): positions below,
    at and past the window, under anyattn's declared rule (keys [p - w, p])."""
    run(dense.run_dense_attention_case,
        case(backend, DECODE, name="swa_decode", page_size=page_size, prefix_lens=(2, 4, 9),
             sliding_window_size=4))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("topk", [1, 2, 4])
def test_eagle_verify(backend, topk, page_size):
    """The kit's server settings say speculative_eagle_topk=0 while its batch carries the
    tree (spec_info.topk, custom_mask): the topology must come from the batch."""
    run(verify.run_dense_eagle_verify_case, case(backend, VERIFY, page_size=page_size), topk=topk)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("kind,topk", [("frozen_kv_mtp", 2), ("dflash", 1), ("ngram", 1),
                                       ("ngram", 2)])
def test_spec_verify_kinds(backend, kind, topk, page_size):
    """The other verify inputs: frozen-KV MTP (an EAGLE subclass), DFlash (a chain with its
    own mask), n-gram (tree_topk -1: an irregular tree, read from its custom mask)."""
    run(verify.run_dense_spec_verify_case,
        case(backend, VERIFY, name="spec", page_size=page_size, prefix_lens=(0, 17)),
        topk=topk, spec_kind=kind)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("topk", [1, 2])
def test_sliding_window_verify(backend, topk, page_size):
    """Window 4 over prefixes below (3) and past (9) it; with topk 2 the cascade applies the
    window to its prefix pass."""
    run(verify.run_dense_eagle_verify_case,
        case(backend, VERIFY, name="swa_verify", page_size=page_size, prefix_lens=(3, 9),
             sliding_window_size=4), topk=topk)


# CUDA-graph metadata runners: capture at batch 4 with the backend's fill value, replay a
# batch of 2 padded to 4, against the kit's reference and the eager output.
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("page_size", [1, 16])
def test_graph_decode(backend, page_size):
    run(graph_decode.run_dense_cuda_graph_decode_case,
        case(backend, DECODE, name="graph_decode", page_size=page_size, prefix_lens=(7, 20)))


# The verify runner's eager leg rewrites the prefix at contiguous slots over the fixture's
# shuffled layout; with page 16 and these prefixes no rewrite lands on another prefix token.
GRAPH_VERIFY = dict(page_size=16, prefix_lens=(5, 9))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("topk", [1, 2, 4])
def test_graph_verify(backend, topk):
    kit_case = case(backend, VERIFY, **GRAPH_VERIFY)
    assert not prefix_rewrite_collisions(kit_case)
    run(verify.run_dense_spec_verify_cuda_graph_case, kit_case, topk=topk)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pad_style", ["small_real", "prod_fill"])
@pytest.mark.parametrize("page_size", [1, 16])
def test_graph_draft_extend(backend, page_size, pad_style):
    run(draft_extend.run_dense_draft_extend_v2_cuda_graph_case,
        case(backend, DRAFT_EXTEND, page_size=page_size), pad_style=pad_style)


SPLIT_OP = [dict(page_size=16, prefix_lens=(5, 9)), dict(page_size=1, prefix_lens=(0, 0))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("breakable", [False, True], ids=["piecewise", "breakable"])
@pytest.mark.parametrize("layout", SPLIT_OP, ids=["page16", "page1-no-prefix"])
def test_split_op_extend(backend, layout, breakable):
    """Piecewise / breakable CUDA-graph split-op extend (static token padding, eager calls)."""
    kit_case = case(backend, EXTEND, name="split", **layout)
    assert not prefix_rewrite_collisions(kit_case)
    run(split_op.run_dense_split_op_extend_case, kit_case, breakable=breakable)


# -- the speculative draft runners' eager legs (their CUDA-graph legs need a GPU) ---------

def _draft_settings(topk: int, steps: int, draft_tokens: int) -> draft.EagleDraftRunnerSettings:
    return draft.EagleDraftRunnerSettings(
        topk=topk, speculative_num_steps=steps, speculative_num_draft_tokens=draft_tokens,
        capture_batch_size=4, hidden_size=dense.DEFAULT_HIDDEN_SIZE, vocab_size=64,
        max_context_len=dense.DEFAULT_MAX_CONTEXT_LEN, atol=dense.DENSE_ATOL,
        rtol=dense.DENSE_RTOL, **CPU)


def _build_kwargs():
    return dict(head_dim=dense.DEFAULT_HEAD_DIM, hidden_size=dense.DEFAULT_HIDDEN_SIZE,
                max_context_len=dense.DEFAULT_MAX_CONTEXT_LEN, **CPU)


def _record_logits(model_runner) -> list:
    """Wrap the draft model's forward to keep each step's logits (the kit's draft outputs
    are token ids and tree indices; the logits show any attention difference)."""
    steps, forward = [], model_runner.forward

    def recorded(forward_batch):
        out = forward(forward_batch)
        steps.append(out.logits_output.next_token_logits.clone())
        return out

    model_runner.forward = recorded
    return steps


# The draft runners' adapters, as the kit's run_dense_*_cuda_graph_runner_case build them:
# (fixture builder, worker harness builder, eager run, adapter pieces).
DRAFT_RUNNERS = {
    "eagle": (draft._build_eagle_draft_fixture,
              lambda worker, batch: draft._run_eagle_draft_eager(worker, batch),
              dict(make_model_forward=draft._make_dense_model_forward,
                   make_draft_inputs=draft._make_dense_draft_inputs,
                   make_forward_batch=draft._make_dense_eagle_draft_forward_batch)),
    "frozen_kv_mtp": (draft._build_frozen_kv_mtp_fixture, draft._run_frozen_kv_mtp_eager,
                      dict(make_model_forward=draft._make_dense_frozen_kv_mtp_model_forward,
                           make_draft_inputs=draft._make_dense_frozen_kv_mtp_draft_inputs,
                           make_forward_batch=draft._make_dense_frozen_kv_mtp_forward_batch)),
}


def _draft_decode(backend: str, topk: int, page_size: int, runner: str = "eagle"):
    """The eager leg of the kit's ``run_dense_eagle_draft_cuda_graph_runner_case`` (SGLang's
    EagleDraftWorker over the multi-step backend from DraftBackendFactory) or
    ``run_dense_frozen_kv_mtp_cuda_graph_runner_case`` (the draft attends the target's KV)."""
    kit_case = case(backend, DECODE, name="draft", page_size=page_size)
    settings = _draft_settings(topk, 3, 4 if runner == "eagle" else 3)
    build, run_eager, pieces = DRAFT_RUNNERS[runner]
    adapter = draft.EagleDraftCudaGraphRunnerAdapter(
        build_fixture=dense.build_dense_attention_fixture,
        prepare_replay_state=draft._prepare_dense_draft_replay_state,
        check_case=draft._check_dense_draft_cache_layout, **pieces)
    adapter.check_case(kit_case, settings)
    with torch.no_grad(), cpu_rng():
        inputs = adapter.make_draft_inputs(kit_case, settings)
        fixture, worker, _ = build(KitTestCase(), kit_case, adapter=adapter,
                                   build_kwargs=_build_kwargs(), settings=settings)
        adapter.prepare_replay_state(fixture, kit_case, inputs, settings)
        batch = adapter.make_forward_batch(kit_case, inputs, settings)
        bind_batch(fixture.runner, batch)
        logits = _record_logits(worker.model_runner)
        outputs = run_eager(worker, batch)
    return [t for t in outputs if isinstance(t, torch.Tensor)], logits, fixture, kit_case


@pytest.mark.parametrize("runner,topk,page_size", [
    ("eagle", 1, 1), ("eagle", 2, 1), ("eagle", 4, 1),
    ("frozen_kv_mtp", 1, 1), ("frozen_kv_mtp", 1, 16)])
def test_draft_decode_eager_matches_triton(runner, topk, page_size):
    ours, our_logits, _, _ = _draft_decode("anyattn", topk, page_size, runner)
    theirs, their_logits, _, _ = _draft_decode("triton", topk, page_size, runner)
    assert len(our_logits) == len(their_logits) >= 2
    for mine, ref in zip(our_logits + ours, their_logits + theirs):
        torch.testing.assert_close(mine.float(), ref.float(), atol=2e-5, rtol=2e-5)


def _draft_extend(backend: str, page_size: int):
    """The eager leg of ``run_dense_eagle_draft_extend_v2_cuda_graph_runner_case``."""
    kit_case = case(backend, DRAFT_EXTEND, name="draft_extend", page_size=page_size,
                    prefix_lens=(4, 18))
    settings = _draft_settings(1, 2, 3)
    adapter = draft_extend.EagleDraftExtendCudaGraphRunnerAdapter(
        build_fixture=dense.build_dense_attention_fixture,
        make_model_forward=draft_extend._make_dense_draft_extend_model_forward,
        make_draft_inputs=draft_extend._make_dense_draft_extend_inputs,
        prepare_replay_state=draft_extend._prepare_dense_draft_extend_replay_state,
        make_forward_batch=draft_extend._make_dense_eagle_draft_extend_v2_forward_batch)
    with torch.no_grad(), cpu_rng():
        inputs = adapter.make_draft_inputs(kit_case, settings)
        fixture, worker, _ = draft_extend._build_eagle_draft_extend_fixture(
            KitTestCase(), kit_case, adapter=adapter, build_kwargs=_build_kwargs(), settings=settings)
        adapter.prepare_replay_state(fixture, kit_case, inputs, settings)
        batch = adapter.make_forward_batch(fixture, kit_case, inputs, settings)
        return draft_extend._run_eagle_draft_extend_eager(worker, batch, settings)


@pytest.mark.parametrize("page_size", [1, 16])
def test_draft_extend_eager_matches_triton(page_size):
    ours, theirs = _draft_extend("anyattn", page_size), _draft_extend("triton", page_size)
    for name in ("next_token_logits", "hidden_states"):
        torch.testing.assert_close(getattr(ours, name).float(), getattr(theirs, name).float(),
                                   atol=2e-5, rtol=2e-5, msg=name)


# -- anyattn's own Triton kernels (interpreter) on a few kit cases -------------------------

TRITON_KERNEL_CASES = {
    "dense_extend": lambda: run(dense.run_dense_attention_case, next(
        c for c in _kit_dense_cases("anyattn") if c.name == "mha_extend_ragged_page_boundary")),
    "eagle_verify_tree": lambda: run(verify.run_dense_eagle_verify_case,
                                     case("anyattn", VERIFY, page_size=16), topk=2),
    "window_verify_tree": lambda: run(verify.run_dense_eagle_verify_case,
                                      case("anyattn", VERIFY, name="swa_verify",
                                           prefix_lens=(3, 9), sliding_window_size=4), topk=2),
    "graph_verify_tree": lambda: run(verify.run_dense_spec_verify_cuda_graph_case,
                                     case("anyattn", VERIFY, **GRAPH_VERIFY), topk=2),
    "graph_decode": lambda: run(graph_decode.run_dense_cuda_graph_decode_case,
                                case("anyattn", DECODE, name="graph_decode", page_size=16,
                                     prefix_lens=(7, 20))),
}


@pytest.mark.parametrize("name", sorted(TRITON_KERNEL_CASES))
def test_kit_on_anyattn_triton_kernels(monkeypatch, name):
    monkeypatch.setenv("ANYATTN_IMPL", "triton")
    calls = count_kernel_launches(monkeypatch)
    TRITON_KERNEL_CASES[name]()
    assert calls, "the Triton kernels did not run"


# -- where the kit's fixtures are not what SGLang's allocator produces ----------------------

def test_kit_fixture_inconsistencies():
    """The cases left out above, and why (asserted, so a fixed kit shows up here).

    1. ``non_monotonic_extend`` with pages > 1 scatters a request's new tokens within its
       block, so a page holds tokens out of order: slot != page * page_size + offset.
    2. The CUDA-graph verify and split-op runners rewrite the prefix at contiguous slots
       over the fixture's shuffled layout; with page 1 (and prefixes) the rewrite lands on
       other prefix tokens, so the cache no longer matches the kit's own reference.
    3. The EAGLE draft runner puts its draft tokens at contiguous slots after a shuffled
       prefix; with page 16 the prefix's last page and the first draft tokens then sit on
       different physical pages.
    """
    c = next(c for c in _kit_dense_cases("anyattn") if c.name == "mha_extend_ragged_page_boundary")
    loc = dense.make_loc_fn("non_monotonic_extend", batch_size=c.batch_size, seq_lens=c.seq_lens,
                            prefix_lens=c.prefix_lens, page_size=c.page_size,
                            max_context_len=dense.DEFAULT_MAX_CONTEXT_LEN)
    slots = torch.tensor([loc(0, t) for t in range(c.seq_lens[0])])
    assert page_rule_breaks(slots, c.page_size)

    assert prefix_rewrite_collisions(case("anyattn", VERIFY, page_size=1))
    assert prefix_rewrite_collisions(case("anyattn", EXTEND, name="split", page_size=1))

    _, _, fixture, kit_case = _draft_decode("anyattn", 1, 16)
    r2t = fixture.runner.req_to_token_pool.req_to_token
    positions = kit_case.prefix_lens[0] + 3
    assert page_rule_breaks(r2t[0, :positions], 16)
