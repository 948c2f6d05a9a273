"""A word-level tokenizer on disk, for server tests that need text (OpenAI endpoints); no hub.

The tiny random models carry no tokenizer, and engines started with ``skip_tokenizer_init``
cannot serve ``/v1/completions`` (its answer is built from the detokenized text). This one
maps the word ``w{i}`` to token id ``i`` (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2), splits on
whitespace, adds no special tokens, and decodes ids back to space-separated words, so a
test can write a prompt as text and know its token ids. Any other text (SGLang's warmup
sends "The capital city of France is") encodes as ``<unk>``.
"""
from __future__ import annotations

import json
from pathlib import Path

SPECIALS = ("<unk>", "<s>", "</s>")


def word(token_id: int) -> str:
    return SPECIALS[token_id] if token_id < len(SPECIALS) else f"w{token_id}"


def text_of(ids: list[int]) -> str:
    """The prompt text that encodes to ``ids`` (special tokens included, as their words)."""
    return " ".join(word(i) for i in ids)


def write_tokenizer(path: Path, vocab_size: int) -> Path:
    """Write ``tokenizer.json`` + ``tokenizer_config.json`` for ``vocab_size`` ids to ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    path = Path(path)
    if (path / "tokenizer.json").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordLevel({word(i): i for i in range(vocab_size)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tok.add_special_tokens(list(SPECIALS))
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>", "bos_token": "<s>",
        "eos_token": "</s>", "model_max_length": 1 << 20, "clean_up_tokenization_spaces": False,
        "add_bos_token": False, "add_eos_token": False}, indent=1))
    return path
