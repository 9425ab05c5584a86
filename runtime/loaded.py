"""``load_plan`` and the attention call: everything a training step touches.

A plan is decoded and validated once, moved to a device once, and each call only checks shapes and
launches the backend, forward and backward (through autograd). Nothing is analysed per step.

Three kinds of plan take another route. A ``"dense"`` or ``"dense_causal"`` plan (an all-true or
exactly causal mask) calls ``torch.nn.functional.scaled_dot_product_attention`` with no mask or
``is_causal=True``, cuDNN first on a GPU (the fastest dense kernel there); it does so whatever the
backend, CPU included. A reordered plan is run by the backend itself: the kernels read and write
the caller's tensors through the plan's permutation, so callers never see the reordering and no
gathered copy is made. A plan with dense pieces runs its forward in the tile kernels and its
backward through the pieces with cuDNN's attention backward (``maskc.runtime.pieces``), where the
inputs allow (half precision, a head dim up to 128), else in the tile kernels.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
from pathlib import Path

import torch

from maskc.runtime import format as plan_format
from maskc.runtime import pieces as dense_pieces
from maskc.runtime import reference
from maskc.runtime.device import DevicePlan
from maskc.runtime.format import DENSE_VARIANTS, Plan, PlanError

BACKENDS = ("auto", "triton", "reference")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, dplan, scale, backend, pieces):
        o, lse = backend.forward(q, k, v, dplan, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.dplan, ctx.scale, ctx.backend, ctx.pieces = dplan, scale, backend, pieces
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        if ctx.pieces:
            dq, dk, dv = dense_pieces.backward(do.contiguous(), q, k, v, o, lse, ctx.pieces, ctx.scale)
        else:
            dq, dk, dv = ctx.backend.backward(do.contiguous(), q, k, v, o, lse, ctx.dplan, ctx.scale)
        return dq, dk, dv, None, None, None, None


class LoadedPlan:
    """A validated plan, ready to run: its lists are moved to each device once and kept there."""

    def __init__(self, plan: Plan, device: torch.device | str | None = None):
        self.plan = plan
        self._on: dict[torch.device, DevicePlan] = {}
        if device is not None:
            self.on(torch.device(device))

    def on(self, device: torch.device) -> DevicePlan:
        """The plan's tensors on ``device``, moved there the first time only."""
        device = _canonical(device)
        if device not in self._on:
            self._on[device] = DevicePlan.from_plan(self.plan, device)
        return self._on[device]

    def attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None, backend: str = "auto"
    ) -> torch.Tensor:
        """Masked attention ``softmax(q kᵀ · scale + mask) v`` for ``[B, H, N, D]`` tensors, with autograd.

        ``k``/``v`` may have fewer heads than ``q`` (GQA/MQA: ``Hq`` a multiple of ``Hkv``). ``scale``
        (positive) defaults to ``1/sqrt(D)``. ``backend`` is ``"auto"`` (Triton on CUDA tensors, the
        reference backend elsewhere), ``"triton"`` or ``"reference"``. Rows with no visible key give
        zeros.
        """
        self._check(q, k, v)
        impl = _backend(backend, q)
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale}")
        dplan = self.on(q.device)
        if dplan.variant in DENSE_VARIANTS:
            return _dense(q, k, v, scale, causal=dplan.variant == "dense_causal")
        # A plan with dense pieces runs its backward through them where a dense kernel takes the inputs.
        pieces = dplan.pieces if dplan.pieces and impl is not reference and dense_pieces.supported(q) else ()
        return _Attention.apply(q, k, v, dplan, scale, impl, pieces)

    __call__ = attention

    def _check(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        p = self.plan
        for name, t in (("q", q), ("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or t.dim() != 4:
                raise ValueError(f"{name} must be a 4-D tensor [B, H, N, D], got {_describe(t)}")
        if not (q.dtype == k.dtype == v.dtype) or q.dtype not in _DTYPES + (torch.float64,):
            raise ValueError(f"q, k, v must share one dtype of float16, bfloat16, float32; got {q.dtype}, {k.dtype}, {v.dtype}")
        if not (q.device == k.device == v.device):
            raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
        (b, hq, nq, d), (bk, hkv, nk, dk) = q.shape, k.shape
        if k.shape != v.shape:
            raise ValueError(f"k {list(k.shape)} and v {list(v.shape)} must have the same shape")
        if bk != b or dk != d or hkv == 0 or hq % hkv:
            raise ValueError(f"q {list(q.shape)} and k/v {list(k.shape)} disagree: batch and head dim must match and q heads must be a multiple of kv heads")
        if (nq, nk) != (p.q_len, p.kv_len):
            raise ValueError(f"q/k lengths {nq}x{nk} do not match the plan's mask {p.q_len}x{p.kv_len}")
        if p.batch not in (1, b):
            raise ValueError(f"q batch {b} does not match the plan's mask batch {p.batch} (it must be 1 or {b})")
        if p.heads not in (1, hq):
            raise ValueError(f"q heads {hq} do not match the plan's mask heads {p.heads} (it must be 1 or {hq})")

    def __repr__(self) -> str:
        p = self.plan
        return f"LoadedPlan({p.batch}x{p.heads}x{p.q_len}x{p.kv_len}, block {p.block_m}x{p.block_n}, {p.variant}{', reordered' if p.reordered else ''})"


def load_plan(source: str | os.PathLike | bytes | Plan, device: torch.device | str | None = None) -> LoadedPlan:
    """Load and validate a plan from a path, bytes or a Plan; with ``device``, move it there now."""
    if isinstance(source, Plan):
        plan_format.validate(source)
        plan = source
    elif isinstance(source, (bytes, bytearray, memoryview)):
        plan = plan_format.decode(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        plan = plan_format.load(Path(source))
    else:
        raise PlanError(f"load_plan takes a path, bytes or a Plan, not {type(source).__name__}")
    return LoadedPlan(plan, device)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: LoadedPlan | Plan | str | os.PathLike | bytes, scale: float | None = None, backend: str = "auto"
) -> torch.Tensor:
    """Functional form of :meth:`LoadedPlan.attention`; pass a LoadedPlan to avoid reloading."""
    loaded = plan if isinstance(plan, LoadedPlan) else load_plan(plan)
    return loaded.attention(q, k, v, scale=scale, backend=backend)


def _dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool) -> torch.Tensor:
    """SDPA with no mask or ``is_causal``, cuDNN first on CUDA; grouped k/v heads through
    ``enable_gqa`` (torch >= 2.5), else repeated for their query heads."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    hq, hkv = q.shape[1], k.shape[1]
    with _fastest_sdpa(q):
        if hq == hkv:
            return sdpa(q, k, v, is_causal=causal, scale=scale)
        if _HAS_ENABLE_GQA:
            return sdpa(q, k, v, is_causal=causal, scale=scale, enable_gqa=True)
        k, v = (t[:, :, None].expand(t.shape[0], hkv, hq // hkv, *t.shape[2:]).reshape(q.shape[0], hq, *t.shape[2:]) for t in (k, v))
        return sdpa(q, k, v, is_causal=causal, scale=scale)


_HAS_ENABLE_GQA = torch.__version__ >= "2.5"  # TorchVersion compares as a version


def _fastest_sdpa(q: torch.Tensor):
    """On CUDA, SDPA's backends in the order that measured fastest on an H100 (at N=8192 its own
    choice, flash, ran the causal forward in 0.969 ms and cuDNN in 0.506, ``BENCHMARKS.md``), each
    still taken only where it supports the call; elsewhere SDPA's own choice."""
    if not q.is_cuda or _SDPA_ORDER is None:
        return contextlib.nullcontext()
    return sdpa_kernel(_SDPA_ORDER, set_priority=True)


try:  # set_priority: torch >= 2.6
    from torch.nn.attention import SDPBackend, sdpa_kernel

    _SDPA_ORDER = ([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
                   if "set_priority" in inspect.signature(sdpa_kernel).parameters else None)
except ImportError:  # pragma: no cover  (older torch)
    _SDPA_ORDER = None


def resolve_backend(name: str, on_cuda: bool) -> str:
    """The backend ``name`` runs as for tensors on CUDA (``on_cuda``) or not: ``"triton"`` or
    ``"reference"`` (``"auto"`` is Triton on CUDA, or anywhere under ``TRITON_INTERPRET=1``, else
    the reference)."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "auto":
        return "triton" if on_cuda or os.environ.get("TRITON_INTERPRET") == "1" else "reference"
    return name


def _backend(name: str, q: torch.Tensor):
    name = resolve_backend(name, q.is_cuda)
    if name == "reference":
        return reference
    from maskc.runtime import kernels

    if q.dtype == torch.float64:
        raise ValueError("the triton backend takes float16, bfloat16 or float32; use backend='reference' for float64")
    return kernels


def _canonical(device: torch.device) -> torch.device:
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _describe(t) -> str:
    return f"shape {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
