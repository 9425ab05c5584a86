"""Block-sparse flash-attention backward: two deterministic kernels, no atomics.

1. ``_dq_kernel``: one program per (query tile, batch * query head) - or per ``ROWS``-row slice of a
   query tile when the config splits tiles. It loads Q, dO, O and lse, computes its rows'
   ``delta = rowsum(dO * O)`` (fp32) and stores it for the next kernel, and walks the row list
   (full tiles, then partial), stepping through each key tile ``SUB_N`` columns at a time
   (``SUB_N == 32`` is exactly one bitmap word per query row). The programs cover every query row,
   empty ones included, so delta is complete when it ends.
2. ``_dkdv_kernel``, launched after it: one program per (key tile, batch * key/value head) - or per
   ``KEYS``-key slice of a key tile when the config splits tiles (wide heads). It holds its K and V
   rows and the dK/dV accumulators, and for each query head of its GQA group walks that head's
   column list (full tiles, then partial tiles), stepping through each query tile ``SUB_M`` rows at
   a time, reading lse and delta. dK/dV are therefore summed over the group in registers and
   written once. Where a few columns are much longer than the rest (global tokens) or the programs
   are too few to fill the GPU, walking a group's heads one after another would multiply the
   longest program by the group size: there the group is split in ``PARTS`` (one query head per
   program for unbalanced columns, else until there are two programs per SM;
   :func:`common.group_parts`) and each program writes its float32 share, which the host sums
   over the group.

Partial tiles are masked from their bitmap (block-sparse plans) or from the key columns' row
intervals (interval plans, constexpr ``INTERVALS``). With S = scale * Q K^T and P = softmax(S) over
the visible keys, the gradients are
    dV = P^T dO,   dP = dO V^T,   dS = P * (dP - delta),   dQ = scale * dS K,   dK = scale * dS^T Q.
P is recomputed as exp2(S * log2(e) - lse * log2(e)); lse = +inf (a row with no visible key) gives
P = 0, so such rows contribute nothing and get zero dQ.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from maskc.runtime.kernels import common as _common, config as _config
from maskc.runtime.kernels.common import (
    LOG2E, LOG2E_F, check_inputs, check_steps, interval_visible, lastdim_contiguous, load_intervals, load_tile, plan_tensor,
    group_parts, heads_fast, launch_grid, perm_rows, program_ids, row_program, seq_ptrs, tile_bits,
)
from maskc.runtime.kernels.fwd import dot_precision

@triton.jit
def _dkdv_tiles(
    dk, dv, k, v,
    Q_head, DO_head, LSE_head, DELTA_head, stride_qm, stride_dom, perm,
    rows, tiles, bitmaps,
    lts, lte, uts, ute,  # interval plans: the bounds of the program's key columns in this slice
    lo, hi,  # entries [lo, hi) of this key tile's column list
    Nq, qk_scale,
    key0, n_ok, offs_d,  # the program's first key column inside the tile; which keys are < Nk
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SUB_M: tl.constexpr, KEYS: tl.constexpr, WORDS: tl.constexpr,
    HEAD_DIM: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr,
    MASKED: tl.constexpr, INTERVALS: tl.constexpr, GATHER: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Accumulate dK, dV [KEYS, D] over the query tiles of column-list entries [lo, hi).

    Everything is computed transposed ([keys, queries]) so that P^T and dS^T feed tl.dot directly.
    Each query tile is visited in ``BLOCK_M // SUB_M`` steps of ``SUB_M`` rows, (entry, step) pairs
    flattened into one loop counter.
    """
    STEPS: tl.constexpr = BLOCK_M // SUB_M
    offs_i = tl.arange(0, SUB_M)
    offs_j = tl.arange(0, KEYS)  # the program's keys, relative to key0
    d_ok = offs_d < HEAD_DIM
    for it in range(lo * STEPS, hi * STEPS):
        entry = it // STEPS
        row0 = (it % STEPS) * SUB_M  # first query row of this step inside the tile
        start_m = tl.load(rows + entry) * BLOCK_M + row0
        queries = start_m + offs_i
        q_ok = queries < Nq
        q_rows = perm_rows(perm, start_m, offs_i, q_ok, GATHER)
        qT_ptrs = seq_ptrs(Q_head, start_m, offs_i, stride_qm, offs_d, q_rows, GATHER, True)
        qT = load_tile(qT_ptrs, d_ok[:, None], q_ok[None, :], not EVEN_D, not EVEN_M)  # [D, SUB_M]
        do_ptrs = seq_ptrs(DO_head, start_m, offs_i, stride_dom, offs_d, q_rows, GATHER, False)
        do = load_tile(do_ptrs, q_ok[:, None], d_ok[None, :], not EVEN_M, not EVEN_D)  # [SUB_M, D]
        # Rows past Nq read lse = +inf, hence P = 0.
        if EVEN_M:
            lse2 = tl.load(LSE_head + queries) * LOG2E
            delta = tl.load(DELTA_head + queries)
        else:
            lse2 = tl.load(LSE_head + queries, mask=q_ok, other=float("inf")) * LOG2E
            delta = tl.load(DELTA_head + queries, mask=q_ok, other=0.0)

        sT = tl.dot(k, qT, input_precision=DOT_PRECISION) * qk_scale  # [KEYS, SUB_M], base 2
        pT = tl.math.exp2(sT - lse2[None, :])
        if MASKED:
            if INTERVALS:
                visible = interval_visible(queries[None, :], lts[:, None], lte[:, None], uts[:, None], ute[:, None])
            else:
                # transposed bitmap read: tile row = query row0 + i, tile column = key0 + j
                tile_words = bitmaps + tl.load(tiles + entry).to(tl.int64) * (BLOCK_M * WORDS)
                visible = tile_bits(tile_words, (row0 + offs_i)[None, :], offs_j[:, None], key0, KEYS, WORDS)
            pT = tl.where(visible, pT, 0.0)
        if not EVEN_N:
            # keys past Nk are never stored, but keep them finite and zero
            pT = tl.where(n_ok[:, None], pT, 0.0)
        dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # [KEYS, SUB_M]
        dsT = pT * (dpT - delta[None, :])
        dk = tl.dot(dsT.to(qT.dtype), tl.trans(qT), dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    col_ptr, col_full, col_row, col_tile, bitmaps, intervals, col_order, perm,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_dom,
    stride_dkb, stride_dkh, stride_dkn,
    stride_dvb, stride_dvh, stride_dvn,
    Hq, Hkv, Nq, Nk, slice_b, slice_h, tiles_n,
    scale, qk_scale,
    GROUP: tl.constexpr, PARTS: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SUB_M: tl.constexpr, KEYS: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, INTERVALS: tl.constexpr, ORDERED: tl.constexpr, HEADS_FAST: tl.constexpr,
    GATHER: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    WORDS: tl.constexpr = BLOCK_N // 32
    SPLIT: tl.constexpr = BLOCK_N // KEYS  # programs per key tile (1 unless wide heads need fewer keys each)
    HEADS: tl.constexpr = GROUP // PARTS  # query heads per program: the whole GQA group, or one
    EVEN_D: tl.constexpr = HEAD_DIM == D_PAD
    pid_tile, pid_part = program_ids(HEADS_FAST)  # pid_part = (b * Hkv + h_kv) * PARTS + part
    part = pid_part % PARTS
    b = pid_part // PARTS // Hkv
    h_kv = pid_part // PARTS % Hkv
    h0 = h_kv * GROUP + part * HEADS  # the program's first query head

    # The key tile: the plan's launch order (heaviest columns first) when it has one, taken from the
    # mask slice of the program's first query head; any order covers every column exactly once.
    tile = pid_tile // SPLIT
    if ORDERED:
        pid_n = tl.load(col_order + (b * slice_b + h0 * slice_h) * tiles_n + tile)
    else:
        pid_n = tile
    key0 = (pid_tile % SPLIT) * KEYS  # the program's first key inside its tile

    offs_j = tl.arange(0, KEYS)
    offs_key = key0 + offs_j  # key column inside the tile (bitmap column)
    offs_n = pid_n * BLOCK_N + offs_key
    offs_d = tl.arange(0, D_PAD)
    n_ok = offs_n < Nk
    d_ok = offs_d < HEAD_DIM
    # Base pointers in int64: batch and head (B*H*N*D can exceed 2**31).
    start_n = pid_n * BLOCK_N + key0
    K_head = K + b.to(tl.int64) * stride_kb + h_kv.to(tl.int64) * stride_kh
    V_head = V + b.to(tl.int64) * stride_vb + h_kv.to(tl.int64) * stride_vh
    key_rows = perm_rows(perm, start_n, offs_j, n_ok, GATHER)
    k_ptrs = seq_ptrs(K_head, start_n, offs_j, stride_kn, offs_d, key_rows, GATHER, False)
    v_ptrs = seq_ptrs(V_head, start_n, offs_j, stride_vn, offs_d, key_rows, GATHER, False)
    k = load_tile(k_ptrs, n_ok[:, None], d_ok[None, :], not EVEN_N, not EVEN_D)
    v = load_tile(v_ptrs, n_ok[:, None], d_ok[None, :], not EVEN_N, not EVEN_D)

    dk = tl.zeros([KEYS, D_PAD], dtype=tl.float32)
    dv = tl.zeros([KEYS, D_PAD], dtype=tl.float32)
    # GQA: the query heads h_kv * GROUP ... h_kv * GROUP + GROUP - 1 all read this K/V head; sum the
    # program's HEADS of them here.
    for g in range(HEADS):
        h = h0 + g
        mask_slice = b * slice_b + h * slice_h  # slice strides are 0 where the mask broadcasts
        col = mask_slice * tiles_n + pid_n
        lo = tl.load(col_ptr + col)
        n_full = tl.load(col_full + col)
        hi = tl.load(col_ptr + col + 1)
        if INTERVALS:  # this program's key columns' bounds, loaded once per slice
            lts, lte, uts, ute = load_intervals(intervals + mask_slice.to(tl.int64) * 4 * Nk, offs_n, n_ok, Nk)
        else:
            lts, lte, uts, ute = offs_n, offs_n, offs_n, offs_n  # unused
        Q_head = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
        DO_head = DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
        LSE_head = LSE + (b * Hq + h).to(tl.int64) * Nq  # lse and delta are contiguous [B, Hq, Nq]
        DELTA_head = DELTA + (b * Hq + h).to(tl.int64) * Nq
        # Phase 1: full tiles, no mask.
        dk, dv = _dkdv_tiles(
            dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, stride_qm, stride_dom, perm,
            col_row, col_tile, bitmaps, lts, lte, uts, ute, lo, lo + n_full, Nq, qk_scale, key0, n_ok, offs_d,
            BLOCK_M, BLOCK_N, SUB_M, KEYS, WORDS, HEAD_DIM, EVEN_M, EVEN_N, EVEN_D, False, INTERVALS, GATHER, DOT_PRECISION,
        )
        # Phase 2: partial tiles, mask rebuilt in registers.
        dk, dv = _dkdv_tiles(
            dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, stride_qm, stride_dom, perm,
            col_row, col_tile, bitmaps, lts, lte, uts, ute, lo + n_full, hi, Nq, qk_scale, key0, n_ok, offs_d,
            BLOCK_M, BLOCK_N, SUB_M, KEYS, WORDS, HEAD_DIM, EVEN_M, EVEN_N, EVEN_D, True, INTERVALS, GATHER, DOT_PRECISION,
        )

    dk = dk * scale
    out_ok = n_ok[:, None] & d_ok[None, :]
    # dK/dV have Hkv * PARTS heads: one per key/value head, or one share per query head
    out_h = (h_kv * PARTS + part).to(tl.int64)
    DK_head = DK + b.to(tl.int64) * stride_dkb + out_h * stride_dkh
    DV_head = DV + b.to(tl.int64) * stride_dvb + out_h * stride_dvh
    dk_ptrs = seq_ptrs(DK_head, start_n, offs_j, stride_dkn, offs_d, key_rows, GATHER, False)
    dv_ptrs = seq_ptrs(DV_head, start_n, offs_j, stride_dvn, offs_d, key_rows, GATHER, False)
    tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=out_ok)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=out_ok)


@triton.jit
def _dq_tiles(
    dq, q, do, lse2, delta,
    K_head, V_head, stride_kn, stride_vn, perm,
    cols, tiles, bitmaps, slice_intervals,
    lo, hi,  # entries [lo, hi) of the row list
    Nk, qk_scale,
    offs_m_tile, offs_m, offs_d,  # query rows inside the tile (bitmap rows) and absolute; head dims
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SUB_N: tl.constexpr, WORDS: tl.constexpr,
    HEAD_DIM: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr,
    MASKED: tl.constexpr, INTERVALS: tl.constexpr, GATHER: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Accumulate dQ [ROWS, D] (unscaled) over the key tiles of row-list entries [lo, hi),
    ``SUB_N`` key columns per step, (entry, step) pairs flattened into one loop counter."""
    STEPS: tl.constexpr = BLOCK_N // SUB_N
    offs_j = tl.arange(0, SUB_N)
    d_ok = offs_d < HEAD_DIM
    for it in range(lo * STEPS, hi * STEPS):
        entry = it // STEPS
        col0 = (it % STEPS) * SUB_N  # first key column of this step inside the tile
        start_n = tl.load(cols + entry) * BLOCK_N + col0
        keys = start_n + offs_j
        key_ok = keys < Nk
        key_rows = perm_rows(perm, start_n, offs_j, key_ok, GATHER)
        kT_ptrs = seq_ptrs(K_head, start_n, offs_j, stride_kn, offs_d, key_rows, GATHER, True)
        vT_ptrs = seq_ptrs(V_head, start_n, offs_j, stride_vn, offs_d, key_rows, GATHER, True)
        kT = load_tile(kT_ptrs, d_ok[:, None], key_ok[None, :], not EVEN_D, not EVEN_N)  # [D, SUB_N]
        vT = load_tile(vT_ptrs, d_ok[:, None], key_ok[None, :], not EVEN_D, not EVEN_N)

        s = tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale  # [ROWS, SUB_N], base 2
        p = tl.math.exp2(s - lse2[:, None])
        if MASKED:
            if INTERVALS:
                lts, lte, uts, ute = load_intervals(slice_intervals, keys, key_ok, Nk)
                visible = interval_visible(offs_m[:, None], lts[None, :], lte[None, :], uts[None, :], ute[None, :])
            else:
                tile_words = bitmaps + tl.load(tiles + entry).to(tl.int64) * (BLOCK_M * WORDS)
                visible = tile_bits(tile_words, offs_m_tile[:, None], offs_j[None, :], col0, SUB_N, WORDS)
            p = tl.where(visible, p, 0.0)
        if not EVEN_N:
            p = tl.where(key_ok[None, :], p, 0.0)
        dp = tl.dot(do, vT, input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(kT.dtype), tl.trans(kT), dq, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def _dq_kernel(
    Q, K, V, DO, O, LSE, DELTA, DQ,
    row_ptr, row_full, row_col, row_tile, bitmaps, intervals, row_order, perm,
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_dom,
    stride_ob, stride_oh, stride_om,
    stride_dqb, stride_dqh, stride_dqm,
    Hq, Nq, Nk, slice_b, slice_h, tiles_m,
    scale, qk_scale,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SUB_N: tl.constexpr, ROWS: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, INTERVALS: tl.constexpr, ORDERED: tl.constexpr, HEADS_FAST: tl.constexpr,
    GATHER: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    WORDS: tl.constexpr = BLOCK_N // 32
    EVEN_D: tl.constexpr = HEAD_DIM == D_PAD
    pid_bh, b, h, h_kv, mask_slice, pid_m, row0, lo, n_full, hi = row_program(
        row_ptr, row_full, row_order, Hq, GROUP, slice_b, slice_h, tiles_m, BLOCK_M, ROWS, ORDERED, HEADS_FAST)
    slice_intervals = intervals + mask_slice.to(tl.int64) * 4 * Nk  # [4, Nk] (interval plans only)

    # Base pointers in int64: batch and head (B*H*N*D can exceed 2**31).
    start_m = pid_m * BLOCK_M + row0
    Q_head = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    DO_head = DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
    O_head = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
    DQ_head = DQ + b.to(tl.int64) * stride_dqb + h.to(tl.int64) * stride_dqh
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
    do_ptrs = seq_ptrs(DO_head, start_m, offs_i, stride_dom, offs_d, q_rows, GATHER, False)
    o_ptrs = seq_ptrs(O_head, start_m, offs_i, stride_om, offs_d, q_rows, GATHER, False)
    q = load_tile(q_ptrs, m_ok[:, None], d_ok[None, :], not EVEN_M, not EVEN_D)
    do = load_tile(do_ptrs, m_ok[:, None], d_ok[None, :], not EVEN_M, not EVEN_D)
    o = load_tile(o_ptrs, m_ok[:, None], d_ok[None, :], not EVEN_M, not EVEN_D)
    # delta = rowsum(dO * O): this kernel's, and stored for the dK/dV kernel (rows past Nq: 0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    stats = pid_bh.to(tl.int64) * Nq + offs_m  # lse and delta are contiguous [B, Hq, Nq]
    tl.store(DELTA + stats, delta, mask=m_ok)
    if EVEN_M:
        lse2 = tl.load(LSE + stats) * LOG2E
    else:
        lse2 = tl.load(LSE + stats, mask=m_ok, other=float("inf")) * LOG2E

    dq = tl.zeros([ROWS, D_PAD], dtype=tl.float32)
    # Phase 1: full tiles, no mask.
    dq = _dq_tiles(
        dq, q, do, lse2, delta, K_head, V_head, stride_kn, stride_vn, perm, row_col, row_tile, bitmaps, slice_intervals,
        lo, lo + n_full, Nk, qk_scale, offs_m_tile, offs_m, offs_d,
        BLOCK_M, BLOCK_N, SUB_N, WORDS, HEAD_DIM, EVEN_N, EVEN_D, False, INTERVALS, GATHER, DOT_PRECISION,
    )
    # Phase 2: partial tiles, mask rebuilt in registers.
    dq = _dq_tiles(
        dq, q, do, lse2, delta, K_head, V_head, stride_kn, stride_vn, perm, row_col, row_tile, bitmaps, slice_intervals,
        lo + n_full, hi, Nk, qk_scale, offs_m_tile, offs_m, offs_d,
        BLOCK_M, BLOCK_N, SUB_N, WORDS, HEAD_DIM, EVEN_N, EVEN_D, True, INTERVALS, GATHER, DOT_PRECISION,
    )
    dq = dq * scale
    dq_ptrs = seq_ptrs(DQ_head, start_m, offs_i, stride_dqm, offs_d, q_rows, GATHER, False)
    tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


def backward(do, q, k, v, o, lse, plan, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Block-sparse attention backward.

    Returns ``dq`` (like q) and ``dk``/``dv`` (like k/v, summed over the query heads of each GQA
    group inside the dK/dV kernel). Rows with no visible key contribute nothing; deterministic.
    """
    g = check_inputs(q, k, v, plan)
    B, Hq, Hkv, Nq, Nk, D = g["B"], g["Hq"], g["Hkv"], g["Nq"], g["Nk"], g["D"]
    if tuple(do.shape) != tuple(q.shape) or tuple(o.shape) != tuple(q.shape):
        raise ValueError(f"do {list(do.shape)} and o {list(o.shape)} must have q's shape {list(q.shape)}")
    if tuple(lse.shape) != (B, Hq, Nq) or lse.dtype != torch.float32:
        raise ValueError(f"lse must be float32 [{B}, {Hq}, {Nq}], got {lse.dtype} {list(lse.shape)}")
    q, k, v = lastdim_contiguous(q), lastdim_contiguous(k), lastdim_contiguous(v)
    o, do = lastdim_contiguous(o), lastdim_contiguous(do)
    if do.dtype != q.dtype:
        do = do.to(q.dtype)
    lse = lse.contiguous()
    cfg = _config.lookup(q.device, D, q.dtype, plan.block_m, plan.block_n)
    check_steps(plan.row_col.numel(), plan.block_n // cfg.dq_sub_n)
    check_steps(plan.col_row.numel(), plan.block_m // cfg.dkdv_sub_m)
    intervals, row_order, col_order = (plan_tensor(plan, name) for name in ("intervals", "row_order", "col_order"))
    common = dict(GROUP=g["group"], HEAD_DIM=D, D_PAD=g["D_PAD"])
    shape = dict(
        BLOCK_M=plan.block_m, BLOCK_N=plan.block_n,
        EVEN_M=Nq % plan.block_m == 0, EVEN_N=Nk % plan.block_n == 0,
        INTERVALS=g["INTERVALS"], GATHER=plan.reordered, DOT_PRECISION=dot_precision(q.dtype, cfg),
    )
    qk_scale = float(scale) * LOG2E_F
    dq_programs = g["tiles_m"] * (plan.block_m // cfg.dq_rows)
    dkdv_programs = g["tiles_n"] * (plan.block_n // cfg.dkdv_keys)
    rows_fast = heads_fast(plan.rows_unbalanced, plan.rows_shared, k, dq_programs)  # dQ programs share K and V rows
    cols_fast = heads_fast(plan.cols_unbalanced, plan.cols_shared, q, dkdv_programs)  # dK/dV programs share Q and dO

    qkv_do_strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3])  # both kernels read these
    delta = _common.empty((B, Hq, Nq), torch.float32, q.device)  # written by the dQ kernel
    dq = _common.empty((B, Hq, Nq, D), q.dtype, q.device)
    _dq_kernel[launch_grid(dq_programs, B * Hq, rows_fast)](
        q, k, v, do, o, lse, delta, dq,
        plan.row_ptr, plan.row_full, plan.row_col, plan.row_tile, plan.bitmaps, intervals, row_order, plan.perm,
        *qkv_do_strides,
        o.stride(0), o.stride(1), o.stride(2),
        dq.stride(0), dq.stride(1), dq.stride(2),
        Hq, Nq, Nk, g["slice_b"], g["slice_h"], g["tiles_m"],
        float(scale), qk_scale,
        SUB_N=cfg.dq_sub_n, ROWS=cfg.dq_rows, ORDERED=row_order.numel() > 0, HEADS_FAST=rows_fast, **common, **shape,
        num_warps=cfg.dq_warps, num_stages=cfg.dq_stages,
    )

    # Grouped heads over unbalanced columns or too few programs: the group split in parts, each
    # program writing its float32 share of dK/dV, summed over the group below; else one program
    # per key/value head.
    parts = group_parts(g["group"], plan.cols_unbalanced, B * Hkv * dkdv_programs, k.device)
    dk = _common.empty((B, Hkv * parts, Nk, D), k.dtype if parts == 1 else torch.float32, k.device)
    dv = _common.empty((B, Hkv * parts, Nk, D), v.dtype if parts == 1 else torch.float32, v.device)
    _dkdv_kernel[launch_grid(dkdv_programs, B * Hkv * parts, cols_fast)](
        q, k, v, do, lse, delta, dk, dv,
        plan.col_ptr, plan.col_full, plan.col_row, plan.col_tile, plan.bitmaps, intervals, col_order, plan.perm,
        *qkv_do_strides,
        dk.stride(0), dk.stride(1), dk.stride(2),
        dv.stride(0), dv.stride(1), dv.stride(2),
        Hq, Hkv, Nq, Nk, g["slice_b"], g["slice_h"], g["tiles_n"],
        float(scale), qk_scale,
        PARTS=parts, SUB_M=cfg.dkdv_sub_m, KEYS=cfg.dkdv_keys, ORDERED=col_order.numel() > 0, HEADS_FAST=cols_fast, **common, **shape,
        num_warps=cfg.dkdv_warps, num_stages=cfg.dkdv_stages,
    )
    if parts > 1:
        dk, dv = (t.unflatten(1, (Hkv, parts)).sum(2).to(x.dtype) for t, x in ((dk, k), (dv, v)))
    return dq, dk, dv
