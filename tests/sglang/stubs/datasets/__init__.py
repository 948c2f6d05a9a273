"""Import stub: ``sglang.test.test_utils`` (which SGLang's attention test kit imports for
its EAGLE draft runners) imports SGLang's benchmark datasets, which import Hugging Face
``datasets`` at module level. No test here loads a dataset (see ``_stub``)."""
from _stub import install_submodule_finder, module_getattr as __getattr__  # noqa: F401

install_submodule_finder(__name__)
