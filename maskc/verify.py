"""Check that a plan reproduces a mask bit for bit (in the original token order), one tile row at a time."""

from __future__ import annotations

from typing import Any

import numpy as np

from maskc.inputs import open_mask
from maskc.runtime.format import Plan, bitmap_bits, mask_rows


def first_difference(plan: Plan, mask: Any) -> str | None:
    """None when ``plan`` stands for exactly ``mask``; otherwise where the first difference is."""
    source = open_mask(mask)
    if source.shape != (plan.batch, plan.heads, plan.q_len, plan.kv_len):
        return f"mask shape {list(source.shape)} differs from the plan's {[plan.batch, plan.heads, plan.q_len, plan.kv_len]}"
    bits = bitmap_bits(plan)
    for s in range(plan.slices):
        b, h = divmod(s, plan.heads)
        for m in range(plan.tiles_m):
            start = m * plan.block_m
            stop = min(start + plan.block_m, plan.q_len)
            expected = source.rows(b, h, start, stop)
            got = mask_rows(plan, s, start, stop, bits)
            if not np.array_equal(expected, got):
                i, j = map(int, np.argwhere(expected != got)[0])
                return f"batch {b}, head {h}, query {start + i}, key {j}: mask has {bool(expected[i, j])}, plan has {bool(got[i, j])}"
    return None
