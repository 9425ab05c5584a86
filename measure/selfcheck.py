"""GPU self-check of the tile kernels against the float64 reference.

    python -m maskc.measure.selfcheck            # on a CUDA machine
    python -m maskc.measure.selfcheck --quick    # fewer, smaller cases
    TRITON_INTERPRET=1 python -m maskc.measure.selfcheck --quick --device cpu

Prints one line per case: the relative error (:func:`maskc.measure.reference.rel_err`, relative
Frobenius) of o, dq, dk, dv and the absolute error of lse (over rows with a visible key; inf if the
empty rows' lse is not exactly +inf), and PASS/FAIL against a per-dtype tolerance (outputs must
also be finite). Cases cover bitmap and interval plans, bf16/fp16/fp32, D = 32/64/96/128/256,
GQA/MQA, per-head and per-batch masks, ragged and cross-attention lengths, strided inputs and every
tile shape; their masks are the library's (random ones and holes aside). A case whose kernel fails
to compile or launch is reported as ERROR with the exception and the run goes on. The exit status
is 1 if any case failed.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback

import numpy as np
import torch

import maskc
from maskc import library
from maskc.measure.reference import attention, rel_err
from maskc.runtime import kernels
from maskc.runtime.device import DevicePlan

TOLERANCE = {torch.float32: 2e-4, torch.float16: 2e-2, torch.bfloat16: 4e-2}


def patch_interpreter_bf16_dot() -> None:
    """Work around the Triton interpreter's ``tl.dot`` on bfloat16 (CPU tests only).

    The interpreter stores bfloat16 as raw uint16 bits and its ``create_dot`` multiplies those bits
    as integers (triton-lang/triton#11584; bf16 is documented as unsupported in the interpreter).
    Convert bf16 operands to float32 first, as the interpreter's cast path does. Only dot needs it
    here: the kernels do no other arithmetic on bf16 values. No effect on compiled GPU kernels;
    idempotent.
    """
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if getattr(builder.create_dot, "_maskc_bf16", False):
        return
    original = builder.create_dot

    def create_dot(self, a, b, d, *args, **kwargs):
        if a.dtype.scalar == tl.bfloat16:
            a = self.cast_impl(a, tl.float32)
        if b.dtype.scalar == tl.bfloat16:
            b = self.cast_impl(b, tl.float32)
        return original(self, a, b, d, *args, **kwargs)

    create_dot._maskc_bf16 = True
    builder.create_dot = create_dot


# --------------------------------------------------------------------------------------------------
# masks: library masks as dense [Nq, Nk] arrays (the kernel tests build theirs here too)
# --------------------------------------------------------------------------------------------------

def causal(nq: int, nk: int) -> np.ndarray:
    """The causal mask, bottom-right aligned (query i sees keys <= i + nk - nq)."""
    n = max(nq, nk)
    return library.causal(n).to_dense()[0, 0][n - nq:, n - nk:]


def sliding_window(nq: int, nk: int, window: int) -> np.ndarray:
    """The causal sliding window (query i sees keys i - window < j <= i)."""
    n = max(nq, nk)
    return library.sliding_window(n, window, causal=True).to_dense()[0, 0][:nq, :nk]


def documents(n: int, lengths: list[int], causal_within: bool = True) -> np.ndarray:
    """Packed documents over ``n`` tokens: ``lengths`` cut at ``n``, the tokens after them one more document."""
    packed, total = [], 0
    for length in lengths:
        length = min(length, n - total)
        if length:
            packed.append(length)
            total += length
    if total < n:
        packed.append(n - total)
    return library.documents(packed, causal=causal_within).to_dense()[0, 0]


def random_mask(shape, density: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(shape) < density


def with_holes(mask: np.ndarray, seed: int) -> np.ndarray:
    """Empty some query rows and one whole block of the mask (empty rows, fully empty tiles)."""
    mask = mask.copy()
    rng = np.random.default_rng(seed)
    nq, nk = mask.shape[-2:]
    mask[..., rng.choice(nq, size=max(1, nq // 10), replace=False), :] = False
    mask[..., nq // 4: nq // 2, nk // 4: nk // 2] = False
    return mask


# --------------------------------------------------------------------------------------------------
# one case
# --------------------------------------------------------------------------------------------------

def lse_err(lse: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs error of lse on rows with visible keys; inf if the empty rows are not exactly +inf."""
    lse, ref = lse.detach().to(torch.float64), ref.detach().to(torch.float64)
    empty = torch.isinf(ref)
    if not torch.equal(torch.isposinf(lse), empty):
        return math.inf
    return (lse[~empty] - ref[~empty]).abs().max().item() if (~empty).any() else 0.0


def run_case(mask_np: np.ndarray, *, B: int, Hq: int, Hkv: int, D: int, dtype: torch.dtype, block, device,
             scale: float | None = None, backward: bool = True, seed: int = 0, layout: str = "bhnd",
             variant: str = "block_sparse") -> dict:
    """Compile ``mask_np``, run the kernels, compare with the reference; return the error row."""
    plan = maskc.compile(mask_np, block=block, variant=variant, reorder="none")  # launch order: the compiler's default
    dplan = DevicePlan.from_plan(plan, device)
    nq, nk = plan.q_len, plan.kv_len
    gen = torch.Generator(device="cpu").manual_seed(seed)
    if layout == "bnhd":  # [B, N, H, D] storage viewed as [B, H, N, D]: non-contiguous strides
        q = torch.randn(B, nq, Hq, D, generator=gen).to(device, dtype).transpose(1, 2)
        k = torch.randn(B, nk, Hkv, D, generator=gen).to(device, dtype).transpose(1, 2)
        v = torch.randn(B, nk, Hkv, D, generator=gen).to(device, dtype).transpose(1, 2)
    else:
        q = torch.randn(B, Hq, nq, D, generator=gen).to(device, dtype)
        k = torch.randn(B, Hkv, nk, D, generator=gen).to(device, dtype)
        v = torch.randn(B, Hkv, nk, D, generator=gen).to(device, dtype)
    do = torch.randn(B, Hq, nq, D, generator=gen).to(device, dtype)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    ref = attention(q, k, v, plan.to_mask(), scale, do if backward else None)

    o, lse = kernels.forward(q, k, v, dplan, scale)
    row = {"o": rel_err(o, ref.out), "lse": lse_err(lse, ref.lse)}
    outs = [o, lse.masked_fill(torch.isposinf(lse), 0)]
    if backward:
        dq, dk, dv = kernels.backward(do, q, k, v, o, lse, dplan, scale)
        row.update(dq=rel_err(dq, ref.dq), dk=rel_err(dk, ref.dk), dv=rel_err(dv, ref.dv))
        outs += [dq, dk, dv]
        if not (dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape):
            row["shape"] = False
    row["finite"] = all(bool(torch.isfinite(t).all()) for t in outs)
    return row


def cases(quick: bool, seq: int | None = None):
    """(name, mask, kwargs) for the self-check table; ``seq`` overrides the sequence length."""
    n = seq or (512 if quick else 1024)
    n2 = int(n * 0.76) - 1 if seq else (300 if quick else 777)  # a ragged length
    out = []
    for dtype in (torch.bfloat16, torch.float16):
        for D in (64, 128):
            out.append((f"causal {n}", causal(n, n), dict(B=2, Hq=4, Hkv=4, D=D, dtype=dtype, block=(128, 128))))
            out.append((f"random0.5 {n}", random_mask((n, n), 0.5, 1), dict(B=1, Hq=4, Hkv=2, D=D, dtype=dtype, block=(64, 64))))
            out.append((f"docs+holes {n}", with_holes(documents(n, [100, 300, 57, 400]), 2), dict(B=2, Hq=4, Hkv=1, D=D, dtype=dtype, block=(128, 64))))
            out.append((f"window ragged {n2}x{n2}", sliding_window(n2, n2, 100), dict(B=1, Hq=2, Hkv=2, D=D, dtype=dtype, block=(64, 128))))
            out.append((f"cross {n2}x{n}", random_mask((n2, n), 0.05, 3), dict(B=1, Hq=2, Hkv=1, D=D, dtype=dtype, block=(32, 32))))
    bf16 = torch.bfloat16
    # ragged lengths (bounds-checked kernel variants) with the tuned sm_90 tiles at D = 128
    out.append((f"causal ragged {n2}", causal(n2, n2), dict(B=2, Hq=4, Hkv=2, D=128, dtype=bf16, block=(128, 128))))
    out.append((f"docs+holes ragged {n2}", with_holes(documents(n2, [n2 // 3, n2 // 2]), 7), dict(B=1, Hq=4, Hkv=4, D=128, dtype=bf16, block=(64, 64))))
    # one key/value head for 16 query heads: the dK/dV programs split the group into parts
    out.append((f"MQA 16:1 causal {n}", causal(n, n), dict(B=4, Hq=16, Hkv=1, D=64, dtype=bf16, block=(64, 64))))
    out.append((f"per-head random {n2}", random_mask((4, n2, n2), 0.3, 4), dict(B=2, Hq=4, Hkv=2, D=96, dtype=bf16, block=(64, 64))))
    out.append((f"per-batch causal/docs {n}", np.stack([causal(n, n), documents(n, [n // 3, n // 3, n // 3])])[:, None], dict(B=2, Hq=2, Hkv=2, D=64, dtype=torch.float16, block=(128, 128))))
    out.append((f"bnhd strides causal {n}", causal(n, n), dict(B=2, Hq=4, Hkv=2, D=128, dtype=bf16, block=(128, 128), layout="bnhd")))
    out.append((f"scale=0.3 window {n}", sliding_window(n, n, 256), dict(B=1, Hq=2, Hkv=2, D=64, dtype=torch.float16, block=(64, 64), scale=0.3)))
    out.append((f"fp32 random0.95 {n2}", random_mask((n2, n2), 0.95, 5), dict(B=1, Hq=2, Hkv=1, D=64, dtype=torch.float32, block=(64, 64))))
    out.append((f"fp32 causal {n}", causal(n, n), dict(B=1, Hq=2, Hkv=2, D=128, dtype=torch.float32, block=(128, 128))))
    out.append((f"D=256 fwd causal {n}", causal(n, n), dict(B=1, Hq=2, Hkv=2, D=256, dtype=bf16, block=(128, 128), backward=False)))
    out.append((f"D=256 fwd+bwd docs {n}", documents(n, [n // 2, n // 2]), dict(B=1, Hq=2, Hkv=1, D=256, dtype=bf16, block=(64, 64))))
    out.append((f"intervals causal {n}", causal(n, n), dict(B=2, Hq=4, Hkv=2, D=128, dtype=bf16, block=(128, 128), variant="intervals")))
    out.append((f"intervals docs/heads {n}", np.stack([documents(n, [n // 4, n // 2, n // 4]), sliding_window(n, n, 100)]),
                dict(B=1, Hq=2, Hkv=1, D=64, dtype=torch.float16, block=(64, 64), variant="intervals")))
    out.append((f"intervals window {n2}", sliding_window(n2, n2, 64), dict(B=1, Hq=2, Hkv=2, D=64, dtype=bf16, block=(128, 64), variant="intervals")))
    out.append((f"D=32 random0.5 {n2}", random_mask((n2, n2), 0.5, 6), dict(B=1, Hq=2, Hkv=2, D=32, dtype=torch.float16, block=(32, 64))))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sequence lengths")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--filter", default="", help="only cases whose name contains this")
    parser.add_argument("--seq", type=int, default=None, help="sequence length of every case (default 1024, --quick 512)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    import triton

    if device.type != "cuda":
        patch_interpreter_bf16_dot()

    info = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreter)"
    print(f"maskc kernel self-check: {info}, torch {torch.__version__}, triton {triton.__version__}")
    header = f"{'case':<30} {'dtype':<9} {'D':>3} {'heads':>5} {'tile':>7} | {'o':>8} {'lse':>8} {'dq':>8} {'dk':>8} {'dv':>8} | {'time':>6}  result"
    print(header)
    print("-" * len(header))
    failed = 0
    for name, mask, kw in cases(args.quick, args.seq):
        if args.filter and args.filter not in name:
            continue
        dtype, D = kw["dtype"], kw["D"]
        tol = TOLERANCE[dtype]
        label = f"{name:<30} {str(dtype).removeprefix('torch.'):<9} {D:>3} {kw['Hq']:>2}/{kw['Hkv']:<2} {kw['block'][0]:>3}x{kw['block'][1]:<3}"
        t0 = time.perf_counter()
        try:
            row = run_case(mask, device=device, **kw)
        except Exception as e:  # report and go on: one bad config must not hide the rest
            failed += 1
            print(f"{label} | ERROR {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:400])
            traceback.print_exc(limit=3, file=sys.stdout)
            continue
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        errs = [row.get(key) for key in ("o", "lse", "dq", "dk", "dv")]
        ok = row["finite"] and row.get("shape", True) and all(e is None or e <= tol for e in errs[:1] + errs[2:]) and errs[1] <= 10 * tol
        failed += not ok
        cells = " ".join(f"{e:8.1e}" if e is not None else f"{'-':>8}" for e in errs)
        print(f"{label} | {cells} | {dt:5.1f}s  {'PASS' if ok else 'FAIL'}{'' if row['finite'] else ' (non-finite output)'}")
    print(f"{'all passed' if not failed else f'{failed} case(s) failed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
