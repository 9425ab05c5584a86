"""Launch configurations for the block-sparse attention kernels: a small static table, no autotuning.

A configuration is looked up once per plan and call shape from

    (compute capability major, minor, head-dim bucket, dtype name, block_m, block_n)

The tile sizes themselves are the plan's (``block_m``/``block_n``); a configuration only chooses how
the programs work through a tile: ``num_warps`` and ``num_stages`` (software pipelining depth) of each
kernel, the sub-steps (how many key columns (forward, dQ) or query rows (dK/dV) one loop iteration
handles) and the splits (how many of a tile's rows (forward, dQ) or keys (dK/dV) one program owns;
the whole tile unless a wide head does not fit). Every size is a power of two >= 16 (the smallest
``tl.dot`` side) dividing its tile side.

``TABLE`` holds measured entries (empty until the kernels are tuned on a GPU); anything missing
falls back to :func:`default_config`, a heuristic checked with :mod:`.aotcheck` (no register spills
to speak of, shared memory within the limit) on sm_90, sm_80 and sm_89. Under ``TRITON_INTERPRET=1``
only the sub-steps and splits matter (the tests vary them on purpose through :func:`override`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Iterator

import torch

from maskc.runtime.dtypes import dtype_name
from maskc.runtime.format import TILE_SIZES

HEAD_DIM_BUCKETS = (32, 64, 128, 256)  # head dims are padded inside the kernel to the next power of two
MIN_SUB = 16  # tl.dot needs every side >= 16


@dataclass(frozen=True)
class KernelConfig:
    """How the kernels of one call walk their tiles.

    ``fwd_*``: the forward kernel (holds ``fwd_rows`` query rows: the whole query tile, or a slice of
    it so that wide heads fit; ``block_m // fwd_rows`` programs share a tile). ``fwd_sub_n``: key
    columns per step.
    ``dq_*``: the dQ kernel (holds ``dq_rows`` query rows, like the forward). ``dq_sub_n``: key
    columns per step (32 = exactly one bitmap word per query row).
    ``dkdv_*``: the dK/dV kernel (holds ``dkdv_keys`` keys: the whole key tile, or a slice of it so
    that wide heads fit registers; ``block_n // dkdv_keys`` programs share a key tile).
    ``dkdv_sub_m``: query rows per step.
    ``*_warps``/``*_stages``: Triton ``num_warps``/``num_stages`` of that kernel.
    ``fp32_precision``: ``tl.dot`` input precision for float32 inputs ("ieee", "tf32x3" or "tf32").
    """

    fwd_warps: int = 4
    fwd_stages: int = 2
    fwd_sub_n: int = 64
    fwd_rows: int = 128
    dq_warps: int = 4
    dq_stages: int = 2
    dq_sub_n: int = 32
    dq_rows: int = 128
    dkdv_warps: int = 4
    dkdv_stages: int = 2
    dkdv_sub_m: int = 32
    dkdv_keys: int = 128
    fp32_precision: str = "ieee"


# (major, minor, head-dim bucket, dtype name, block_m, block_n) -> config. Filled in by tuning on a GPU;
# the dtype name is one of maskc.runtime.format.DTYPES ("bf16", "fp16", "fp32").
TABLE: dict[tuple[int, int, int, str, int, int], KernelConfig] = {}

# The fields forced by the innermost active override(), as sorted (name, value) pairs. A new tuple
# for every override block, so that what was decided under one (TileKernels) can tell it is stale.
_OVERRIDE: tuple[tuple[str, object], ...] = ()


def head_dim_bucket(head_dim: int) -> int:
    """The padded head dim the kernel computes with: the next power of two, at least 32."""
    for bucket in HEAD_DIM_BUCKETS:
        if head_dim <= bucket:
            return bucket
    raise ValueError(f"head dim {head_dim} is larger than the largest supported ({HEAD_DIM_BUCKETS[-1]})")


def _large_smem(capability: tuple[int, int]) -> bool:
    """A100/H100/B200-class parts (>= 163 KB shared memory per block) versus the ~99 KB of sm_86/89."""
    return capability in ((8, 0), (9, 0)) or capability[0] >= 10


def default_config(capability: tuple[int, int], d_bucket: int, dtype: torch.dtype, block_m: int, block_n: int) -> KernelConfig:
    """Heuristic defaults, checked on sm_90 with ``aotcheck`` (no spills, shared memory in bounds).

    The forward and dQ kernels hold ``block_m`` query rows, the dK/dV kernel ``block_n`` keys: 8 warps
    when the held side is 128, else 4. Sub-steps shrink as the head widens so that the per-step tiles
    (scores, P, dS) and the pipelined K/V (or Q/dO) buffers fit registers and shared memory.
    """
    if dtype == torch.float32:
        return _fp32_config(d_bucket, block_m, block_n)
    wide = d_bucket >= 128
    cfg = KernelConfig(
        fwd_warps=8 if block_m == 128 else 4,
        fwd_stages=3,
        fwd_sub_n=min(block_n, 128 if block_m == 128 and not wide else 64),
        dq_warps=8 if block_m == 128 else 4,
        dq_stages=3,
        dq_sub_n=min(block_n, 32 if wide else 64),
        dkdv_warps=8 if block_n == 128 or (wide and block_n == 64) else 4,
        dkdv_stages=3,
        dkdv_sub_m=min(block_m, 32),
    )
    if d_bucket >= 256:
        # D = 256: programs take a 64-row (forward, dQ) or 32-key (dK/dV) slice of their tile so that
        # the held [rows, 256] operands and accumulators fit registers and shared memory.
        cfg = replace(cfg, fwd_warps=8, fwd_stages=2, fwd_sub_n=min(block_n, 32), fwd_rows=64,
                      dq_warps=8, dq_stages=2, dq_sub_n=16, dq_rows=64,
                      dkdv_warps=8, dkdv_stages=2, dkdv_sub_m=min(block_m, 32), dkdv_keys=32)
    if capability[0] == 8 and wide:
        # Ampere's mma.sync needs more registers than Hopper's wgmma: 64 keys per dK/dV program
        cfg = replace(cfg, dkdv_keys=min(cfg.dkdv_keys, 64))
    if not _large_smem(capability):
        # ~99 KB of shared memory (sm_86/89): shallower pipelines and narrower steps
        cfg = replace(cfg, fwd_stages=2, dq_stages=2, dkdv_stages=2, fwd_sub_n=min(cfg.fwd_sub_n, 64 if not wide else 32),
                      dq_sub_n=min(cfg.dq_sub_n, 32), dkdv_sub_m=min(cfg.dkdv_sub_m, 32 if not wide else 16))
        if d_bucket >= 256:
            cfg = replace(cfg, fwd_rows=32, dq_rows=32, dq_sub_n=32)
    return cfg


def _fp32_config(d_bucket: int, block_m: int, block_n: int) -> KernelConfig:
    """float32 inputs, a debugging/reference path: the exact ("ieee") tl.dot runs on CUDA cores, so
    small steps and no pipelining (it still spills registers at D >= 128; "tf32x3" is the fast
    near-fp32 alternative)."""
    return KernelConfig(
        fwd_warps=8, fwd_stages=1, fwd_sub_n=16 if d_bucket >= 128 else 32,
        dq_warps=8, dq_stages=1, dq_sub_n=16,
        dkdv_warps=8, dkdv_stages=1, dkdv_sub_m=16, dkdv_keys=64 if d_bucket >= 128 else 128,
    )


def lookup(device: torch.device, head_dim: int, dtype: torch.dtype, block_m: int, block_n: int) -> KernelConfig:
    """The configuration for calls on ``device`` (:func:`resolve` with its compute capability)."""
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else (0, 0)
    return resolve(capability, head_dim, dtype, block_m, block_n)


def resolve(capability: tuple[int, int], head_dim: int, dtype: torch.dtype, block_m: int, block_n: int) -> KernelConfig:
    """The configuration for a GPU of ``capability``: the table's entry, else the defaults; then any
    active override; sub-steps clamped to the tiles and checked."""
    if block_m not in TILE_SIZES or block_n not in TILE_SIZES:
        raise ValueError(f"plan tiles {block_m}x{block_n} are not supported by the kernels; each side must be one of {TILE_SIZES}")
    d_bucket = head_dim_bucket(head_dim)
    cfg = TABLE.get((capability[0], capability[1], d_bucket, dtype_name(dtype), block_m, block_n))
    if cfg is None:
        cfg = default_config(capability, d_bucket, dtype, block_m, block_n)
    if _OVERRIDE:
        cfg = replace(cfg, **dict(_OVERRIDE))
    return _clamped(cfg, block_m, block_n)


def _clamped(cfg: KernelConfig, block_m: int, block_n: int) -> KernelConfig:
    """Clamp sub-steps to their tile side and check each is a power of two >= 16 dividing it."""
    sizes = {
        "fwd_sub_n": (min(cfg.fwd_sub_n, block_n), block_n),
        "dq_sub_n": (min(cfg.dq_sub_n, block_n), block_n),
        "dkdv_sub_m": (min(cfg.dkdv_sub_m, block_m), block_m),
        "dkdv_keys": (min(cfg.dkdv_keys, block_n), block_n),
        "fwd_rows": (min(cfg.fwd_rows, block_m), block_m),
        "dq_rows": (min(cfg.dq_rows, block_m), block_m),
    }
    for name, (sub, side) in sizes.items():
        if sub < MIN_SUB or side % sub or sub & (sub - 1):
            raise ValueError(f"kernel config {name}={sub} must be a power of two >= {MIN_SUB} dividing the tile side {side}")
    if cfg.fp32_precision not in ("ieee", "tf32", "tf32x3"):
        raise ValueError(f"kernel config fp32_precision={cfg.fp32_precision!r} is not one of ieee, tf32, tf32x3")
    return replace(cfg, **{name: sub for name, (sub, _) in sizes.items()})


def overrides() -> tuple[tuple[str, object], ...]:
    """The fields the active :func:`override` blocks force (a new object for every block)."""
    return _OVERRIDE


@contextlib.contextmanager
def override(**fields) -> Iterator[None]:
    """Force configuration fields for every launch inside the block (tests, tuning sweeps)."""
    global _OVERRIDE
    unknown = set(fields) - set(KernelConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown kernel config fields {sorted(unknown)}")
    saved = _OVERRIDE
    _OVERRIDE = tuple(sorted({**dict(saved), **fields}.items()))
    try:
        yield
    finally:
        _OVERRIDE = saved


def _sm90_tuned() -> dict[tuple[int, int, int, str, int, int], KernelConfig]:
    """The winners of ``benchmarks/tune.py`` on an H100 SXM (torch 2.11, Triton 3.6; N=8192, 16 heads,
    head dim 128, bf16; causal, documents and sliding-window masks agreed): see benchmarks/NOTES.md."""
    tuned = {
        (128, 128): dict(fwd_warps=8, fwd_stages=3, fwd_sub_n=128, dq_warps=8, dq_stages=3, dq_sub_n=32,
                         dkdv_warps=8, dkdv_stages=2, dkdv_sub_m=64),
        (64, 64): dict(fwd_warps=4, fwd_stages=3, fwd_sub_n=64, dq_warps=4, dq_stages=3, dq_sub_n=64,
                       dkdv_warps=4, dkdv_stages=2, dkdv_sub_m=32),
    }
    return {
        (9, 0, 128, "bf16", bm, bn): replace(default_config((9, 0), 128, torch.bfloat16, bm, bn), **fields)
        for (bm, bn), fields in tuned.items()
    }


TABLE.update(_sm90_tuned())
