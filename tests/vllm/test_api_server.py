"""``python -m vllm.entrypoints.openai.api_server --attention-backend anyattn`` on loopback."""
from __future__ import annotations

import os
import sys

from conftest import MAX_TOKENS, PROMPTS
from local_server import free_port, post_json, running_server


def test_api_server_completion_matches_cpu_attn(tiny_model, cpu_attn_generation, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_model,
           "--attention-backend", "anyattn", "--host", "127.0.0.1", "--port", str(port),
           "--skip-tokenizer-init", "--dtype", "float32", "--max-model-len", "1024",
           "--block-size", "32", "--enforce-eager"]
    log = tmp_path / "api_server.log"
    with running_server(cmd, log, f"{base}/health", env=dict(os.environ, ANYATTN_IMPL="reference"),
                        startup_s=180):
        reply = post_json(f"{base}/v1/completions", {
            "model": tiny_model, "prompt": PROMPTS[0], "max_tokens": MAX_TOKENS,
            "temperature": 0.0, "ignore_eos": True, "return_token_ids": True})
        assert reply["choices"][0]["token_ids"] == cpu_attn_generation.tokens[0]
    # Equal tokens alone would not show which backend ran: the worker logs its choice.
    assert "Using AttentionBackendEnum.ANYATTN backend." in log.read_text()
