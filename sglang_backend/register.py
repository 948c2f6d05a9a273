"""Plug anyattn into SGLang through the ``sglang.srt.plugins`` entry point.

``register()`` runs in every SGLang process before argument parsing (launch_server, Engine,
scheduler subprocesses). It

- adds ``anyattn`` to the ``--attention-backend`` / ``--prefill-attention-backend`` /
  ``--decode-attention-backend`` and ``--speculative-draft-attention-backend`` choices and to
  the attention registry;
- hooks EAGLE's ``DraftBackendFactory`` (its name -> backend maps are hard-coded) so the
  draft-extend and multi-step draft-decode backends come from anyattn too;
- lets EAGLE topk > 1 with page_size > 1 through for anyattn, which SGLang allows only for a
  hard-coded list of backends (anyattn's cascade reads each branch's own pages).

SGLang logs plugin exceptions instead of raising them; a failure here shows up later as
"invalid choice: 'anyattn'", so read the log above that message.
"""
from __future__ import annotations

from sglang.srt.plugins.hook_registry import HookRegistry, HookType

NAME = "anyattn"
_PAGE_TREE_REFUSAL = "with page_size > 1 is only supported on"
_registered = False


def create_backend(model_runner):
    """The attention registry's factory for ``--attention-backend anyattn``."""
    from .backend import AnyAttnBackend

    return AnyAttnBackend(model_runner)


def _draft_extend_backend(factory):
    from .backend import AnyAttnBackend

    return AnyAttnBackend(factory.draft_model_runner)


def _multi_step_draft_backend(factory):
    from .draft import AnyAttnMultiStepDraftBackend

    return AnyAttnMultiStepDraftBackend(factory.draft_model_runner, factory.topk,
                                        factory.speculative_num_steps)


def _allow_page_tree(original, server_args, *args, **kwargs):
    """AROUND ``_handle_eagle_family``: drop its topk>1 + page_size>1 refusal for anyattn.

    That check is the last statement of the handler, so everything before it has run when
    its ValueError arrives here.
    """
    try:
        return original(server_args, *args, **kwargs)
    except ValueError as exc:
        from sglang.srt.arg_groups.overrides import resolved_view

        if _PAGE_TREE_REFUSAL in str(exc) and resolved_view(server_args).attention_backend == NAME:
            return None
        raise


def register() -> None:
    """Entry point of ``sglang.srt.plugins``; idempotent."""
    global _registered
    if _registered:
        return
    from sglang.srt.layers.attention.attention_registry import register_attention_backend

    from .compat import add_backend_choice, draft_backend_hook

    add_backend_choice(NAME)
    register_attention_backend(NAME)(create_backend)
    HookRegistry.register("sglang.srt.speculative.draft_utils.DraftBackendFactory._create_backend",
                          draft_backend_hook(NAME, _draft_extend_backend,
                                             _multi_step_draft_backend), HookType.AROUND)
    HookRegistry.register("sglang.srt.arg_groups.speculative_hook._handle_eagle_family",
                          _allow_page_tree, HookType.AROUND)
    _registered = True
