"""How the tile kernels launch for one plan and one call shape, decided once.

:func:`plan_launches` checks what the kernels need beyond a valid call (:func:`maskc.runtime.call.check_call`):
a plan with tile lists, tile sizes and a head dim they compile for, a grid and loop counters that
fit, CUDA tensors (or the interpreter). It then fixes each kernel's launch: the configuration
(:mod:`.config`), the grid order (:func:`heads_fast`), the GQA split of the dK/dV programs
(:func:`group_parts`) and every constexpr. A :class:`Launch` holds plain values only, so a call
that launches it needs nothing but its tensors and the softmax scale.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from maskc.runtime.call import Call
from maskc.runtime.device import DevicePlan
from maskc.runtime.dtypes import TORCH_DTYPES
from maskc.runtime.kernels import config
from maskc.runtime.kernels.common import KERNEL_VARIANTS, is_interpreted

MAX_HEAD_DIM = 256
MAX_GRID_Y = 65535  # the grid's second axis: batch * heads, or the tile programs (launch_grid)
L2_KV_FACTOR = 2.0
_H100_L2_BYTES = 50 << 20  # what the interpreter (CPU tensors) decides with
_H100_SMS = 132


class Launch(NamedTuple):
    """One kernel launch: its grid, and its scalar and constexpr arguments by name (``num_warps``
    and ``num_stages`` included): ints, bools and strings."""

    grid: tuple[int, int]
    params: dict[str, int | bool | str]


class Launches(NamedTuple):
    """The launches of the forward, dQ and dK/dV kernels for one plan and call shape."""

    fwd: Launch
    dq: Launch
    dkdv: Launch


def plan_launches(plan: DevicePlan, call: Call) -> Launches:
    """Check that the kernels run ``plan`` for ``call`` and decide their launches; a ValueError
    naming what they do not take."""
    _check_call(plan, call)
    cfg = config.lookup(call.device, call.head_dim, call.dtype, plan.block_m, plan.block_n)  # checks the tile sizes
    _check_arrays(plan)
    check_steps(plan.row_col.numel(), plan.block_n // cfg.fwd_sub_n)
    check_steps(plan.row_col.numel(), plan.block_n // cfg.dq_sub_n)
    check_steps(plan.col_row.numel(), plan.block_m // cfg.dkdv_sub_m)
    b, hq, hkv, d = call.batch, call.q_heads, call.kv_heads, call.head_dim
    shared = dict(
        HEAD_DIM=d, D_PAD=config.head_dim_bucket(d), BLOCK_M=plan.block_m, BLOCK_N=plan.block_n,
        EVEN_M=call.q_len % plan.block_m == 0, EVEN_N=call.kv_len % plan.block_n == 0,
        INTERVALS=plan.variant == "intervals", GATHER=plan.reordered, DOT_PRECISION=dot_precision(call.dtype, cfg),
    )
    # slice s = b * slice_b + h * slice_h (0 where the mask broadcasts)
    # slice s's permutations are perm_q[s * perm_q_stride ...], perm_k[s * perm_k_stride ...] (0: one for all)
    perm_q_stride, perm_k_stride = plan.perm_strides
    sizes = dict(Nq=call.q_len, Nk=call.kv_len, slice_b=plan.heads if plan.batch > 1 else 0, slice_h=1 if plan.heads > 1 else 0,
                 perm_q_stride=perm_q_stride, perm_k_stride=perm_k_stride)
    row_order, col_order = plan.row_order.numel() > 0, plan.col_order.numel() > 0
    # the programs of a row list share K and V rows; those of a column list, Q and dO rows
    kv_bytes = b * hkv * call.kv_len * d * call.dtype.itemsize
    q_bytes = b * hq * call.q_len * d * call.dtype.itemsize

    fwd_programs = plan.tiles_m * (plan.block_m // cfg.fwd_rows)
    fwd_fast = heads_fast(plan.rows_unbalanced, plan.rows_shared, kv_bytes, fwd_programs, call.device)
    fwd = Launch(launch_grid(fwd_programs, b * hq, fwd_fast), dict(
        Hq=hq, group=call.group, tiles_m=plan.tiles_m, **sizes, **shared,
        SUB_N=cfg.fwd_sub_n, ROWS=cfg.fwd_rows, ORDERED=row_order, HEADS_FAST=fwd_fast,
        num_warps=cfg.fwd_warps, num_stages=cfg.fwd_stages))

    dq_programs = plan.tiles_m * (plan.block_m // cfg.dq_rows)
    dq_fast = heads_fast(plan.rows_unbalanced, plan.rows_shared, kv_bytes, dq_programs, call.device)
    dq = Launch(launch_grid(dq_programs, b * hq, dq_fast), dict(
        Hq=hq, tiles_m=plan.tiles_m, **sizes, GROUP=call.group, **shared,
        SUB_N=cfg.dq_sub_n, ROWS=cfg.dq_rows, ORDERED=row_order, HEADS_FAST=dq_fast,
        num_warps=cfg.dq_warps, num_stages=cfg.dq_stages))

    dkdv_programs = plan.tiles_n * (plan.block_n // cfg.dkdv_keys)
    dkdv_fast = heads_fast(plan.cols_unbalanced, plan.cols_shared, q_bytes, dkdv_programs, call.device)
    parts = group_parts(call.group, plan.cols_unbalanced, b * hkv * dkdv_programs, call.device)
    dkdv = Launch(launch_grid(dkdv_programs, b * hkv * parts, dkdv_fast), dict(
        Hq=hq, Hkv=hkv, tiles_n=plan.tiles_n, **sizes, GROUP=call.group, PARTS=parts, **shared,
        SUB_M=cfg.dkdv_sub_m, KEYS=cfg.dkdv_keys, ORDERED=col_order, HEADS_FAST=dkdv_fast,
        num_warps=cfg.dkdv_warps, num_stages=cfg.dkdv_stages))
    return Launches(fwd, dq, dkdv)


def _check_call(plan: DevicePlan, call: Call) -> None:
    """What the kernels need of a call and its plan beyond the call's own checks."""
    if call.dtype not in TORCH_DTYPES.values():
        raise ValueError(f"the Triton kernels take dtype float16, bfloat16 or float32, not {call.dtype}; "
                         f"use backend='reference' for float64")
    if call.device.type != "cuda" and not is_interpreted():
        raise ValueError(f"the Triton kernels run on CUDA tensors, and these are on {call.device}: use CUDA tensors, "
                         f"backend='reference', or set TRITON_INTERPRET=1 before maskc.runtime.kernels is first imported "
                         f"to run them in Triton's interpreter")
    if plan.row_lo.device != call.device:
        raise ValueError(f"plan is on {plan.row_lo.device} but q is on {call.device}; move it with DevicePlan.from_plan(plan, device)")
    if plan.variant not in KERNEL_VARIANTS:
        raise ValueError(f"a {plan.variant!r} plan has no tile lists for the Triton kernels (run it with a dense attention kernel); "
                         f"they take {KERNEL_VARIANTS}")
    if not call.head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"head dim {call.head_dim} is not supported by the kernels (1..{MAX_HEAD_DIM})")
    if call.batch * call.q_heads > MAX_GRID_Y:
        raise ValueError(f"batch * query heads = {call.batch * call.q_heads} exceeds the {MAX_GRID_Y} programs of a CUDA grid's second axis")


def _check_arrays(plan: DevicePlan) -> None:
    """Metadata-only guards against a hand-built DevicePlan (a loaded plan has passed full validation)."""
    if plan.variant == "intervals":
        if tuple(plan.intervals.shape) != (plan.batch * plan.heads, 4, plan.kv_len):
            raise ValueError(f"interval plan has intervals {list(plan.intervals.shape)}, expected {[plan.batch * plan.heads, 4, plan.kv_len]}")
    elif tuple(plan.bitmaps.shape[1:]) != (plan.block_m, plan.block_n // 32):
        raise ValueError(f"plan bitmaps {list(plan.bitmaps.shape)} do not match its {plan.block_m}x{plan.block_n} tiles")


def dot_precision(dtype: torch.dtype, cfg: config.KernelConfig) -> str:
    """``tl.dot``'s input precision: the configuration's for float32 inputs (ignored for 16-bit ones)."""
    return cfg.fp32_precision if dtype == torch.float32 else "tf32"


def check_steps(entries: int, steps: int) -> None:
    """The tile loops count ``entry * steps`` in int32; refuse plans that would overflow it."""
    if entries * steps >= 2**31:
        raise ValueError(f"plan has {entries} tile entries; with {steps} sub-steps per tile the int32 loop counter would overflow")


def heads_fast(unbalanced: bool, shared: bool, streamed_bytes: int, tiles: int, device: torch.device) -> bool:
    """Whether a launch of ``tiles`` tile programs per head over lists with these traits
    (``DevicePlan.rows_unbalanced``, ...) should start the first (heaviest) lists of every head
    before the later ones of any, rather than run one head's lists after another (also the only
    grid when ``tiles`` exceeds the grid's second axis). ``streamed_bytes`` is the size of what the
    programs of a list share: K (and V as much again) for the row lists, Q (and dO) for the column
    lists; with grouped key/value heads the two differ.

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
    return shared and 2 * streamed_bytes <= L2_KV_FACTOR * _l2_bytes(device)


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
    """The grid ``common.program_ids`` reads, for ``tiles`` tile programs and ``heads`` = B·H."""
    return (heads, tiles) if heads_fast else (tiles, heads)
