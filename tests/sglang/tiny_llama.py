"""A tiny random Llama checkpoint on disk; no downloads.

SGLang's ``load_format="dummy"`` fills weights uniformly in +-1e-3: every RMSNorm scale is
then ~1e-3 and attention has no visible effect on the output (a 5% error in the softmax scale
still gave identical tokens and log-probs to 1e-4). The engine tests therefore load random
weights scaled so that attention scores spread over a few units and logits vary.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "vocab_size": 256,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "float32",
}


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c = CONFIG
    hidden, inter, head_dim = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    q_out, kv_out = c["num_attention_heads"] * head_dim, c["num_key_value_heads"] * head_dim

    def normal(rows: int, cols: int, std: float) -> torch.Tensor:
        return torch.randn(rows, cols, generator=g) * std

    # q/k std 0.15: q.k / sqrt(head_dim) has a spread of about 0.15^2 * hidden ~ 3.
    w = {"model.embed_tokens.weight": normal(c["vocab_size"], hidden, 1.0),
         "model.norm.weight": torch.ones(hidden),
         "lm_head.weight": normal(c["vocab_size"], hidden, 0.2)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w.update({
            p + "self_attn.q_proj.weight": normal(q_out, hidden, 0.15),
            p + "self_attn.k_proj.weight": normal(kv_out, hidden, 0.15),
            p + "self_attn.v_proj.weight": normal(kv_out, hidden, hidden ** -0.5),
            p + "self_attn.o_proj.weight": normal(hidden, q_out, q_out ** -0.5),
            p + "mlp.gate_proj.weight": normal(inter, hidden, hidden ** -0.5),
            p + "mlp.up_proj.weight": normal(inter, hidden, hidden ** -0.5),
            p + "mlp.down_proj.weight": normal(hidden, inter, inter ** -0.5),
            p + "input_layernorm.weight": torch.ones(hidden),
            p + "post_attention_layernorm.weight": torch.ones(hidden),
        })
    return w


def write_tiny_llama(directory: Path) -> Path:
    """Config, generation config and ``model.safetensors`` (random, seeded) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(CONFIG, indent=1))
    (directory / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2}))
    save_file(_weights(), str(directory / "model.safetensors"))
    return directory
