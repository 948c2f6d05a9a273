"""The oracles attention tests compare against: a dense float64 softmax (plain, nothing
clever) and ``core.attention`` forced onto the chunked reference path."""
from __future__ import annotations

import math
import os
from contextlib import contextmanager

import torch

from anyattn import core


@contextmanager
def on_reference_path():
    """Every ``anyattn.core`` call inside runs the chunked reference (the oracle for the kernels)."""
    os.environ["ANYATTN_IMPL"] = "reference"
    try:
        yield
    finally:
        del os.environ["ANYATTN_IMPL"]


def reference_path(*args, **kw):
    """``core.attention`` on the chunked reference path."""
    with on_reference_path():
        return core.attention(*args, **kw)


def dense_attention(q, k, v, *, scale, causal=True, window=(-1, -1), chunk=0, softcap=0.0,
                    sinks=None, mask=None, bias=None, image_ids=None, image_in_window=False,
                    alibi=None):
    """Naive float64 softmax attention of one sequence: q [Lq, Hq, D], k/v [Lk, Hk, D].

    ``mask`` (bool) / ``bias`` (float) are dense ``[Hq, Lq, Lk]``.
    ``image_ids`` ``[Lk]`` (int): the image each key position belongs to, -1 for text, as
    HF's Gemma-3 ``token_type_ids``; a query and a key of the same image see each other
    whatever their order (``image_in_window``: only keys no further back than the left
    window). ``alibi`` ``[Hq]``: slopes, ``-slope * |query position - key position|``.
    """
    lq, hq, _ = q.shape
    lk, hk, _ = k.shape
    g = hq // hk
    k = k.double().repeat_interleave(g, 1)
    v = v.double().repeat_interleave(g, 1)
    s = torch.einsum("qhd,khd->hqk", q.double(), k) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    qp = torch.arange(lq)[:, None] + (lk - lq)
    kp = torch.arange(lk)[None, :]
    ok = torch.ones(lq, lk, dtype=torch.bool)
    if causal:
        ok &= kp <= qp
    if window[0] >= 0:
        ok &= kp >= qp - window[0]
    if window[1] >= 0:
        ok &= kp <= qp + window[1]
    if chunk:
        ok &= (kp // chunk) == (qp // chunk)
    if image_ids is not None:
        ids = image_ids.long()
        same = (ids[qp] == ids[kp]) & (ids[kp] >= 0)
        if image_in_window and window[0] >= 0:
            same &= qp - kp <= window[0]
        ok |= same
    if alibi is not None:
        s = s - alibi.double()[:, None, None] * (qp - kp).abs().double()
    if bias is not None:
        s = s + bias.double()
    if mask is not None:
        ok = ok & mask
    s = s.masked_fill(~ok, -math.inf)
    if sinks is not None:
        s = torch.cat([s, sinks.double()[:, None, None].expand(hq, lq, 1)], -1)
        v = torch.cat([v, torch.zeros(1, hq, v.shape[-1], dtype=v.dtype)], 0)
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)
    return torch.einsum("hqk,khd->qhd", p, v), lse
