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

from maskc.runtime.kernels import common as _common, config as _config
from maskc.runtime.kernels.common import (
    FULL_TILE, LN2, LOG2E_F, check_inputs, check_scale, check_steps, full_run, interval_visible, lastdim_contiguous, load_intervals, load_tile, plan_tensor,
    heads_fast, launch_grid, perm_rows, program_ids, row_program, seq_ptrs, tile_bits,
)


@triton.jit
def _fwd_tiles(
    acc, l_i, m_i, q,
    K_head, V_head, stride_kn, stride_vn, perm,
    cols, tiles, bitmaps, slice_intervals,
    lo, hi, first,  # entries [lo, hi) of the row list; unmasked, they are key tiles first, first + 1, ...
    Nk, qk_scale,
    offs_m_tile, offs_m, offs_d,  # query rows inside the tile (bitmap rows) and absolute; head dims
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SUB_N: tl.constexpr, WORDS: tl.constexpr,
    HEAD_DIM: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr,
    MASKED: tl.constexpr, INTERVALS: tl.constexpr, GATHER: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Fold the key tiles of row-list entries [lo, hi) into the online softmax state (acc, l_i, m_i).

    Each tile is visited in ``BLOCK_N // SUB_N`` steps of ``SUB_N`` key columns; the loop runs over
    (entry, step) pairs flattened into one counter so that the compiler pipelines a single loop.
    """
    STEPS: tl.constexpr = BLOCK_N // SUB_N
    offs_j = tl.arange(0, SUB_N)
    d_ok = offs_d < HEAD_DIM
    for it in range(lo * STEPS, hi * STEPS):
        entry = it // STEPS
        col0 = (it % STEPS) * SUB_N  # first key column of this step inside the tile
        if MASKED:
            start_n = tl.load(cols + entry) * BLOCK_N + col0
        else:
            start_n = (first + entry - lo) * BLOCK_N + col0
        keys = start_n + offs_j
        key_ok = keys < Nk
        key_rows = perm_rows(perm, start_n, offs_j, key_ok, GATHER)
        kT_ptrs = seq_ptrs(K_head, start_n, offs_j, stride_kn, offs_d, key_rows, GATHER, True)  # K^T [D, SUB_N]
        kT = load_tile(kT_ptrs, d_ok[:, None], key_ok[None, :], not EVEN_D, not EVEN_N)
        qk = tl.dot(q, kT, input_precision=DOT_PRECISION)  # unscaled scores
        if MASKED:
            tile = tl.load(tiles + entry)
            if tile != FULL_TILE:  # a full tile outside the run needs no mask
                if INTERVALS:
                    # key column j hides query rows [LTS_j, LTE_j) and [UTS_j, UTE_j)
                    lts, lte, uts, ute = load_intervals(slice_intervals, keys, key_ok, Nk)
                    visible = interval_visible(offs_m[:, None], lts[None, :], lte[None, :], uts[None, :], ute[None, :])
                else:
                    # bit (col0 + j) % 32 of word (col0 + j) // 32 of tile row i
                    tile_words = bitmaps + tile.to(tl.int64) * (BLOCK_M * WORDS)
                    visible = tile_bits(tile_words, offs_m_tile[:, None], offs_j[None, :], col0, SUB_N, WORDS)
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
        v_ptrs = seq_ptrs(V_head, start_n, offs_j, stride_vn, offs_d, key_rows, GATHER, False)  # V [SUB_N, D]
        v = load_tile(v_ptrs, key_ok[:, None], d_ok[None, :], not EVEN_N, not EVEN_D)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE,
    row_ptr, row_full, row_col, row_tile, bitmaps, intervals, row_order, perm,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_om,
    Hq, Nq, Nk, group, slice_b, slice_h, tiles_m,
    qk_scale,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SUB_N: tl.constexpr, ROWS: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, INTERVALS: tl.constexpr, ORDERED: tl.constexpr, HEADS_FAST: tl.constexpr,
    GATHER: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    WORDS: tl.constexpr = BLOCK_N // 32
    EVEN_D: tl.constexpr = HEAD_DIM == D_PAD
    pid_bh, b, h, h_kv, mask_slice, pid_m, row0, lo, n_full, hi = row_program(
        row_ptr, row_full, row_order, Hq, group, slice_b, slice_h, tiles_m, BLOCK_M, ROWS, ORDERED, HEADS_FAST)
    slice_intervals = intervals + mask_slice.to(tl.int64) * 4 * Nk  # [4, Nk] (interval plans only)

    # Base pointers in int64: batch and head (B*H*N*D can exceed 2**31).
    start_m = pid_m * BLOCK_M + row0
    Q_head = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    O_head = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    K_head = K + b.to(tl.int64) * stride_kb + h_kv.to(tl.int64) * stride_kh
    V_head = V + b.to(tl.int64) * stride_vb + h_kv.to(tl.int64) * stride_vh

    offs_i = tl.arange(0, ROWS)
    offs_m_tile = row0 + offs_i  # row inside the tile (bitmap row)
    offs_m = pid_m * BLOCK_M + offs_m_tile
    offs_d = tl.arange(0, D_PAD)
    m_ok = offs_m < Nq
    d_ok = offs_d < HEAD_DIM
    q_rows = perm_rows(perm, start_m, offs_i, m_ok, GATHER)
    q_ptrs = seq_ptrs(Q_head, start_m, offs_i, stride_qm, offs_d, q_rows, GATHER, False)
    q = load_tile(q_ptrs, m_ok[:, None], d_ok[None, :], not EVEN_M, not EVEN_D)

    m_i = tl.full([ROWS], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([ROWS], dtype=tl.float32)
    acc = tl.zeros([ROWS, D_PAD], dtype=tl.float32)

    # Phase 1: the full tiles if they are one run of key tiles, no mask.
    first, n_run = full_run(row_col, lo, n_full)
    acc, l_i, m_i = _fwd_tiles(
        acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_vn, perm, row_col, row_tile, bitmaps, slice_intervals,
        lo, lo + n_run, first, Nk, qk_scale, offs_m_tile, offs_m, offs_d,
        BLOCK_M, BLOCK_N, SUB_N, WORDS, HEAD_DIM, EVEN_N, EVEN_D, False, INTERVALS, GATHER, DOT_PRECISION,
    )
    # Phase 2: the other tiles, mask rebuilt in registers.
    acc, l_i, m_i = _fwd_tiles(
        acc, l_i, m_i, q, K_head, V_head, stride_kn, stride_vn, perm, row_col, row_tile, bitmaps, slice_intervals,
        lo + n_run, hi, first, Nk, qk_scale, offs_m_tile, offs_m, offs_d,
        BLOCK_M, BLOCK_N, SUB_N, WORDS, HEAD_DIM, EVEN_N, EVEN_D, True, INTERVALS, GATHER, DOT_PRECISION,
    )

    # Epilogue. l_i == 0 exactly when the row saw no visible key (else its max term contributed 1).
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    o = acc / l_safe[:, None]  # acc is 0 on empty rows
    lse = tl.where(empty, float("inf"), (m_i + tl.math.log2(l_safe)) * LN2)
    o_ptrs = seq_ptrs(O_head, start_m, offs_i, stride_om, offs_d, q_rows, GATHER, False)
    tl.store(o_ptrs, o.to(O.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    tl.store(LSE + pid_bh.to(tl.int64) * Nq + offs_m, lse, mask=m_ok)


def dot_precision(dtype: torch.dtype, cfg: _config.KernelConfig) -> str:
    return cfg.fp32_precision if dtype == torch.float32 else "tf32"  # ignored for 16-bit inputs


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse attention forward.

    q ``[B, Hq, Nq, D]``, k/v ``[B, Hkv, Nk, D]`` (``Hq % Hkv == 0``), fp16/bf16/fp32, any strides.
    ``plan``: a block-sparse or interval :class:`DevicePlan` on q's device.
    Returns ``o`` (like q, contiguous) and ``lse`` float32 ``[B, Hq, Nq]``: the natural-log
    log-sum-exp of the scaled scores, +inf for rows with no visible key (whose o rows are 0).
    """
    g = check_inputs(q, k, v, plan)
    check_scale(scale)
    q, k, v = lastdim_contiguous(q), lastdim_contiguous(k), lastdim_contiguous(v)
    B, Hq, Nq, Nk, D = g["B"], g["Hq"], g["Nq"], g["Nk"], g["D"]
    cfg = _config.lookup(q.device, D, q.dtype, plan.block_m, plan.block_n)
    check_steps(plan.row_col.numel(), plan.block_n // cfg.fwd_sub_n)
    row_order = plan_tensor(plan, "row_order")
    o = _common.empty((B, Hq, Nq, D), q.dtype, q.device)
    lse = _common.empty((B, Hq, Nq), torch.float32, q.device)
    programs = g["tiles_m"] * (plan.block_m // cfg.fwd_rows)
    rows_fast = heads_fast(plan.rows_unbalanced, plan.rows_shared, k, programs)
    grid = launch_grid(programs, B * Hq, rows_fast)
    _fwd_kernel[grid](
        q, k, v, o, lse,
        plan.row_ptr, plan.row_full, plan.row_col, plan.row_tile, plan.bitmaps, plan_tensor(plan, "intervals"), row_order, plan.perm,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        Hq, Nq, Nk, g["group"], g["slice_b"], g["slice_h"], g["tiles_m"],
        float(scale) * LOG2E_F,
        HEAD_DIM=D, D_PAD=g["D_PAD"],
        BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, SUB_N=cfg.fwd_sub_n, ROWS=cfg.fwd_rows,
        EVEN_M=Nq % plan.block_m == 0, EVEN_N=Nk % plan.block_n == 0,
        INTERVALS=g["INTERVALS"], ORDERED=row_order.numel() > 0, HEADS_FAST=rows_fast, GATHER=plan.reordered,
        DOT_PRECISION=dot_precision(q.dtype, cfg),
        num_warps=cfg.fwd_warps, num_stages=cfg.fwd_stages,
    )
    return o, lse
