"""Count SGLang's CUDA-graph replays in every SGLang process (``ci/gpu/sglang_serve_one.py``).

Python imports this at start-up when its folder is on PYTHONPATH. With ``ANYATTN_REPLAY_DIR``
set, it registers BEFORE hooks on the graph backends' ``replay`` (decode / verify / draft:
full graphs; 0.5.17's target prefill: breakable graphs); SGLang applies registered hooks when
it loads its plugins, in each of its processes. Each replay appends one byte to
``$ANYATTN_REPLAY_DIR/<kind>``.
"""
import os

_DIR = os.environ.get("ANYATTN_REPLAY_DIR")
_TARGETS = {
    "full": "sglang.srt.model_executor.runner_backend.full_cuda_graph_backend."
            "FullCudaGraphBackend.replay",
    "breakable": "sglang.srt.model_executor.runner_backend.breakable_cuda_graph_backend."
                 "BreakableCudaGraphBackend.replay",
}


def _counter(kind):
    path = os.path.join(_DIR, kind)

    def count(*args, **kwargs):
        with open(path, "ab") as f:
            f.write(b".")
    return count


if _DIR:
    try:
        from sglang.srt.plugins.hook_registry import HookRegistry, HookType
    except ImportError:  # not an SGLang process's environment
        HookRegistry = None
    if HookRegistry is not None:
        for _kind, _target in _TARGETS.items():
            HookRegistry.register(_target, _counter(_kind), HookType.BEFORE)
