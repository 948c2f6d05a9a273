"""Random-weight models for the GPU serving runs, written locally (no model hub).

``tiny`` models carry real random weights (std 0.05, so greedy tokens have clear winners) and
exercise one attention shape each; ``llama8b`` is a Llama-3-8B-shaped config for throughput,
loaded with vLLM's ``load_format="dummy"`` (no weight file).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

VOCAB = 2048
COMMON = dict(vocab_size=VOCAB, max_position_embeddings=8192, rms_norm_eps=1e-5,
              rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
TINY = {
    # GQA 4 at head dim 128 (the Llama-3 attention shape).
    "llama_gqa_d128": ("llama", dict(hidden_size=1024, intermediate_size=2048,
                                     num_hidden_layers=4, num_attention_heads=8,
                                     num_key_value_heads=2, head_dim=128)),
    # MQA (one kv head) at head dim 64.
    "llama_mqa_d64": ("llama", dict(hidden_size=512, intermediate_size=1024,
                                    num_hidden_layers=4, num_attention_heads=8,
                                    num_key_value_heads=1, head_dim=64)),
    # Gemma-2-like: sliding-window layers alternating with global ones, logit soft-cap
    # (vLLM's Gemma2 ties the output embedding to the input one).
    "gemma2_swa_softcap": ("gemma2", dict(tie_word_embeddings=True, hidden_size=512,
                                          intermediate_size=1024,
                                          num_hidden_layers=4, num_attention_heads=4,
                                          num_key_value_heads=2, head_dim=256,
                                          sliding_window=256, attn_logit_softcapping=50.0,
                                          final_logit_softcapping=30.0,
                                          query_pre_attn_scalar=256)),
    # For ngram speculation: a 64-token vocabulary, so the last token almost always occurs
    # earlier in a long context and every request has drafts (uniform verify batches).
    "llama_gqa_d128_vocab64": ("llama", dict(vocab_size=64, hidden_size=1024,
                                             intermediate_size=2048, num_hidden_layers=4,
                                             num_attention_heads=8, num_key_value_heads=2,
                                             head_dim=128)),
}
SPEC_MODEL = "llama_gqa_d128_vocab64"
LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128, vocab_size=128256,
                max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0,
                tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                architectures=["LlamaForCausalLM"], model_type="llama", torch_dtype="bfloat16")


def make_tiny(name: str, root: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kind, shape = TINY[name]
    path = root / name
    if (path / "config.json").exists():
        return path
    config = AutoConfig.for_model(kind, **{**COMMON, **shape})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.05)
    model.to(torch.bfloat16).save_pretrained(path, safe_serialization=True)
    conf = json.loads((path / "config.json").read_text())
    conf["torch_dtype"] = conf["dtype"] = "bfloat16"
    if "hidden_activation" in conf:
        # SGLang 0.5.17's Gemma-2 reads the older name (transformers 5 writes only the new one).
        conf.setdefault("hidden_act", conf["hidden_activation"])
    (path / "config.json").write_text(json.dumps(conf, indent=1))
    return path


def make_eagle_draft(target: Path, root: Path, seed: int = 1) -> Path:
    """A one-layer EAGLE draft (SGLang's ``LlamaForCausalLMEagle``) for ``target``, random
    weights as ``make_tiny``'s, under the names SGLang's loader reads (no ``model.`` prefix,
    the ``fc`` that joins the target's hidden state with the token embedding)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    path = root / f"{target.name}_eagle"
    if (path / "config.json").exists():
        return path
    conf = json.loads((target / "config.json").read_text())
    conf.update(num_hidden_layers=1, architectures=["LlamaForCausalLMEagle"])
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **{
        k: v for k, v in conf.items() if k not in ("architectures", "model_type")}))
    hidden = conf["hidden_size"]
    weights = {name.removeprefix("model."): p.detach() for name, p in model.state_dict().items()
               if name != "model.norm.weight"}
    weights["fc.weight"] = torch.empty(hidden, 2 * hidden)
    weights["fc.bias"] = torch.zeros(hidden)
    for name, w in weights.items():
        if w.dim() > 1:
            w.normal_(0.0, 0.05)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in weights.items()},
              str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(conf, indent=1))
    return path


def make_llama8b(root: Path, num_layers: int) -> Path:
    path = root / f"llama8b_{num_layers}l"
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({**LLAMA_8B, "num_hidden_layers": num_layers}))
    return path


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("root", type=Path)
    args = ap.parse_args()
    for name in TINY:
        print(make_tiny(name, args.root))
