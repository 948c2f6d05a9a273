"""Compare greedy runs of different attention backends on the same model (serve_one.py JSON).

Exact token equality across kernels is not guaranteed in bf16: the kernels sum in different
orders, and a random model's next-token distribution has near-ties. So a run is compared with
the reference run (FLASH_ATTN, i.e. FA3) in two ways, with one tolerance ``tol`` (nats):

- prompt logprobs: the largest |difference| over every prompt token must be <= ``tol``;
- generated tokens: identical up to the first position where they differ, and that position
  must be a near-tie in the reference (its top-2 logprobs within ``tol``). After it the
  sequences are not comparable and are not compared.

``tol`` is calibrated per model from vLLM's own second kernel: twice TRITON_ATTN's largest
prompt-logprob difference from FLASH_ATTN, and at least 0.125 nats (two bf16 rounding steps
of a logit of magnitude 16). So anyattn passes when it
is as close to FA3 as vLLM's Triton backend is, give or take a factor of two.
"""
from __future__ import annotations

MIN_TOL = 0.125  # two bf16 steps of a logit near 16


def prompt_logprob_diff(a: dict, ref: dict) -> tuple[float, float]:
    """(max, mean) |logprob difference| over all prompt tokens."""
    diffs = [abs(x - y) for pa, pr in zip(a["prompt_logprobs"], ref["prompt_logprobs"])
             for x, y in zip(pa, pr) if x is not None and y is not None]
    return (max(diffs), sum(diffs) / len(diffs)) if diffs else (0.0, 0.0)


def token_agreement(a: dict, ref: dict, tol: float) -> dict:
    """Per prompt: identical, diverged at a reference near-tie, or diverged otherwise."""
    same = tie = bad = 0
    compared = 0
    details = []
    for i, (ta, tr, top2) in enumerate(zip(a["tokens"], ref["tokens"], ref["top2"])):
        first = next((j for j, (x, y) in enumerate(zip(ta, tr)) if x != y), None)
        compared += len(tr) if first is None else first + 1
        if first is None:
            same += 1
            continue
        gap = top2[first][0] - top2[first][1] if len(top2[first]) > 1 else float("inf")
        if gap <= tol:
            tie += 1
        else:
            bad += 1
            details.append(dict(prompt=i, position=first, ref_top2_gap=round(gap, 4)))
    return dict(identical=same, diverged_at_tie=tie, diverged=bad, tokens_compared=compared,
                failures=details)


def compare_model(runs: dict[str, dict], ours: str, reference: str = "FLASH_ATTN",
                  peer: str = "TRITON_ATTN") -> dict:
    """``runs`` maps backend name -> serve_one result for one model."""
    ref = runs[reference]
    out: dict = {"reference": reference}
    with_prompts = all("prompt_logprobs" in r for r in runs.values())
    peer_max = prompt_logprob_diff(runs[peer], ref)[0] if with_prompts else 0.0
    tol = max(MIN_TOL, 2 * peer_max)
    out["tol"] = round(tol, 4)
    ok = True
    for name in (ours, peer):
        if name not in runs:
            continue
        row: dict = {}
        if with_prompts:
            mx, mean = prompt_logprob_diff(runs[name], ref)
            row.update(prompt_logprob_max_diff=round(mx, 4), prompt_logprob_mean_diff=round(mean, 5))
            if name == ours:
                ok &= mx <= tol
        row.update(token_agreement(runs[name], ref, tol))
        if name == ours:
            ok &= row["diverged"] == 0
        out[name] = row
    out["ok"] = bool(ok)
    return out
