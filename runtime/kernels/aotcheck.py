"""Compile the kernels ahead of time for a GPU target, on any machine (no GPU needed).

    python -m maskc.runtime.kernels.aotcheck                       # sm_90, the default config table
    python -m maskc.runtime.kernels.aotcheck --arch 80 --dtype bf16 --head-dim 128
    python -m maskc.runtime.kernels.aotcheck --set fwd_sub_n=64 --set fwd_stages=3 --tiles 128x128

For each (dtype, head dim, tiles, even/ragged, bitmap/interval plan, plain/reordered) it compiles the forward, dQ
and dK/dV kernels to a cubin with the configuration ``config.lookup`` would pick on that GPU (the
launch-order variant with every head first, ``ORDERED=True, HEADS_FAST=True``), and prints shared memory,
registers and spill bytes (from ``cuobjdump -res-usage``). A compile error, shared memory over the
GPU's limit, or spills are flagged. A development tool for tuning ``config.TABLE``: it uses
Triton's ``ASTSource``/``GPUTarget`` compile entry points and the ptxas/cuobjdump Triton ships.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from maskc.runtime.dtypes import torch_dtype
from maskc.runtime.format import DTYPES
from maskc.runtime.kernels import bwd, config, fwd
from maskc.runtime.kernels.launches import dot_precision

SMEM_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024, 100: 227 * 1024}
_POINTERS_I32 = {"row_lo", "row_hi", "row_full", "row_col", "row_tile", "col_lo", "col_hi", "col_full", "col_row", "col_tile",
                 "bitmaps", "intervals", "row_order", "col_order", "perm_q", "perm_k"}
_POINTERS_F32 = {"LSE", "DELTA"}


def _signature(fn, dtype: str, constexprs: dict):
    """A launch signature like the one the JIT builds for contiguous inputs (16-aligned pointers/strides)."""
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in _POINTERS_I32 or name in _POINTERS_F32 or name.isupper():
            sig[name] = "*i32" if name in _POINTERS_I32 else "*fp32" if name in _POINTERS_F32 else f"*{dtype}"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in ("scale", "qk_scale"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
            if name.startswith("stride"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, attrs


def _resources(kernel) -> str:
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
    try:
        out = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    m = re.search(r"REG:(\d+).*?STACK:(\d+)", out, re.S)
    return (m.group(1), m.group(2)) if m else ("?", "?")


def compile_kernel(fn, dtype: str, constexprs: dict, num_warps: int, num_stages: int, arch: int):
    sig, attrs = _signature(fn, dtype, constexprs)
    src = ASTSource(fn, sig, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=num_warps, num_stages=num_stages))


def check(arch: int, dtype: str, head_dim: int, bm: int, bn: int, even: bool, overrides: dict, intervals: bool = False,
          gather: bool = False) -> list[str]:
    with config.override(**overrides):
        cfg = config.resolve((arch // 10, arch % 10), head_dim, torch_dtype(dtype), bm, bn)
    base = dict(HEAD_DIM=head_dim, D_PAD=config.head_dim_bucket(head_dim), BLOCK_M=bm, BLOCK_N=bn, EVEN_M=even, EVEN_N=even,
                DOT_PRECISION=dot_precision(torch_dtype(dtype), cfg), INTERVALS=intervals, ORDERED=True, HEADS_FAST=True, GATHER=gather)
    rows = []
    # steps: the config's sub-steps (printed); heads: the backward kernels' GQA constexprs, one
    # key/value head per query head
    for name, fn, steps, heads, warps, stages in (
        ("fwd", fwd._fwd_kernel, dict(SUB_N=cfg.fwd_sub_n, ROWS=cfg.fwd_rows), {}, cfg.fwd_warps, cfg.fwd_stages),
        ("dq", bwd._dq_kernel, dict(SUB_N=cfg.dq_sub_n, ROWS=cfg.dq_rows), dict(GROUP=1), cfg.dq_warps, cfg.dq_stages),
        ("dkdv", bwd._dkdv_kernel, dict(SUB_M=cfg.dkdv_sub_m, KEYS=cfg.dkdv_keys), dict(GROUP=1, PARTS=1),
         cfg.dkdv_warps, cfg.dkdv_stages),
    ):
        sub = "/".join(str(x) for x in steps.values())
        kind = ("iv-" if intervals else "") + ("g-" if gather else "") + ("even" if even else "ragged")
        label = f"{dtype:<5}{head_dim:>4} {bm:>3}x{bn:<3} {kind:<9} {name:<5} w={warps} s={stages} sub={sub:<6}"
        try:
            kernel = compile_kernel(fn, dtype, {**base, **steps, **heads}, warps, stages, arch)
        except Exception as e:  # report and go on
            rows.append(f"{label} COMPILE ERROR {type(e).__name__}: {str(e).strip().splitlines()[-1][:200]}")
            continue
        smem = kernel.metadata.shared
        regs, spill = _resources(kernel)
        flags = []
        if smem > SMEM_LIMIT.get(arch, 227 * 1024):
            flags.append("SMEM OVER LIMIT")
        if spill not in ("0", "?"):
            flags.append("spills")
        rows.append(f"{label} smem={smem:>6} regs={regs:>3} stack={spill:>5} {' '.join(flags)}")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability as an integer, e.g. 80, 90")
    parser.add_argument("--dtype", action="append", choices=DTYPES, help=f"repeatable; default {' '.join(DTYPES)}")
    parser.add_argument("--head-dim", type=int, action="append", help="repeatable; default 64 96 128 256")
    parser.add_argument("--tiles", action="append", help="repeatable, e.g. 128x128; default all")
    parser.add_argument("--ragged", action="store_true", help="also compile the ragged (bounds-checked) variants")
    parser.add_argument("--intervals", action="store_true", help="also compile the interval-plan variants")
    parser.add_argument("--gather", action="store_true", help="also compile the reordered-plan variants (rows read through perm)")
    parser.add_argument("--set", action="append", default=[], help="config override field=value, repeatable")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, value = item.split("=", 1)
        overrides[key] = value if key == "fp32_precision" else int(value)
    tiles = [tuple(int(x) for x in t.split("x")) for t in args.tiles] if args.tiles else [(a, b) for a in config.TILE_SIZES for b in config.TILE_SIZES]
    bad = 0
    print(f"triton {triton.__version__}, target sm_{args.arch}")
    for dtype in args.dtype or DTYPES:
        for head_dim in args.head_dim or [64, 96, 128, 256]:
            for bm, bn in tiles:
                for intervals in (False, True) if args.intervals else (False,):
                    for gather in (False, True) if args.gather else (False,):
                        for even in (True, False) if args.ragged else (True,):
                            for row in check(args.arch, dtype, head_dim, bm, bn, even, overrides, intervals, gather):
                                bad += ("ERROR" in row) or ("OVER LIMIT" in row)
                                print(row, flush=True)
    print("no compile errors, shared memory within limits" if not bad else f"{bad} kernel(s) failed to compile or exceed shared memory")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
