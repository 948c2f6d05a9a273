"""``python -m vllm.entrypoints.openai.api_server --attention-backend anyattn`` on loopback."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from conftest import MAX_TOKENS, PROMPTS

STARTUP_TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.load(resp)


def _wait_healthy(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        assert server.poll() is None, f"api_server exited early with code {server.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise TimeoutError(f"api_server not healthy after {STARTUP_TIMEOUT_S} s")


def test_api_server_completion_matches_cpu_attn(tiny_model, cpu_attn_generation, tmp_path):
    port = _free_port()
    log = open(tmp_path / "api_server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_model,
         "--attention-backend", "anyattn", "--host", "127.0.0.1", "--port", str(port),
         "--skip-tokenizer-init", "--dtype", "float32", "--max-model-len", "1024",
         "--block-size", "32", "--enforce-eager"],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, ANYATTN_IMPL="reference"),
        start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(f"{base}/health", server)
        prompt = PROMPTS[0]
        reply = _post(f"{base}/v1/completions", {
            "model": tiny_model, "prompt": prompt, "max_tokens": MAX_TOKENS,
            "temperature": 0.0, "ignore_eos": True, "return_token_ids": True})
        assert reply["choices"][0]["token_ids"] == cpu_attn_generation.tokens[0]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
    # Equal tokens alone would not show which backend ran: the worker logs its choice.
    assert "Using AttentionBackendEnum.ANYATTN backend." in (tmp_path / "api_server.log").read_text()
