"""vLLM adapter. ``--attention-backend anyattn`` on vLLM 0.32+ (vLLM upper-cases it to
``ANYATTN``); ``--attention-backend CUSTOM`` on vLLM 0.26, whose registry lets a plugin occupy
only that member (see compat.py).

``register`` is the ``vllm.general_plugins`` entry point. vLLM runs it in the API process,
the engine core and every worker, so it is idempotent and imports nothing heavy.
"""
from __future__ import annotations

BACKEND_NAME = "ANYATTN"
BACKEND_PATH = "anyattn.vllm_plugin.backend.AnyAttnBackend"

__all__ = ["BACKEND_NAME", "BACKEND_PATH", "register", "backend_enum_member", "selected_name"]


def register() -> None:
    """Add anyattn to vLLM's ``AttentionBackendEnum`` (once per process)."""
    backend_enum_member()


def selected_name() -> str:
    """The name users select and ``AnyAttnBackend.get_name()`` returns: ANYATTN, or CUSTOM."""
    from .compat import NAMED_BACKENDS

    return BACKEND_NAME if NAMED_BACKENDS else "CUSTOM"


def backend_enum_member():
    """The enum member that selects anyattn, registering it first if needed.

    Why the pickling hook (0.32+): vLLM ships its config to the engine core and the workers
    by pickle, and an Enum member pickles as ``AttentionBackendEnum(value)``. A spawned
    process unpickles that before it loads plugins, when no member has our value yet, so the
    lookup fails. Our member instead pickles as a call to this function, which imports
    anyattn and registers the member on the receiving side. ``CUSTOM`` (0.26) pickles as is.
    """
    from .compat import NAMED_BACKENDS, register as register_member

    member = register_member(BACKEND_NAME, BACKEND_PATH)
    if NAMED_BACKENDS:
        member.__reduce_ex__ = _reduce_member
    return member


def _reduce_member(protocol: int):
    return backend_enum_member, ()
