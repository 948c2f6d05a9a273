"""Small plan builders: uniform query offsets and token-table rows."""
from __future__ import annotations

import pytest
import torch

from anyattn.core import page_table_from_token_table, token_table_rows, uniform_cu_seqlens


def test_uniform_cu_seqlens():
    assert uniform_cu_seqlens(3, 4, "cpu").tolist() == [0, 4, 8, 12]
    assert uniform_cu_seqlens(0, 1, "cpu").tolist() == [0]
    with pytest.raises(ValueError, match="per_seq"):
        uniform_cu_seqlens(2, 0, "cpu")


def test_token_table_rows_with_offsets_and_clamped_tail():
    table = torch.arange(40).view(4, 10)  # request r, position p -> slot 10 r + p
    rows = torch.tensor([2, 0])
    assert token_table_rows(table, rows, 3).tolist() == [[20, 21, 22], [0, 1, 2]]
    got = token_table_rows(table, rows, 4, offset=torch.tensor([8, 1]))
    assert got.tolist() == [[28, 29, 29, 29], [1, 2, 3, 4]]
    assert token_table_rows(table, rows, 12)[:, -1].tolist() == [29, 9]


def test_page_ids_from_token_rows():
    slots = torch.tensor([[48, 49, 50, 51, 16, 17, 18, 19]])  # pages 12 and 4 of size 4
    assert page_table_from_token_table(slots, 4).tolist() == [[12, 4]]
