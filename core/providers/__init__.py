"""Kernel providers behind one interface (:mod:`.base`), chosen through :mod:`.registry`.

A new provider is a module here with one :class:`~.base.Provider` instance, added to
``registry.PROVIDERS`` in preference order.
"""
from .base import Call, Provider, Workload
from .fa3 import FA3
from .fa4 import FA4
from .registry import PROVIDERS, describe, requested, select
from .triton import TRITON

__all__ = ["Call", "Provider", "Workload", "FA3", "FA4", "TRITON", "PROVIDERS", "describe",
           "requested", "select"]
