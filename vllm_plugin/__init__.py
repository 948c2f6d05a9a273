"""vLLM adapter: ``--attention-backend anyattn`` (vLLM upper-cases it to ``ANYATTN``).

``register`` is the ``vllm.general_plugins`` entry point. vLLM runs it in the API process,
the engine core and every worker, so it is idempotent and imports nothing heavy.
"""
from __future__ import annotations

BACKEND_NAME = "ANYATTN"
BACKEND_PATH = "anyattn.vllm_plugin.backend.AnyAttnBackend"

__all__ = ["BACKEND_NAME", "BACKEND_PATH", "register", "backend_enum_member"]


def register() -> None:
    """Add ``ANYATTN`` to vLLM's ``AttentionBackendEnum`` (once per process)."""
    backend_enum_member()


def backend_enum_member():
    """The ``AttentionBackendEnum.ANYATTN`` member, registering it first if needed.

    Why the pickling hook: vLLM ships its config to the engine core and the workers by
    pickle, and an Enum member pickles as ``AttentionBackendEnum(value)``. A spawned process
    unpickles that before it loads plugins, when no member has our value yet, so the lookup
    fails. Our member instead pickles as a call to this function, which imports anyattn and
    registers the member on the receiving side; nothing else about the enum changes.
    """
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    member = AttentionBackendEnum.__members__.get(BACKEND_NAME)
    if member is None:
        register_backend(BACKEND_NAME, BACKEND_PATH)
        member = AttentionBackendEnum[BACKEND_NAME]
        member.__reduce_ex__ = _reduce_member
    return member


def _reduce_member(protocol: int):
    return backend_enum_member, ()
