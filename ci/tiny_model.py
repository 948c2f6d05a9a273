"""Tiny random-weight models saved locally, so engine tests and the demo need no model hub.

The Llama: hidden 128, 2 layers, 4 query / 2 kv heads (GQA), head_dim 32, vocab 256: small
enough that a vLLM engine on two CPU cores starts in seconds, big enough that a wrong
attention output changes the greedy tokens. The Falcon has the same sizes with ALiBi instead
of rotary positions (Falcon-RW's position scheme; vLLM's Falcon passes the ALiBi paper's
slopes times 1/sqrt(head_dim) to the attention backend) and, with Falcon-40B's decoder
layout, GQA.
Prompts are token ids (no tokenizer is written).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

VOCAB = 256
CONFIG = dict(
    vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
    rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
    bos_token_id=1, eos_token_id=2,
)


FALCON_CONFIG = dict(
    vocab_size=VOCAB, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_kv_heads=2, new_decoder_architecture=True, alibi=True, bias=False,
    layer_norm_epsilon=1e-5, max_position_embeddings=1024, tie_word_embeddings=False,
    bos_token_id=1, eos_token_id=2,
)


def make_tiny_llama(path: str | Path, seed: int = 0) -> Path:
    """Write config.json + model.safetensors to ``path`` (kept if already there)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return _save(path, LlamaConfig, LlamaForCausalLM, CONFIG, seed)


def make_tiny_falcon(path: str | Path, seed: int = 0) -> Path:
    """The ALiBi model (GQA 4/2), like :func:`make_tiny_llama`."""
    from transformers import FalconConfig, FalconForCausalLM

    return _save(path, FalconConfig, FalconForCausalLM, FALCON_CONFIG, seed)


def _save(path: str | Path, config_cls, model_cls, fields: dict, seed: int) -> Path:
    import torch

    path = Path(path)
    marker = path / "anyattn_tiny.json"
    if marker.exists() and json.loads(marker.read_text()) == {"seed": seed, **fields}:
        return path
    torch.manual_seed(seed)
    config = config_cls(**fields, torch_dtype="float32")
    model = model_cls(config).eval()
    # The default init (std 0.02) makes every logit nearly equal, so greedy decoding would
    # hinge on rounding noise; larger weights give clear winners and a meaningful comparison.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.08)
    model.save_pretrained(path, safe_serialization=True)
    marker.write_text(json.dumps({"seed": seed, **fields}))
    return path


def make_prompts(n: int, min_len: int = 1, max_len: int = 300, seed: int = 0,
                 shared_prefix: int = 0) -> list[list[int]]:
    """``n`` token-id prompts with lengths spread over [min_len, max_len].

    The first ``shared_prefix`` tokens are the same in every prompt long enough to hold
    them, so prefix caching gets hits.
    """
    import random

    rng = random.Random(seed)
    prefix = [rng.randrange(3, VOCAB) for _ in range(shared_prefix)]
    lengths = [min_len + (max_len - min_len) * i // max(1, n - 1) for i in range(n)]
    rng.shuffle(lengths)
    prompts = []
    for length in lengths:
        head = prefix[:length] if length > shared_prefix else []
        prompts.append(head + [rng.randrange(3, VOCAB) for _ in range(length - len(head))])
    return prompts


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path")
    print(make_tiny_llama(parser.parse_args().path))
