"""Run a real vLLM engine on token-id prompts (used by tests/vllm and ci/demo_vllm.py).

Run with ci/ and ci/pyshim on PYTHONPATH so that vLLM's spawned processes find this module
(the probes below run inside the worker) and the torchvision shim. The probes travel to the
worker by pickle, which vLLM allows with VLLM_ALLOW_INSECURE_SERIALIZATION=1.
"""
from __future__ import annotations

from dataclasses import dataclass, field

ENGINE_DEFAULTS = dict(
    skip_tokenizer_init=True, dtype="float32", seed=0, max_model_len=1024,
    # Chunked prefill with a small token budget splits the long prompts over several
    # steps, so steps mix prefill chunks with decodes; prefix caching reuses the shared
    # prompt head.
    enable_prefix_caching=True, enable_chunked_prefill=True, max_num_batched_tokens=128,
    max_num_seqs=8, block_size=32,
    # Attention is the same code either way; eager skips ~30 s of torch.compile per engine.
    enforce_eager=True,
)


@dataclass
class Generation:
    tokens: list[list[int]]
    impls: list[str]  # attention impl classes the workers built
    worker_impls: list[list[str]]  # the same, per worker process (tensor-parallel ranks)
    cached_tokens: list[int]  # prompt tokens served from the prefix cache, per prompt
    # Per attention step (anyattn only): the (q_len, seq_len) of every request.
    steps: list[list[tuple[int, int]]] = field(default_factory=list)
    # Which core path ran those steps in the worker: "triton" and/or "reference".
    core_paths: list[str] = field(default_factory=list)


def attention_impls(model) -> list[str]:
    from vllm.model_executor.layers.attention import Attention
    return sorted({type(m.impl).__name__ for m in model.modules() if isinstance(m, Attention)})


def drop_alibi(model) -> None:
    """A negative control (``model_probe``): anyattn's layers forget their ALiBi slopes."""
    from vllm.model_executor.layers.attention import Attention
    for m in model.modules():
        if isinstance(m, Attention):
            m.impl.alibi_slopes = None


_STEPS: list[list[tuple[int, int]]] = []
_PATHS: set[str] = set()


def record_anyattn_steps(worker) -> None:
    """Log every batch anyattn's builder sees (in the worker process only)."""
    from anyattn.core.run import use_triton
    from anyattn.vllm_plugin.builder import AnyAttnMetadataBuilder

    build = AnyAttnMetadataBuilder.build

    def recording_build(self, common_prefix_len, cm, fast_build=False):
        q = cm.query_start_loc_cpu[: cm.num_reqs + 1]
        _STEPS.append(list(zip((q[1:] - q[:-1]).tolist(), cm.seq_lens.cpu().tolist())))
        _PATHS.add("triton" if use_triton(cm.seq_lens) else "reference")
        return build(self, common_prefix_len, cm, fast_build)

    AnyAttnMetadataBuilder.build = recording_build


def recorded_anyattn_steps(worker) -> tuple[list[list[tuple[int, int]]], list[str]]:
    return _STEPS, sorted(_PATHS)


def clear_anyattn_steps(worker) -> None:
    _STEPS.clear()
    _PATHS.clear()


def generate_greedy(model: str, backend: str, prompts: list[list[int]], max_tokens: int,
                    model_probe=None, **engine_kwargs) -> Generation:
    """Greedy tokens for each prompt through ``vllm.LLM(attention_backend=backend)``.

    ``model_probe(model)`` runs in every worker on the loaded model before generating (a
    test's negative control may alter the attention layers with it).
    """
    return generate_greedy_runs(model, backend, prompts, max_tokens, [model_probe],
                                **engine_kwargs)[0]


def generate_greedy_runs(model: str, backend: str, prompts: list[list[int]], max_tokens: int,
                         model_probes, **engine_kwargs) -> list[Generation]:
    """:func:`generate_greedy` once per entry of ``model_probes`` (a probe or None), in order,
    in one engine: an engine start costs tens of seconds on the CPU, a run a second or two.

    Each run starts from an empty prefix cache (the one before it leaves none behind) and
    records its own steps, so it is the run a fresh engine would make after its probe; probes
    act on the model as the runs before them left it.
    """
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=model, attention_backend=backend, **{**ENGINE_DEFAULTS, **engine_kwargs})
    try:
        worker_impls = llm.apply_model(attention_impls)
        impls = sorted({name for names in worker_impls for name in names})
        record = backend.upper() == "ANYATTN"
        if record:
            llm.collective_rpc(record_anyattn_steps)
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True,
                                detokenize=False)
        runs = []
        for i, probe in enumerate(model_probes):
            if i:
                assert llm.reset_prefix_cache(), "the prefix cache was not reset"
                if record:
                    llm.collective_rpc(clear_anyattn_steps)
            if probe is not None:
                llm.apply_model(probe)
            outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                                use_tqdm=False)
            steps, paths = llm.collective_rpc(recorded_anyattn_steps)[0] if record else ([], [])
            runs.append(Generation(
                tokens=[list(o.outputs[0].token_ids) for o in outs], impls=impls,
                worker_impls=[list(w) for w in worker_impls],
                cached_tokens=[o.num_cached_tokens or 0 for o in outs],
                steps=[[tuple(r) for r in s] for s in steps], core_paths=list(paths)))
        return runs
    finally:
        llm.llm_engine.engine_core.shutdown()
