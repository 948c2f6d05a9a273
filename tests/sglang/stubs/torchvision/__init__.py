"""Import stub: SGLang's multimodal configs (and transformers' image processors) import
torchvision at module level.

The PyPI torchvision wheel does not load against the CPU torch used in these tests, and no
test here touches images (see ``_stub``).
"""
from _stub import install_submodule_finder, module_getattr as __getattr__  # noqa: F401

__version__ = "0.0.0+stub"
install_submodule_finder(__name__)
