"""Import stubs for packages SGLang imports at module level but these tests never use.

A stub package calls :func:`install_submodule_finder` with its name and takes
:func:`module_getattr` as its ``__getattr__``: every submodule exists on import, and every
attribute is a placeholder that raises only when called.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types


class _Unavailable:
    def __init__(self, name: str) -> None:
        self._name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"import stub: {self._name} is not available in the test environment")

    def __getattr__(self, item: str) -> "_Unavailable":
        if item.startswith("__"):
            raise AttributeError(item)
        return _Unavailable(f"{self._name}.{item}")

    def __mro_entries__(self, bases):
        return (object,)


def module_getattr(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Unavailable(name)


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, root: str) -> None:
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(self.root + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = module_getattr
        return module

    def exec_module(self, module) -> None:
        pass


def install_submodule_finder(root: str) -> None:
    if not any(isinstance(f, _StubFinder) and f.root == root for f in sys.meta_path):
        sys.meta_path.append(_StubFinder(root))
