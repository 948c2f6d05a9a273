"""anyattn's SGLang adapter: ``--attention-backend anyattn`` (see register.py)."""
from .register import NAME, register

__all__ = ["NAME", "register"]
