"""The sequence gather of reordered plans: ``y[b, h, i] = x[b, h, index[i]]`` in one pass.

A reordered plan moves q, k, v into its token order and the output back (dO and the three
gradients in the backward): eight such gathers per training step, each a pure copy of
``B·H·N·D`` elements. ``torch.index_select`` along the sequence ran at about 1.3 TB/s on an H100
(``benchmarks/NOTES.md``); this kernel copies a block of whole rows per program with vector loads.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from maskc.runtime.kernels.common import MAX_GRID_Y, lastdim_contiguous

ROWS = 32  # rows per program


@triton.jit
def _gather_kernel(
    X, Y, index,
    stride_xb, stride_xh, stride_xn,
    stride_yb, stride_yh, stride_yn,
    H, N,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, ROWS: tl.constexpr,
):
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, D_PAD)
    row_ok = rows < N
    ok = row_ok[:, None] & (cols[None, :] < HEAD_DIM)
    source = tl.load(index + rows, mask=row_ok, other=0).to(tl.int64)  # the row of x each row of y copies
    x_head = X + b.to(tl.int64) * stride_xb + h.to(tl.int64) * stride_xh
    y_head = Y + b.to(tl.int64) * stride_yb + h.to(tl.int64) * stride_yh
    x = tl.load(x_head + source[:, None] * stride_xn + cols[None, :], mask=ok)
    tl.store(y_head + rows.to(tl.int64)[:, None] * stride_yn + cols[None, :], x, mask=ok)


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x.index_select(2, index)`` for ``x [B, H, N, D]`` and an int32 ``index`` on x's device."""
    B, H, _, D = x.shape
    n = index.numel()
    if B * H > MAX_GRID_Y or D > 256:
        return x.index_select(2, index)
    x = lastdim_contiguous(x)
    y = torch.empty((B, H, n, D), dtype=x.dtype, device=x.device)
    _gather_kernel[(triton.cdiv(n, ROWS), B * H)](
        x, y, index,
        x.stride(0), x.stride(1), x.stride(2),
        y.stride(0), y.stride(1), y.stride(2),
        H, n, HEAD_DIM=D, D_PAD=triton.next_power_of_2(D), ROWS=ROWS,
        num_warps=4,
    )
    return y
