"""Import stub: SGLang's CPU engine imports sgl_kernel's CPU ops at module level.

No CPU kernel of sgl_kernel runs for the dense Llama and attention backends these tests use:
every attribute and submodule is a placeholder that raises if it is ever called (see
``_stub``). The linear-attention (GDN) backends that SGLang's attention test kit imports
look two ops up in ``torch.ops.sgl_kernel`` at import; they are registered here as ops
that raise when called.
"""
import torch

from _stub import install_submodule_finder, module_getattr as __getattr__  # noqa: F401

install_submodule_finder(__name__)

_IMPORT_TIME_OPS = ("fused_sigmoid_gating_delta_rule_update_cpu", "fused_gdn_gating_cpu")
_library = torch.library.Library("sgl_kernel", "FRAGMENT")


def _unavailable_op(name: str):
    def op(*args, **kwargs):
        raise RuntimeError(f"sgl_kernel stub: torch.ops.sgl_kernel.{name} is not available "
                           "in the test environment")
    return op


for _name in _IMPORT_TIME_OPS:
    _library.define(f"{_name}(Tensor x) -> Tensor")
    _library.impl(_name, _unavailable_op(_name), "CompositeExplicitAutograd")
