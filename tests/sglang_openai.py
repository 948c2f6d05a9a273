"""SGLang's OpenAI server against ``sglang.Engine`` with the same settings, greedy.

Shared by ``tests/gpu/test_sglang_server.py`` (the H200, bf16, CUDA graphs) and
``tests/sglang/test_sglang_engine.py`` (the CPU). One settings dict (``sglang.Engine`` keywords)
makes both the engine and the ``python -m sglang.launch_server`` command line (``as_flags``),
so the two run the same configuration. The model directory holds weights only; the
tokenizer is a word-level one of ``local_tokenizer`` in its own directory
(``--tokenizer-path``), so the server runs with its tokenizer and detokenizer as in
production and ``/v1/completions`` takes text as well as token ids.

Prompts go one request at a time (a batch of one, as the engine runs them here), each with
a different first token, so no prompt finds another's prefix (or the warmup's / health
check's token 0) in the radix cache.

  python tests/sglang_openai.py SPEC.json OUT.json     (the engine side, in its own process)
"""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from local_server import free_port, post_json, running_server  # noqa: E402
from local_tokenizer import text_of  # noqa: E402


def as_flags(settings: dict) -> list[str]:
    """``sglang.Engine`` keywords as launch_server flags (True: a bare flag)."""
    flags = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is not False and value is not None:
            flags += [flag, str(value)]
    return flags


def engine_outputs(model: Path, tokenizer: Path, backend: str, settings: dict,
                   prompts: list[list[int]], max_tokens: int, out: Path, *,
                   env: dict | None = None, timeout: float = 600) -> list[dict]:
    """``sglang.Engine`` (tokenizer on) generating each prompt alone, in a subprocess."""
    spec = out.with_suffix(".spec.json")
    spec.write_text(json.dumps(dict(model=str(model), tokenizer=str(tokenizer), backend=backend,
                                    settings=settings, prompts=prompts, max_tokens=max_tokens)))
    done = subprocess.run([sys.executable, __file__, str(spec), str(out)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    out.with_suffix(".log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, f"engine run failed:\n{(done.stdout + done.stderr)[-4000:]}"
    return json.loads(out.read_text())


def get_json(url: str, timeout: float = 30) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def server_cmd(model: Path, tokenizer: Path, backend: str, settings: dict, port: int,
               *extra_flags: str) -> list[str]:
    return [sys.executable, "-m", "sglang.launch_server", "--model-path", str(model),
            "--tokenizer-path", str(tokenizer), "--attention-backend", backend,
            "--host", "127.0.0.1", "--port", str(port), "--enable-cache-report",
            *as_flags(settings), *extra_flags]


def server_backends(base: str) -> dict:
    """The server's settings as it reports them (``/server_info``)."""
    info = get_json(f"{base}/server_info")
    return {k: info.get(k) for k in (
        "attention_backend", "prefill_attention_backend", "decode_attention_backend",
        "dtype", "device", "chunked_prefill_size", "disable_cuda_graph", "version")}


def complete(base: str, model: Path, ids: list[int], max_tokens: int, *,
             as_text: bool = False) -> dict:
    """One greedy ``/v1/completions`` of ``ids`` (as text: ``local_tokenizer.text_of``)."""
    reply = post_json(f"{base}/v1/completions", {
        "model": str(model), "prompt": text_of(ids) if as_text else ids,
        "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True,
        "return_token_ids": True, "logprobs": 2}, timeout=300)
    choice = reply["choices"][0]
    details = (reply.get("usage") or {}).get("prompt_tokens_details") or {}
    return dict(as_text=as_text, tokens=choice["token_ids"],
                prompt_token_ids=choice.get("prompt_token_ids"), text=choice["text"],
                logprobs=(choice.get("logprobs") or {}).get("token_logprobs"),
                finish_reason=choice["finish_reason"], cached_tokens=details.get("cached_tokens"))


def server_outputs(model: Path, tokenizer: Path, backend: str, settings: dict,
                   prompts: list[list[int]], max_tokens: int, log: Path, *,
                   text_prompts: tuple[int, ...] = (), env: dict | None = None,
                   startup_s: float = 300, extra_flags: tuple[str, ...] = ()) -> dict:
    """``python -m sglang.launch_server`` on loopback: one ``/v1/completions`` per prompt.

    Prompts whose index is in ``text_prompts`` are sent as text, the others as token ids.
    Returns the server's settings as it reports them and, per prompt, the completion's token
    ids, prompt token ids, text and logprobs.
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = server_cmd(model, tokenizer, backend, settings, port, *extra_flags)
    result: dict = dict(cmd=cmd)
    with running_server(cmd, log, f"{base}/health", env=env, startup_s=startup_s):
        result["server_info"] = server_backends(base)
        result["completions"] = [complete(base, model, ids, max_tokens, as_text=i in text_prompts)
                                 for i, ids in enumerate(prompts)]
    return result


def compare(server: dict, engine: list[dict], prompts: list[list[int]]) -> dict:
    """Per prompt: equal tokens / text / prompt ids; where tokens differ, the first position
    and the engine's top-2 logprob gap there (a near-tie or not)."""
    rows = []
    for i, (s, e, ids) in enumerate(zip(server["completions"], engine, prompts)):
        first = next((j for j, (a, b) in enumerate(zip(s["tokens"], e["tokens"])) if a != b),
                     None if len(s["tokens"]) == len(e["tokens"]) else
                     min(len(s["tokens"]), len(e["tokens"])))
        row = dict(prompt=i, prompt_len=len(ids), as_text=s["as_text"],
                   tokens_equal=first is None, text_equal=s["text"] == e["text"],
                   prompt_ids_equal=s["prompt_token_ids"] == ids,
                   server_cached_tokens=s["cached_tokens"], engine_cached_tokens=e["cached_tokens"])
        if s["logprobs"] and first is None:
            row["logprob_max_diff"] = max(abs(a - b) for a, b in zip(s["logprobs"], e["logprobs"]))
        if first is not None:
            top2 = e["top2"][first] if first < len(e["top2"]) else []
            row.update(first_diff=first, server=s["tokens"], engine=e["tokens"],
                       engine_top2_gap=top2[0] - top2[1] if len(top2) > 1 else None)
        rows.append(row)
    ok = all(r["tokens_equal"] and r["text_equal"] and r["prompt_ids_equal"] for r in rows)
    return dict(ok=ok, prompts=rows)


def _engine_main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    import sglang

    engine = sglang.Engine(model_path=spec["model"], tokenizer_path=spec["tokenizer"],
                           attention_backend=spec["backend"], log_level="warning",
                           **spec["settings"])
    rows = []
    try:
        backend = engine.get_server_info()["attention_backend"]
        assert backend == spec["backend"], f"engine runs {backend}, asked for {spec['backend']}"
        for ids in spec["prompts"]:
            out = engine.generate(input_ids=ids, sampling_params={
                "temperature": 0.0, "max_new_tokens": spec["max_tokens"], "ignore_eos": True},
                return_logprob=True, top_logprobs_num=2)
            meta = out["meta_info"]
            rows.append(dict(
                tokens=list(out["output_ids"]), text=out["text"],
                logprobs=[lp for lp, _, _ in meta["output_token_logprobs"]],
                top2=[sorted((lp for lp, _, _ in step), reverse=True)[:2]
                      for step in meta["output_top_logprobs"]],
                cached_tokens=meta.get("cached_tokens")))
    finally:
        engine.shutdown()
    Path(out_path).write_text(json.dumps(rows))


if __name__ == "__main__":
    _engine_main(*sys.argv[1:3])
