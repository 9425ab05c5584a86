"""Block-sparse flash-attention forward.

One program per (query tile, batch * query head) - or per ``ROWS``-row slice of a query tile when the
config splits tiles (wide heads). The program walks its query tile's row list from the plan: first
the full tiles (no mask work at all), then the partial tiles, whose mask it rebuilds in registers
from the packed bitmap (block-sparse plans) or from the key columns' row intervals (interval plans).
The same inner loop runs both phases, specialised by the constexpr ``MASKED``. The unmasked phase
takes the full tiles when they form one run of consecutive key tiles (most masks), addressed from
the run's first tile without reading the list; otherwise they go with the partial tiles, as all
visible. Online softmax in base 2 with fp32 accumulators; the natural-log log-sum-exp is saved for
the backward. Rows with no visible key get o = 0 and lse = +inf.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from maskc.runtime.kernels import common
from maskc.runtime.kernels.common import (
    FULL_TILE, LN2, LOG2E_F, full_run, head_base, lastdim_contiguous, load_rows, partial_visible, perm_rows, row_program, seq_ptrs,
    store_rows,
)


@triton.jit
def _fwd_tiles(
    acc, l_i, m_i, q,
    K_head, V_head, stride_kn, stride_vn, perm,  # the key/value head (rows through the slice's key permutation when GATHER)
    cols, tiles, bitmaps, slice_intervals,  # the row list's key tiles and tile ids; the partial tiles' masks
    lo, hi, first,  # entries [lo, hi) of the row list; unmasked, they are key tiles first, first + 1, ...
    Nk, qk_scale,
    offs_m_tile, offs_m, offs_d, d_ok,  # query rows inside the tile (bitmap rows) and absolute; head dims
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SUB_N: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr,
    MASKED: tl.constexpr, INTERVALS: tl.constexpr, GATHER: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Fold the key tiles of row-list entries [lo, hi) into the online softmax state (acc, l_i, m_i).

    Each tile is visited in ``BLOCK_N // SUB_N`` steps of ``SUB_N`` key columns; the loop runs over
    (entry, step) pairs flattened into one counter so that the compiler pipelines a single loop.
    """
    STEPS: tl.constexpr = BLOCK_N // SUB_N
    offs_j = tl.arange(0, SUB_N)
    for it in range(lo * STEPS, hi * STEPS):
        entry = it // STEPS
        col0 = (it % STEPS) * SUB_N  # first key column of this step inside the tile
        if MASKED:
            start_n = tl.load(cols + entry) * BLOCK_N + col0
        else:
            start_n = (first + entry - lo) * BLOCK_N + col0
        keys = start_n + offs_j
        key_ok = keys < Nk
        key_rows = perm_rows(perm, start_n, offs_j, key_ok, GATHER=GATHER)
        kT_ptrs = seq_ptrs(K_head, start_n, offs_j, stride_kn, offs_d, key_rows, GATHER=GATHER, TRANSPOSED=True)
        kT = load_rows(kT_ptrs, key_ok, d_ok, TRANSPOSED=True, CHECK_ROWS=not EVEN_N, CHECK_D=not EVEN_D)  # K^T [D, SUB_N]
        qk = tl.dot(q, kT, input_precision=DOT_PRECISION)  # unscaled scores
        if MASKED:
            tile = tl.load(tiles + entry)
            if tile != FULL_TILE:  # a full tile outside the run needs no mask
                visible = partial_visible(tile, bitmaps, slice_intervals, offs_m_tile, offs_m, offs_j, col0, keys, key_ok, Nk,
                                          BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, SUB_N=SUB_N, INTERVALS=INTERVALS)
                qk = tl.where(visible, qk, float("-inf"))
        if not EVEN_N:
            # keys past the end exist only in the last tile column; a full tile may still reach past Nk
            qk = tl.where(key_ok[None, :], qk, float("-inf"))
        # The running max in base-2 scaled units, taken before scaling (qk_scale > 0): the scale then
        # folds into the exponent's multiply-add instead of costing a multiply per score.
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        # A row with no visible key so far keeps m = -inf; subtract 0 instead so no (-inf) - (-inf) NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(qk * qk_scale - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v_ptrs = seq_ptrs(V_head, start_n, offs_j, stride_vn, offs_d, key_rows, GATHER=GATHER, TRANSPOSED=False)
        v = load_rows(v_ptrs, key_ok, d_ok, TRANSPOSED=False, CHECK_ROWS=not EVEN_N, CHECK_D=not EVEN_D)  # V [SUB_N, D]
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE,
    row_lo, row_hi, row_full, row_col, row_tile, bitmaps, intervals, row_order, perm_q, perm_k,  # the plan's row lists
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    Hq, Nq, Nk, group, slice_b, slice_h, tiles_m, perm_q_stride, perm_k_stride,
    qk_scale,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SUB_N: tl.constexpr, ROWS: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, INTERVALS: tl.constexpr, ORDERED: tl.constexpr, HEADS_FAST: tl.constexpr,
    GATHER: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    EVEN_D: tl.constexpr = HEAD_DIM == D_PAD
    (pid_bh, b, h, slice_intervals, k_perm, K_head, V_head, start_m, offs_i, offs_m_tile, offs_m, m_ok, q_rows, offs_d, d_ok, q,
     lo, n_full, hi) = row_program(Q, K, V, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_vb, stride_vh, row_lo, row_hi,
        row_full, row_order, intervals, perm_q, perm_k, Hq, group, Nq, Nk, slice_b, slice_h, tiles_m, perm_q_stride, perm_k_stride,
        HEAD_DIM=HEAD_DIM, D_PAD=D_PAD, BLOCK_M=BLOCK_M, ROWS=ROWS, EVEN_M=EVEN_M, ORDERED=ORDERED, HEADS_FAST=HEADS_FAST, GATHER=GATHER)

    m_i = tl.full([ROWS], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([ROWS], dtype=tl.float32)
    acc = tl.zeros([ROWS, D_PAD], dtype=tl.float32)

    # Phase 1: the full tiles if they are one run of key tiles, no mask.
    first, n_run = full_run(row_col, lo, n_full)
    acc, l_i, m_i = _fwd_tiles(
        acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_vn, k_perm, row_col, row_tile, bitmaps, slice_intervals,
        lo, lo + n_run, first, Nk, qk_scale, offs_m_tile, offs_m, offs_d, d_ok,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, SUB_N=SUB_N, EVEN_N=EVEN_N, EVEN_D=EVEN_D,
        MASKED=False, INTERVALS=INTERVALS, GATHER=GATHER, DOT_PRECISION=DOT_PRECISION,
    )
    # Phase 2: the other tiles, mask rebuilt in registers.
    acc, l_i, m_i = _fwd_tiles(
        acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_vn, k_perm, row_col, row_tile, bitmaps, slice_intervals,
        lo + n_run, hi, first, Nk, qk_scale, offs_m_tile, offs_m, offs_d, d_ok,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, SUB_N=SUB_N, EVEN_N=EVEN_N, EVEN_D=EVEN_D,
        MASKED=True, INTERVALS=INTERVALS, GATHER=GATHER, DOT_PRECISION=DOT_PRECISION,
    )

    # Epilogue. l_i == 0 exactly when the row saw no visible key (else its max term contributed 1).
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    o = acc / l_safe[:, None]  # acc is 0 on empty rows
    lse = tl.where(empty, float("inf"), (m_i + tl.math.log2(l_safe)) * LN2)
    O_head = head_base(O, b, h, stride_ob, stride_oh)
    o_ptrs = seq_ptrs(O_head, start_m, offs_i, stride_om, offs_d, q_rows, GATHER=GATHER, TRANSPOSED=False)
    store_rows(o_ptrs, o, m_ok, d_ok)
    tl.store(LSE + pid_bh.to(tl.int64) * Nq + offs_m, lse, mask=m_ok)


def launch_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: tuple[torch.Tensor, ...], scale: float,
                   launch) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the forward kernel: ``o`` (like q, contiguous) and ``lse`` float32 ``[B, Hq, Nq]``, the
    natural-log log-sum-exp of the scaled scores (+inf for rows with no visible key, whose o rows are 0).

    ``rows``: the plan's row lists in the kernel's order (``DevicePlan.row_lists``); ``launch``: the
    :class:`~maskc.runtime.kernels.launches.Launch` decided for this plan and call shape. The inputs
    are trusted: they were checked when the launch was decided.
    """
    q, k, v = lastdim_contiguous(q), lastdim_contiguous(k), lastdim_contiguous(v)
    o = common.empty(q.shape, q.dtype, q.device)
    lse = common.empty(q.shape[:3], torch.float32, q.device)
    _fwd_kernel[launch.grid](
        q, k, v, o, lse, *rows,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
        qk_scale=scale * LOG2E_F, **launch.params,
    )
    return o, lse
