"""Import stub: SGLang's CPU engine imports sgl_kernel's CPU ops at module level.

No CPU kernel of sgl_kernel runs for the dense Llama and attention backends these tests use;
any attribute is a function that raises if it is ever called.
"""


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)

    def unavailable(*args, **kwargs):
        raise RuntimeError(f"sgl_kernel stub: {name} is not available in the test environment")

    unavailable.__name__ = name
    return unavailable
