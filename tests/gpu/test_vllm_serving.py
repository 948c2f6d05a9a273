"""vLLM serving through anyattn on the GPU, against vLLM's FLASH_ATTN (FA3) and TRITON_ATTN.

Drives ci/gpu/serve_all.py (three tiny random models x three backends with torch.compile and
CUDA graphs, ngram speculative decoding, the OpenAI API server) and asserts its verdict;
ci/gpu/compare.py says how runs are compared. Needs vLLM on the GPU (on the lent H200 the
carried 0.26 site on PYTHONPATH); skipped with that reason otherwise. Results (JSON per run,
logs, summary.json) go to $ANYATTN_SERVING_OUT, else a temporary directory.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (carry the 0.26 site)")

ROOT = Path(__file__).resolve().parents[2]


def test_vllm_serving_matches_flash_attn(tmp_path):
    out = Path(os.environ.get("ANYATTN_SERVING_OUT", tmp_path))
    from anyattn.vllm_plugin import selected_name  # ANYATTN on vLLM 0.32+, CUSTOM on 0.26

    res = subprocess.run([sys.executable, str(ROOT / "ci/gpu/serve_all.py"), str(out),
                          "--backend", selected_name()], capture_output=True, text=True,
                         timeout=900)
    summary_path = out / "summary.json"
    assert summary_path.exists(), (res.stdout + res.stderr)[-4000:]
    summary = json.loads(summary_path.read_text())
    assert summary["ok"], json.dumps(summary, indent=1)[-6000:]

