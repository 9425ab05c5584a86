"""Pieces shared by the forward and backward kernels: the bitmap and interval readers, masked tile
loads, host-side checks.

Index conventions used by every kernel in this package
------------------------------------------------------
* Query batch ``b`` and query head ``h`` read mask slice ``s = b * slice_stride_b + h * slice_stride_h``
  where ``slice_stride_b = plan.heads if plan.batch > 1 else 0`` and ``slice_stride_h = 1 if plan.heads > 1
  else 0``: a broadcast dimension has stride 0, so the kernels never branch on the mask's shape.
* GQA: query head ``h`` reads key/value head ``h // group`` with ``group = Hq // Hkv``.
* A partial tile's bitmap is ``block_m * (block_n // 32)`` int32 words, row-major: the bit for tile
  row ``i`` and tile column ``j`` is bit ``j % 32`` (LSB first) of word ``i * WORDS + j // 32``.
* An interval plan masks query row ``i`` of key column ``j`` iff ``LTS <= i < LTE`` or
  ``UTS <= i < UTE`` with the bounds ``intervals[s, 0..3, j]`` (``[slices, 4, Nk]`` int32).
* Token order: a reordered plan's positions are the caller's tokens ``perm[0], perm[1], ...``; the
  kernels address every q, k, v, o and gradient row through ``perm`` (constexpr ``GATHER``,
  :func:`perm_rows`, :func:`seq_ptrs`), while the lse and delta they keep for themselves stay in plan positions.
* Launch order: with the plan's ``row_order``/``col_order`` (constexpr ``ORDERED``), program ``i``
  of a slice takes tile ``order[s * tiles + i]`` (heaviest first) instead of tile ``i``.
* Grid: ``(tiles, B·H)``, or with ``HEADS_FAST`` (:func:`heads_fast`) ``(B·H, tiles)``, so the
  first (heaviest) lists of every head launch before the later ones of any (:func:`program_ids`).
* Batch/head base offsets are computed in int64 (B*H*N*D overflows int32 at long contexts); offsets
  inside one head stay int32 after the tile's first row has been folded into an int64 base pointer.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from maskc.runtime.kernels.config import TILE_SIZES, head_dim_bucket

FULL_TILE = tl.constexpr(-1)  # a list entry's tile id when the tile is full (no bitmap, no mask)
LOG2E_F = 1.4426950408889634  # log2(e): exp(x) = exp2(x * log2(e)); host-side float
# Kernels may only read globals that are tl.constexpr.
LOG2E = tl.constexpr(LOG2E_F)
LN2 = tl.constexpr(0.6931471805599453)  # ln(2): ln(x) = log2(x) * ln(2)
MAX_HEAD_DIM = 256
MAX_GRID_Y = 65535  # the grid's second axis: batch * heads, or the tile programs (launch_grid)
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def program_ids(HEADS_FAST: tl.constexpr):
    """This program's (tile program, batch·head) indices. The grid is ``(tiles, B·H)`` (CUDA starts
    blocks along the first axis first: one head's tiles, then the next head's) or, ``HEADS_FAST``,
    ``(B·H, tiles)``: the first tile program of every head, then the second of every head, ..."""
    if HEADS_FAST:
        pid_tile = tl.program_id(1)
        pid_bh = tl.program_id(0)
    else:
        pid_tile = tl.program_id(0)
        pid_bh = tl.program_id(1)
    return pid_tile, pid_bh


@triton.jit
def row_program(row_ptr, row_full, row_order, Hq, group, slice_b, slice_h, tiles_m,
                BLOCK_M: tl.constexpr, ROWS: tl.constexpr, ORDERED: tl.constexpr, HEADS_FAST: tl.constexpr):
    """What a forward or dQ program works on: its ``pid_bh = b * Hq + h``, batch ``b``, query head
    ``h``, key/value head ``h_kv``, mask slice, query tile ``pid_m`` (the plan's launch order,
    heaviest rows first, when it has one), first row ``row0`` inside that tile (``BLOCK_M // ROWS``
    programs share a tile), and the entries ``[lo, hi)`` of the tile's row list, of which the
    first ``n_full`` are full."""
    SPLIT: tl.constexpr = BLOCK_M // ROWS  # programs per query tile (usually 1)
    pid_tile, pid_bh = program_ids(HEADS_FAST)
    b = pid_bh // Hq
    h = pid_bh % Hq
    h_kv = h // group  # GQA: `group` consecutive query heads share one key/value head
    mask_slice = b * slice_b + h * slice_h  # slice strides are 0 where the mask broadcasts
    tile = pid_tile // SPLIT
    if ORDERED:
        pid_m = tl.load(row_order + mask_slice * tiles_m + tile)
    else:
        pid_m = tile
    row0 = (pid_tile % SPLIT) * ROWS
    row = mask_slice * tiles_m + pid_m
    lo = tl.load(row_ptr + row)
    n_full = tl.load(row_full + row)
    hi = tl.load(row_ptr + row + 1)
    return pid_bh, b, h, h_kv, mask_slice, pid_m, row0, lo, n_full, hi


L2_KV_FACTOR = 2.0
_H100_L2_BYTES = 50 << 20  # what the interpreter (CPU tensors) decides with
_H100_SMS = 132


def heads_fast(unbalanced: bool, shared: bool, streamed: torch.Tensor, tiles: int) -> bool:
    """Whether a launch of ``tiles`` tile programs per head over lists with these traits
    (``DevicePlan.rows_unbalanced``, ...) should start the first (heaviest) lists of every head
    before the later ones of any, rather than run one head's lists after another (also the only
    grid when ``tiles`` exceeds the grid's second axis). ``streamed`` is what the programs of a
    list share, read with a tensor of the same size: K (and V) for the row lists, Q (and dO) for
    the column lists; with grouped key/value heads the two differ.

    Measured on an H100 (``benchmarks/NOTES.md``): every head first shortens the critical path of
    unbalanced lists (Longformer, BigBird: 1.5× at N = 8192 and 32768), and helps lists that share
    most key tiles (causal, prefix-LM, trees: 3–8% at N = 8192) while the keys and values of all
    heads fit in about twice the L2 cache; past that (N = 32768) it cost them up to 8%, and it costs
    masks of small blocks (documents: up to 30%) the L2 reuse of one head's neighbouring rows.
    """
    if tiles > MAX_GRID_Y:
        return False
    if unbalanced:
        return True
    return shared and 2 * streamed.numel() * streamed.element_size() <= L2_KV_FACTOR * _l2_bytes(streamed.device)


@functools.lru_cache(maxsize=None)
def _l2_bytes(device: torch.device) -> int:
    if device.type != "cuda":
        return _H100_L2_BYTES
    return int(torch.cuda.get_device_properties(device).L2_cache_size)


def group_parts(group: int, unbalanced: bool, programs: int, device: torch.device) -> int:
    """How many dK/dV programs share a key tile's GQA group of ``group`` query heads: 1 (one program
    walks them all, dK/dV summed in registers) or a divisor of ``group`` (each program walks its
    part of the heads and writes a float32 share, summed after).

    Measured on an H100 (``benchmarks/NOTES.md``): walking the group multiplies the longest column's
    program by ``group``, so unbalanced columns split it fully (Longformer, BigBird at 16 query heads
    over 4: 2.2×, over 1: 8×; two heads per program instead of one was 30% slower). A launch of fewer
    programs (``B·Hkv·tiles``) than the GPU has SMs splits it only until there are two programs per
    SM (over one key/value head at 8192, against a full split: causal 2.07 → 1.96 ms, sliding window
    0.645 → 0.590). Otherwise the float32 shares only add traffic.
    """
    sms = _sm_count(device)
    if group == 1 or (not unbalanced and programs >= sms):
        return 1
    if unbalanced:
        return group
    return next(p for p in range(1, group + 1) if group % p == 0 and (programs * p >= 2 * sms or p == group))


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return _H100_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


def launch_grid(tiles: int, heads: int, heads_fast: bool) -> tuple[int, int]:
    """The grid :func:`program_ids` reads, for ``tiles`` tile programs and ``heads`` = B·H."""
    return (heads, tiles) if heads_fast else (tiles, heads)


@triton.jit
def full_run(index, lo, n_full):
    """Where a list's full entries ``[lo, lo + n_full)`` form one run of consecutive tiles (most
    masks): the run's first tile and its length, ``n_full``; else length 0. Plans give full tiles
    in ascending order (validated), so they are a run exactly when the last is ``n_full - 1`` past
    the first. The forward addresses a run's tiles from its first instead of reading the list at
    every step (a load each step waits on); full tiles outside a run go with the partial ones,
    unmasked. (The backward kernels measured slower this way and read their lists throughout.)"""
    first = tl.load(index + lo, mask=n_full > 0, other=0)
    last = tl.load(index + lo + n_full - 1, mask=n_full > 0, other=-1)
    return first, tl.where(last - first == n_full - 1, n_full, 0)


@triton.jit
def perm_rows(perm, first, offs, ok, GATHER: tl.constexpr):
    """The caller's token rows (int64) at plan positions ``first + offs`` of a reordered plan
    (``GATHER``): ``perm[first + offs]``, loaded once per block for every tensor the block reads or
    writes (:func:`seq_ptrs`); positions past the end (``ok`` false) read row 0. Without ``GATHER``
    positions are rows and nothing is loaded (``offs`` is returned, unused)."""
    if GATHER:
        rows = tl.load(perm + first + offs, mask=ok, other=0).to(tl.int64)
    else:
        rows = offs
    return rows


@triton.jit
def seq_ptrs(head, first, offs, stride, offs_d, rows, GATHER: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Pointers to the plan positions ``first + offs`` of one head's ``[N, D]`` sequence (row
    stride ``stride``), head dims ``offs_d``: a ``[rows, D]`` block, or ``[D, rows]`` if ``TRANSPOSED``.

    With ``GATHER`` (a reordered plan) the block's rows are the caller's tokens ``rows`` from
    :func:`perm_rows`: the kernels read and write the caller's tensors through the permutation, so
    reordering costs no copy of q, k, v or of the outputs. Without it the offset of ``first`` is
    folded into an int64 base pointer and the block's own offsets stay int32.
    """
    if GATHER:
        if TRANSPOSED:
            ptrs = head + rows[None, :] * stride + offs_d[:, None]
        else:
            ptrs = head + rows[:, None] * stride + offs_d[None, :]
    else:
        base = head + first.to(tl.int64) * stride
        if TRANSPOSED:
            ptrs = base + offs[None, :] * stride + offs_d[:, None]
        else:
            ptrs = base + offs[:, None] * stride + offs_d[None, :]
    return ptrs


@triton.jit
def tile_bits(tile_words, rows, cols, col0, SPAN: tl.constexpr, WORDS: tl.constexpr):
    """Expand a partial tile's packed bitmap to booleans for a block of ``SPAN`` tile columns.

    ``tile_words`` points at the tile's first word; ``rows`` (tile rows) and ``cols`` (offsets
    ``0 .. SPAN-1`` from the block's first tile column ``col0``) are broadcastable the two ways,
    e.g. ``rows[:, None]`` and ``cols[None, :]`` for a [rows, cols] block, or ``rows[None, :]`` and
    ``cols[:, None]`` for its transpose. ``col0`` is a multiple of ``min(SPAN, 32)``, so the block
    spans ``ceil(SPAN / 32)`` whole words per row: each row loads those few words once (a vector
    load per word) and the bits are fanned out along the columns with shifts, not per-bit loads.
    """
    row_words = tile_words + rows * WORDS + col0 // 32
    word = tl.load(row_words) + cols * 0  # broadcast one word per row to the block's shape
    for w in tl.static_range(1, (SPAN + 31) // 32):
        word = tl.where(cols // 32 == w, tl.load(row_words + w), word)
    return ((word >> ((col0 + cols) % 32)) & 1) != 0


@triton.jit
def load_intervals(slice_intervals, keys, key_ok, Nk):
    """The four interval bounds LTS, LTE, UTS, UTE of key columns ``keys`` (interval plans).

    ``slice_intervals`` points at the slice's ``[4, Nk]`` int32 block. Keys past ``Nk`` read empty
    intervals (nothing masked); the kernels mask them by bounds separately.
    """
    lts = tl.load(slice_intervals + keys, mask=key_ok, other=0)
    lte = tl.load(slice_intervals + Nk + keys, mask=key_ok, other=0)
    uts = tl.load(slice_intervals + 2 * Nk + keys, mask=key_ok, other=0)
    ute = tl.load(slice_intervals + 3 * Nk + keys, mask=key_ok, other=0)
    return lts, lte, uts, ute


@triton.jit
def interval_visible(queries, lts, lte, uts, ute):
    """True where query row ``queries`` lies outside both masked intervals [LTS, LTE) and [UTS, UTE)
    of its key column; all arguments broadcastable (absolute query rows, per-key bounds)."""
    return ((queries < lts) | (queries >= lte)) & ((queries < uts) | (queries >= ute))


@triton.jit
def load_tile(ptrs, a_ok, b_ok, CHECK_A: tl.constexpr, CHECK_B: tl.constexpr):
    """``tl.load`` with the bounds masks only where needed (zeros out of bounds).

    ``a_ok``/``b_ok`` are broadcastable masks for the two axes; a constexpr ``CHECK_*`` flag of False
    drops that mask at compile time, so full interior tiles compile to plain vectorised loads.
    """
    if CHECK_A and CHECK_B:
        x = tl.load(ptrs, mask=a_ok & b_ok, other=0.0)
    elif CHECK_A:
        x = tl.load(ptrs, mask=a_ok, other=0.0)
    elif CHECK_B:
        x = tl.load(ptrs, mask=b_ok, other=0.0)
    else:
        x = tl.load(ptrs)
    return x


def empty(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """Allocate a kernel output (every element is written by a kernel; tests swap in a NaN fill)."""
    return torch.empty(shape, dtype=dtype, device=device)


def lastdim_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The kernels assume unit stride along the head dim (vectorised loads); copy only if not."""
    return t if t.stride(-1) == 1 else t.contiguous()


KERNEL_VARIANTS = ("block_sparse", "intervals")  # dense variants go to a dense library kernel instead


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan) -> dict:
    """Validate shapes, dtypes, devices and the plan against the inputs; return the launch geometry."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D [B, H, N, D]; got {list(q.shape)}, {list(k.shape)}, {list(v.shape)}")
    B, Hq, Nq, D = q.shape
    Bk, Hkv, Nk, Dk = k.shape
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"k and v shapes differ: {list(k.shape)} vs {list(v.shape)}")
    if Bk != B or Dk != D:
        raise ValueError(f"q {list(q.shape)} and k {list(k.shape)} disagree on batch or head dim")
    if Hkv < 1 or Hq % Hkv:
        raise ValueError(f"query heads {Hq} must be a multiple of key/value heads {Hkv}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in _DTYPES:
        raise ValueError(f"q, k, v must share one dtype of {_DTYPES}; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not 1 <= D <= MAX_HEAD_DIM:
        raise ValueError(f"head dim {D} is not supported (1..{MAX_HEAD_DIM})")
    if not (q.device == k.device == v.device):
        raise ValueError("q, k, v are on different devices")
    if plan.row_ptr.device != q.device:
        raise ValueError(f"plan is on {plan.row_ptr.device} but q is on {q.device}; move it with DevicePlan.from_plan(plan, device)")
    variant = getattr(plan, "variant", "block_sparse")
    if variant not in KERNEL_VARIANTS:
        raise ValueError(f"a {variant!r} plan has no tile lists for the Triton kernels (run it with a dense attention kernel); they take {KERNEL_VARIANTS}")
    if plan.block_m not in TILE_SIZES or plan.block_n not in TILE_SIZES:
        raise ValueError(f"plan tiles {plan.block_m}x{plan.block_n} are not supported by the kernels; each side must be one of {TILE_SIZES}")
    # Metadata-only guards against a hand-built DevicePlan (a loaded plan has passed full validation).
    if variant == "intervals":
        if tuple(plan.intervals.shape) != (plan.batch * plan.heads, 4, plan.kv_len):
            raise ValueError(f"interval plan has intervals {list(plan.intervals.shape)}, expected {[plan.batch * plan.heads, 4, plan.kv_len]}")
    elif tuple(plan.bitmaps.shape[1:]) != (plan.block_m, plan.block_n // 32):
        raise ValueError(f"plan bitmaps {list(plan.bitmaps.shape)} do not match its {plan.block_m}x{plan.block_n} tiles")
    if (plan.q_len, plan.kv_len) != (Nq, Nk):
        raise ValueError(f"plan is for {plan.q_len} queries x {plan.kv_len} keys, inputs have {Nq} x {Nk}")
    if B * Hq > MAX_GRID_Y:
        raise ValueError(f"batch * query heads = {B * Hq} exceeds the {MAX_GRID_Y} programs of a CUDA grid's second axis")
    if plan.heads not in (1, Hq):
        raise ValueError(f"plan mask has {plan.heads} heads; it must be 1 (shared) or the {Hq} query heads")
    if plan.batch not in (1, B):
        raise ValueError(f"plan mask has batch {plan.batch}; it must be 1 (shared) or the input batch {B}")
    return dict(
        B=B, Hq=Hq, Hkv=Hkv, Nq=Nq, Nk=Nk, D=D,
        D_PAD=head_dim_bucket(D),
        group=Hq // Hkv,
        # slice s = b * slice_b + h * slice_h (0 where the mask broadcasts)
        slice_b=plan.heads if plan.batch > 1 else 0,
        slice_h=1 if plan.heads > 1 else 0,
        tiles_m=plan.tiles_m,
        tiles_n=plan.tiles_n,
        INTERVALS=variant == "intervals",
    )


def plan_tensor(plan, name: str) -> torch.Tensor:
    """An optional DevicePlan tensor (launch orders, intervals); an empty one if this plan has none."""
    t = getattr(plan, name, None)
    return t if t is not None else plan.row_ptr[:0]


def check_steps(entries: int, steps: int) -> None:
    """The tile loops count ``entry * steps`` in int32; refuse plans that would overflow it."""
    if entries * steps >= 2**31:
        raise ValueError(f"plan has {entries} tile entries; with {steps} sub-steps per tile the int32 loop counter would overflow")


def check_scale(scale: float) -> None:
    """The forward takes each row's running max before scaling, which needs ``scale > 0``."""
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"softmax scale must be a positive finite number, got {scale}")
