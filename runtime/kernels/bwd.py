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
   :func:`launches.group_parts`) and each program writes its float32 share, which the host sums
   over the group. A reordered plan's keys are read in the order of the program's first query
   head's mask slice: the heads of a group share one key order (``DevicePlan``).

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

from maskc.runtime.kernels import common
from maskc.runtime.kernels.common import (
    LOG2E, LOG2E_F, head_base, interval_visible, lastdim_contiguous, launch_tile, list_entries, list_step, load_intervals, load_rows,
    partial_visible, perm_rows, program_ids, row_program, seq_ptrs, slice_of, slice_perm, store_rows, tile_bits, tile_words,
)


@triton.jit
def _dkdv_tiles(
    dk, dv, k, v,
    Q_head, DO_head, LSE_head, DELTA_head, stride_qm, stride_dom, perm,  # one query head (rows through its slice's query permutation when GATHER)
    rows, tiles, bitmaps,  # the column list's query tiles and tile ids; the partial tiles' bitmaps
    lts, lte, uts, ute,  # interval plans: the bounds of the program's key columns in this slice
    lo, hi,  # entries [lo, hi) of this key tile's column list
    Nq, qk_scale,
    key0, n_ok, offs_d, d_ok,  # the program's first key column inside the tile; which keys are < Nk; head dims
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SUB_M: tl.constexpr, KEYS: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr,
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
    for it in range(lo * STEPS, hi * STEPS):
        entry, row0, start_m, queries, q_ok, q_rows = list_step(rows, it, offs_i, Nq, perm, BLOCK=BLOCK_M, SUB=SUB_M, GATHER=GATHER)
        qT_ptrs = seq_ptrs(Q_head, start_m, offs_i, stride_qm, offs_d, q_rows, GATHER=GATHER, TRANSPOSED=True)
        qT = load_rows(qT_ptrs, q_ok, d_ok, TRANSPOSED=True, CHECK_ROWS=not EVEN_M, CHECK_D=not EVEN_D)  # [D, SUB_M]
        do_ptrs = seq_ptrs(DO_head, start_m, offs_i, stride_dom, offs_d, q_rows, GATHER=GATHER, TRANSPOSED=False)
        do = load_rows(do_ptrs, q_ok, d_ok, TRANSPOSED=False, CHECK_ROWS=not EVEN_M, CHECK_D=not EVEN_D)  # [SUB_M, D]
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
                words = tile_words(bitmaps, tl.load(tiles + entry), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)
                visible = tile_bits(words, (row0 + offs_i)[None, :], offs_j[:, None], key0, BLOCK_N=BLOCK_N, SPAN=KEYS)
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
    col_lo, col_hi, col_full, col_row, col_tile, bitmaps, intervals, col_order, perm_q, perm_k,  # the plan's column lists
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_dom,
    stride_dkb, stride_dkh, stride_dkn,
    stride_dvb, stride_dvh, stride_dvn,
    Hq, Hkv, Nq, Nk, slice_b, slice_h, tiles_n, perm_q_stride, perm_k_stride,
    scale, qk_scale,
    GROUP: tl.constexpr, PARTS: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SUB_M: tl.constexpr, KEYS: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, INTERVALS: tl.constexpr, ORDERED: tl.constexpr, HEADS_FAST: tl.constexpr,
    GATHER: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    SPLIT: tl.constexpr = BLOCK_N // KEYS  # programs per key tile (1 unless wide heads need fewer keys each)
    HEADS: tl.constexpr = GROUP // PARTS  # query heads per program: the whole GQA group, or one
    EVEN_D: tl.constexpr = HEAD_DIM == D_PAD
    pid_tile, pid_part = program_ids(HEADS_FAST=HEADS_FAST)  # pid_part = (b * Hkv + h_kv) * PARTS + part
    part = pid_part % PARTS
    b = pid_part // PARTS // Hkv
    h_kv = pid_part // PARTS % Hkv
    h0 = h_kv * GROUP + part * HEADS  # the program's first query head

    # The key tile: the plan's launch order (heaviest columns first) when it has one, taken from the
    # mask slice of the program's first query head; any order covers every column exactly once.
    tile = pid_tile // SPLIT
    first_slice = slice_of(b, h0, slice_b, slice_h)
    pid_n = launch_tile(col_order, first_slice, tiles_n, tile, ORDERED=ORDERED)
    key0 = (pid_tile % SPLIT) * KEYS  # the program's first key inside its tile

    offs_j = tl.arange(0, KEYS)
    offs_key = key0 + offs_j  # key column inside the tile (bitmap column)
    offs_n = pid_n * BLOCK_N + offs_key
    offs_d = tl.arange(0, D_PAD)
    n_ok = offs_n < Nk
    d_ok = offs_d < HEAD_DIM
    start_n = pid_n * BLOCK_N + key0
    K_head = head_base(K, b, h_kv, stride_kb, stride_kh)
    V_head = head_base(V, b, h_kv, stride_vb, stride_vh)
    # The keys' permutation, that of the program's first query head: every head of a GQA group
    # shares its key/value head's order (the caller's to guarantee; a static plan has one order).
    key_rows = perm_rows(slice_perm(perm_k, first_slice, perm_k_stride), start_n, offs_j, n_ok, GATHER=GATHER)
    k_ptrs = seq_ptrs(K_head, start_n, offs_j, stride_kn, offs_d, key_rows, GATHER=GATHER, TRANSPOSED=False)
    v_ptrs = seq_ptrs(V_head, start_n, offs_j, stride_vn, offs_d, key_rows, GATHER=GATHER, TRANSPOSED=False)
    k = load_rows(k_ptrs, n_ok, d_ok, TRANSPOSED=False, CHECK_ROWS=not EVEN_N, CHECK_D=not EVEN_D)
    v = load_rows(v_ptrs, n_ok, d_ok, TRANSPOSED=False, CHECK_ROWS=not EVEN_N, CHECK_D=not EVEN_D)

    dk = tl.zeros([KEYS, D_PAD], dtype=tl.float32)
    dv = tl.zeros([KEYS, D_PAD], dtype=tl.float32)
    # GQA: the query heads h_kv * GROUP ... h_kv * GROUP + GROUP - 1 all read this K/V head; sum the
    # program's HEADS of them here.
    for g in range(HEADS):
        h = h0 + g
        mask_slice = slice_of(b, h, slice_b, slice_h)
        lo, n_full, hi = list_entries(col_lo, col_hi, col_full, mask_slice * tiles_n + pid_n)
        q_perm = slice_perm(perm_q, mask_slice, perm_q_stride)
        if INTERVALS:  # this program's key columns' bounds, loaded once per slice
            lts, lte, uts, ute = load_intervals(intervals + mask_slice.to(tl.int64) * 4 * Nk, offs_n, n_ok, Nk)
        else:
            lts, lte, uts, ute = offs_n, offs_n, offs_n, offs_n  # unused
        Q_head = head_base(Q, b, h, stride_qb, stride_qh)
        DO_head = head_base(DO, b, h, stride_dob, stride_doh)
        LSE_head = LSE + (b * Hq + h).to(tl.int64) * Nq  # lse and delta are contiguous [B, Hq, Nq]
        DELTA_head = DELTA + (b * Hq + h).to(tl.int64) * Nq
        # Phase 1: full tiles, no mask.
        dk, dv = _dkdv_tiles(
            dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, stride_qm, stride_dom, q_perm,
            col_row, col_tile, bitmaps, lts, lte, uts, ute, lo, lo + n_full, Nq, qk_scale, key0, n_ok, offs_d, d_ok,
            BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, SUB_M=SUB_M, KEYS=KEYS, EVEN_M=EVEN_M, EVEN_N=EVEN_N, EVEN_D=EVEN_D,
            MASKED=False, INTERVALS=INTERVALS, GATHER=GATHER, DOT_PRECISION=DOT_PRECISION,
        )
        # Phase 2: partial tiles, mask rebuilt in registers.
        dk, dv = _dkdv_tiles(
            dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, stride_qm, stride_dom, q_perm,
            col_row, col_tile, bitmaps, lts, lte, uts, ute, lo + n_full, hi, Nq, qk_scale, key0, n_ok, offs_d, d_ok,
            BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, SUB_M=SUB_M, KEYS=KEYS, EVEN_M=EVEN_M, EVEN_N=EVEN_N, EVEN_D=EVEN_D,
            MASKED=True, INTERVALS=INTERVALS, GATHER=GATHER, DOT_PRECISION=DOT_PRECISION,
        )

    dk = dk * scale
    # dK/dV have Hkv * PARTS heads: one per key/value head, or one share per query head
    out_h = (h_kv * PARTS + part).to(tl.int64)
    DK_head = head_base(DK, b, out_h, stride_dkb, stride_dkh)
    DV_head = head_base(DV, b, out_h, stride_dvb, stride_dvh)
    dk_ptrs = seq_ptrs(DK_head, start_n, offs_j, stride_dkn, offs_d, key_rows, GATHER=GATHER, TRANSPOSED=False)
    dv_ptrs = seq_ptrs(DV_head, start_n, offs_j, stride_dvn, offs_d, key_rows, GATHER=GATHER, TRANSPOSED=False)
    store_rows(dk_ptrs, dk, n_ok, d_ok)
    store_rows(dv_ptrs, dv, n_ok, d_ok)


@triton.jit
def _dq_tiles(
    dq, q, do, lse2, delta,
    K_head, V_head, stride_kn, stride_vn, perm,  # the key/value head (rows through the slice's key permutation when GATHER)
    cols, tiles, bitmaps, slice_intervals,  # the row list's key tiles and tile ids; the partial tiles' masks
    lo, hi,  # entries [lo, hi) of the row list
    Nk, qk_scale,
    offs_m_tile, offs_m, offs_d, d_ok,  # query rows inside the tile (bitmap rows) and absolute; head dims
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SUB_N: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr,
    MASKED: tl.constexpr, INTERVALS: tl.constexpr, GATHER: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Accumulate dQ [ROWS, D] (unscaled) over the key tiles of row-list entries [lo, hi),
    ``SUB_N`` key columns per step, (entry, step) pairs flattened into one loop counter."""
    STEPS: tl.constexpr = BLOCK_N // SUB_N
    offs_j = tl.arange(0, SUB_N)
    for it in range(lo * STEPS, hi * STEPS):
        entry, col0, start_n, keys, key_ok, key_rows = list_step(cols, it, offs_j, Nk, perm, BLOCK=BLOCK_N, SUB=SUB_N, GATHER=GATHER)
        kT_ptrs = seq_ptrs(K_head, start_n, offs_j, stride_kn, offs_d, key_rows, GATHER=GATHER, TRANSPOSED=True)
        vT_ptrs = seq_ptrs(V_head, start_n, offs_j, stride_vn, offs_d, key_rows, GATHER=GATHER, TRANSPOSED=True)
        kT = load_rows(kT_ptrs, key_ok, d_ok, TRANSPOSED=True, CHECK_ROWS=not EVEN_N, CHECK_D=not EVEN_D)  # [D, SUB_N]
        vT = load_rows(vT_ptrs, key_ok, d_ok, TRANSPOSED=True, CHECK_ROWS=not EVEN_N, CHECK_D=not EVEN_D)

        s = tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale  # [ROWS, SUB_N], base 2
        p = tl.math.exp2(s - lse2[:, None])
        if MASKED:
            visible = partial_visible(tl.load(tiles + entry), bitmaps, slice_intervals, offs_m_tile, offs_m, offs_j, col0, keys, key_ok, Nk,
                                      BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, SUB_N=SUB_N, INTERVALS=INTERVALS)
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
    row_lo, row_hi, row_full, row_col, row_tile, bitmaps, intervals, row_order, perm_q, perm_k,  # the plan's row lists
    stride_qb, stride_qh, stride_qm,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_dom,
    stride_ob, stride_oh, stride_om,
    stride_dqb, stride_dqh, stride_dqm,
    Hq, Nq, Nk, slice_b, slice_h, tiles_m, perm_q_stride, perm_k_stride,
    scale, qk_scale,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SUB_N: tl.constexpr, ROWS: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, INTERVALS: tl.constexpr, ORDERED: tl.constexpr, HEADS_FAST: tl.constexpr,
    GROUP: tl.constexpr, GATHER: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    EVEN_D: tl.constexpr = HEAD_DIM == D_PAD
    (pid_bh, b, h, slice_intervals, k_perm, K_head, V_head, start_m, offs_i, offs_m_tile, offs_m, m_ok, q_rows, offs_d, d_ok, q,
     lo, n_full, hi) = row_program(Q, K, V, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_vb, stride_vh, row_lo, row_hi,
        row_full, row_order, intervals, perm_q, perm_k, Hq, GROUP, Nq, Nk, slice_b, slice_h, tiles_m, perm_q_stride, perm_k_stride,
        HEAD_DIM=HEAD_DIM, D_PAD=D_PAD, BLOCK_M=BLOCK_M, ROWS=ROWS, EVEN_M=EVEN_M, ORDERED=ORDERED, HEADS_FAST=HEADS_FAST, GATHER=GATHER)
    DO_head = head_base(DO, b, h, stride_dob, stride_doh)
    O_head = head_base(O, b, h, stride_ob, stride_oh)
    do_ptrs = seq_ptrs(DO_head, start_m, offs_i, stride_dom, offs_d, q_rows, GATHER=GATHER, TRANSPOSED=False)
    o_ptrs = seq_ptrs(O_head, start_m, offs_i, stride_om, offs_d, q_rows, GATHER=GATHER, TRANSPOSED=False)
    do = load_rows(do_ptrs, m_ok, d_ok, TRANSPOSED=False, CHECK_ROWS=not EVEN_M, CHECK_D=not EVEN_D)
    o = load_rows(o_ptrs, m_ok, d_ok, TRANSPOSED=False, CHECK_ROWS=not EVEN_M, CHECK_D=not EVEN_D)
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
        dq, q, do, lse2, delta, K_head, V_head, stride_kn, stride_vn, k_perm, row_col, row_tile, bitmaps, slice_intervals,
        lo, lo + n_full, Nk, qk_scale, offs_m_tile, offs_m, offs_d, d_ok,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, SUB_N=SUB_N, EVEN_N=EVEN_N, EVEN_D=EVEN_D,
        MASKED=False, INTERVALS=INTERVALS, GATHER=GATHER, DOT_PRECISION=DOT_PRECISION,
    )
    # Phase 2: partial tiles, mask rebuilt in registers.
    dq = _dq_tiles(
        dq, q, do, lse2, delta, K_head, V_head, stride_kn, stride_vn, k_perm, row_col, row_tile, bitmaps, slice_intervals,
        lo + n_full, hi, Nk, qk_scale, offs_m_tile, offs_m, offs_d, d_ok,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, SUB_N=SUB_N, EVEN_N=EVEN_N, EVEN_D=EVEN_D,
        MASKED=True, INTERVALS=INTERVALS, GATHER=GATHER, DOT_PRECISION=DOT_PRECISION,
    )
    dq = dq * scale
    DQ_head = head_base(DQ, b, h, stride_dqb, stride_dqh)
    dq_ptrs = seq_ptrs(DQ_head, start_m, offs_i, stride_dqm, offs_d, q_rows, GATHER=GATHER, TRANSPOSED=False)
    store_rows(dq_ptrs, dq, m_ok, d_ok)


def launch_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
                    rows: tuple[torch.Tensor, ...], cols: tuple[torch.Tensor, ...], scale: float,
                    dq_launch, dkdv_launch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the dQ kernel, then the dK/dV kernel: ``dq`` (like q) and ``dk``/``dv`` (like k/v, summed
    over the query heads of each GQA group). Rows with no visible key contribute nothing; deterministic.

    ``do`` has q's dtype; ``rows``/``cols``: the plan's row and column lists in the kernels' order
    (``DevicePlan.row_lists``, ``col_lists``); ``dq_launch``/``dkdv_launch``: the
    :class:`~maskc.runtime.kernels.launches.Launch` of each kernel, decided for this plan and call
    shape. The inputs are trusted: they were checked when the launches were decided.
    """
    q, k, v = lastdim_contiguous(q), lastdim_contiguous(k), lastdim_contiguous(v)
    o, do = lastdim_contiguous(o), lastdim_contiguous(do)
    lse = lse.contiguous()
    B, Hkv, Nk, D = k.shape
    qk_scale = scale * LOG2E_F
    qkv_do_strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3])  # both kernels read these

    delta = common.empty(lse.shape, torch.float32, q.device)  # written by the dQ kernel
    dq = common.empty(q.shape, q.dtype, q.device)
    _dq_kernel[dq_launch.grid](
        q, k, v, do, o, lse, delta, dq, *rows,
        *qkv_do_strides, *o.stride()[:3], *dq.stride()[:3],
        scale=scale, qk_scale=qk_scale, **dq_launch.params,
    )

    # Grouped heads over unbalanced columns or too few programs: the group split in parts, each
    # program writing its float32 share of dK/dV, summed over the group below; else one program
    # per key/value head.
    parts = dkdv_launch.params["PARTS"]
    dk = common.empty((B, Hkv * parts, Nk, D), k.dtype if parts == 1 else torch.float32, k.device)
    dv = common.empty((B, Hkv * parts, Nk, D), v.dtype if parts == 1 else torch.float32, v.device)
    _dkdv_kernel[dkdv_launch.grid](
        q, k, v, do, lse, delta, dk, dv, *cols,
        *qkv_do_strides, *dk.stride()[:3], *dv.stride()[:3],
        scale=scale, qk_scale=qk_scale, **dkdv_launch.params,
    )
    if parts > 1:
        dk, dv = (t.unflatten(1, (Hkv, parts)).sum(2).to(x.dtype) for t, x in ((dk, k), (dv, v)))
    return dq, dk, dv
