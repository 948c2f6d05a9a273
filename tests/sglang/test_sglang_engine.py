"""Engine level: the real SGLang Engine and HTTP server on the CPU with a tiny random Llama
(a seeded random checkpoint written locally, see tiny_llama.py for why not load_format=dummy).

``sglang.Engine(attention_backend="anyattn")`` must generate what the same engine generates
with SGLang's torch_native backend (greedy tokens equal, log-probs close), and
``python -m sglang.launch_server --attention-backend anyattn`` must answer ``/generate``
and the OpenAI ``/v1/completions`` (token ids, and text through a word-level tokenizer made
locally, ``tests/local_tokenizer.py``) with those tokens. The plugin reaches the scheduler
subprocesses through its entry point.
"""
from __future__ import annotations

import pytest

from local_server import free_port, post_json, running_server
from local_tokenizer import write_tokenizer
from sglang_openai import complete, server_backends, server_cmd
from tiny_llama import CONFIG, write_tiny_llama

PROMPTS = [[1, 5, 9, 33, 7, 200, 14], [1, 100, 2, 4], [1, 17]]
SAMPLING = {"temperature": 0.0, "max_new_tokens": 12, "ignore_eos": True}
ENGINE_ARGS = dict(device="cpu", skip_tokenizer_init=True, dtype="float32",
                   random_seed=0, mem_fraction_static=0.3, disable_cuda_graph=True,
                   log_level="error")


def _generate(model_path: str, backend: str) -> list[dict]:
    import sglang

    engine = sglang.Engine(model_path=model_path, attention_backend=backend, **ENGINE_ARGS)
    try:
        backend_in_use = engine.get_server_info()["attention_backend"]
        assert backend_in_use == backend, f"engine runs {backend_in_use}, asked for {backend}"
        return engine.generate(input_ids=PROMPTS, sampling_params=SAMPLING, return_logprob=True)
    finally:
        engine.shutdown()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    return str(write_tiny_llama(tmp_path_factory.mktemp("tiny_llama")))


@pytest.fixture(scope="module")
def torch_native_outputs(model_path) -> list[dict]:
    return _generate(model_path, "torch_native")


def _logprobs(out: dict) -> list[float]:
    return [entry[0] for entry in out["meta_info"]["output_token_logprobs"]]


def test_engine_matches_torch_native(model_path, torch_native_outputs):
    ours = _generate(model_path, "anyattn")
    for mine, theirs in zip(ours, torch_native_outputs):
        assert mine["output_ids"] == theirs["output_ids"]
        assert _logprobs(mine) == pytest.approx(_logprobs(theirs), abs=1e-4)


def test_launch_server_generate_and_openai_completions(model_path, torch_native_outputs,
                                                       tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    tokenizer = write_tokenizer(tmp_path / "tokenizer", CONFIG["vocab_size"])
    settings = dict(device="cpu", dtype="float32", random_seed=0, mem_fraction_static=0.3,
                    disable_cuda_graph=True)
    cmd = server_cmd(model_path, tokenizer, "anyattn", settings, port)
    with running_server(cmd, tmp_path / "server.log", f"{base}/health") as server:
        assert server_backends(base)["attention_backend"] == "anyattn"
        for prompt, expected in zip(PROMPTS, torch_native_outputs):
            answer = post_json(f"{base}/generate",
                               {"input_ids": prompt, "sampling_params": SAMPLING})
            assert answer["output_ids"] == expected["output_ids"]
        for i, (prompt, expected) in enumerate(zip(PROMPTS, torch_native_outputs)):
            answer = complete(base, model_path, prompt, SAMPLING["max_new_tokens"],
                              as_text=i % 2 == 1)
            assert answer["prompt_token_ids"] == prompt
            assert answer["tokens"] == expected["output_ids"]
    assert server.returncode is not None
