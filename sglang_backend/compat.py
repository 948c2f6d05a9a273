"""What differs between the SGLang releases the adapter supports (0.5.17 through 0.5.23), in one place.

Each difference is detected by feature, not by version number:

- Backend choice lists. 0.5.23 keeps them in ``sglang.srt.arg_groups.choices`` (with a
  separate list for ``--speculative-draft-attention-backend``); 0.5.17 keeps them in
  ``sglang.srt.server_args`` and leaves the draft backend's flag free-form.
- KV write locations. 0.5.23's pools take a ``KVWriteLoc`` built by ``KVWriteLoc.for_layer``
  (it carries the batch's physical mark, which its unified pool checks); 0.5.17's pools take a
  bare slot tensor (or a ``KVWriteLoc``, which they unwrap) and have no ``for_layer``.
- EAGLE's ``DraftBackendFactory._create_backend``. In 0.5.23 each entry of its name map returns
  ``(stamp, backend)`` and the multi-step container is flagged ``stamps_children=True``; in
  0.5.17 an entry returns the backend and the call has no such flag, so the multi-step call is
  told apart by its map (the one holding ``_create_triton_decode_backend``).
"""
from __future__ import annotations

import inspect
from typing import Callable

from sglang.srt.mem_cache.memory_pool import KVWriteLoc

try:
    from sglang.srt.arg_groups import choices
    HAS_DRAFT_CHOICES = True
except ImportError:  # SGLang 0.5.17
    from sglang.srt import server_args as choices
    HAS_DRAFT_CHOICES = False


def add_backend_choice(name: str) -> None:
    """Make ``name`` a valid ``--attention-backend`` (and draft backend, where listed) value."""
    if name not in choices.ATTENTION_BACKEND_CHOICES:
        choices.add_attention_backend_choices([name])
    if HAS_DRAFT_CHOICES and name not in choices.DRAFT_ATTENTION_BACKEND_CHOICES:
        choices.add_draft_attention_backend_choices([name])


def write_loc(forward_batch, layer):
    """Where ``layer`` writes this step's K/V: the batch's slots, or the encoder's for a
    cross-attention layer, in the form the release's ``set_kv_buffer`` takes."""
    if hasattr(KVWriteLoc, "for_layer"):
        return KVWriteLoc.for_layer(forward_batch, layer)
    if layer.is_cross_attention:
        return forward_batch.encoder_out_cache_loc
    return forward_batch.out_cache_loc


def draft_backend_hook(name: str, make_extend: Callable, make_multi_step: Callable) -> Callable:
    """An AROUND hook for ``DraftBackendFactory._create_backend`` that adds ``name`` to its map.

    ``make_extend(factory)`` builds the draft-extend backend, ``make_multi_step(factory)`` the
    multi-step draft-decode container.
    """
    def hook(original, factory, backend_name, backend_map, error_template, **kwargs):
        if "stamps_children" in inspect.signature(original).parameters:  # 0.5.23
            make = make_multi_step if kwargs.get("stamps_children") else make_extend
            entry = lambda: (name, make(factory))  # noqa: E731
        else:  # 0.5.17
            triton = getattr(backend_map.get("triton"), "__name__", "")
            make = make_multi_step if triton == "_create_triton_decode_backend" else make_extend
            entry = lambda: make(factory)  # noqa: E731
        return original(factory, backend_name, {**backend_map, name: entry}, error_template,
                        **kwargs)
    return hook
