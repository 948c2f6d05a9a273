"""Registration through the ``sglang.srt.plugins`` entry point (loaded by conftest)."""
from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness import Spec
from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
from sglang.srt.model_executor.forward_batch_info import ForwardMode
from sglang.srt.server_args import ServerArgs
from sglang.srt.speculative.draft_utils import DraftBackendFactory
from tiny_llama import write_tiny_llama

from anyattn.sglang_backend import compat
from anyattn.sglang_backend.backend import AnyAttnBackend
from anyattn.sglang_backend.draft import AnyAttnMultiStepDraftBackend


def test_name_is_a_backend_choice_and_registered():
    assert "anyattn" in compat.choices.ATTENTION_BACKEND_CHOICES
    # 0.5.17 leaves --speculative-draft-attention-backend free-form (no list to join).
    assert compat.HAS_DRAFT_CHOICES == hasattr(compat.choices, "DRAFT_ATTENTION_BACKEND_CHOICES")
    if compat.HAS_DRAFT_CHOICES:
        assert "anyattn" in compat.choices.DRAFT_ATTENTION_BACKEND_CHOICES
    assert "anyattn" in ATTENTION_BACKENDS


def _draft_factory(runner, **kw) -> DraftBackendFactory:
    """0.5.23 reads the configured backends from the runtime context; 0.5.17's factory takes
    the server args first and reads them there."""
    if "server_args" not in inspect.signature(DraftBackendFactory).parameters:
        return DraftBackendFactory(runner, **kw)
    args = SimpleNamespace(attention_backend="anyattn", prefill_attention_backend=None,
                           decode_attention_backend=None,
                           speculative_draft_attention_backend=None)
    return DraftBackendFactory(args, runner, **kw)


def test_eagle_draft_backends_come_from_anyattn(scenario_factory):
    s = scenario_factory(mode=ForwardMode.DECODE, prefix_lens=(4,), new_lens=(1,),
                         configured_backend="anyattn",
                         spec=Spec(topk=2, num_draft_tokens=4, num_steps=3))
    factory = _draft_factory(s.runner, topk=2, speculative_num_steps=3)
    decode = factory.create_decode_backend()
    assert isinstance(decode, AnyAttnMultiStepDraftBackend)
    assert [b.planner.engine.step_id for b in decode.attn_backends] == [0, 1]
    assert isinstance(factory.create_draft_extend_backend(), AnyAttnBackend)


@pytest.mark.parametrize("backend,accepted", [("anyattn", True), ("torch_native", False)])
def test_topk_tree_with_pages_is_allowed_for_anyattn_only(tmp_path: Path, backend, accepted):
    model = str(write_tiny_llama(tmp_path / "m"))

    def make() -> ServerArgs:
        args = ServerArgs(
            model_path=model, device="cpu", attention_backend=backend, skip_tokenizer_init=True,
            speculative_algorithm="EAGLE", speculative_draft_model_path=model,
            speculative_eagle_topk=2, speculative_num_steps=2, speculative_num_draft_tokens=4,
            page_size=16)
        if hasattr(args, "resolve_once"):  # 0.5.23; 0.5.17 resolves in __post_init__
            args.resolve_once()  # runs the speculative handlers, where the check lives
        return args

    if accepted:
        assert make().speculative_eagle_topk == 2
    else:
        with pytest.raises(ValueError, match="page_size > 1 is only supported"):
            make()
