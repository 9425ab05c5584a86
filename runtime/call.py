"""One attention call's inputs, checked once against a plan.

:func:`check_call` is the one place where q, k and v are checked: their shapes against each other
and against the plan's mask, their dtypes and devices. What it establishes is a :class:`Call`,
which depends only on the inputs' shapes, dtypes and devices: ``LoadedPlan`` keeps it per call
shape, so a training step repeats none of these checks, and the backends trust it.

The softmax scale is the one argument checked at every call (:meth:`Call.scale`, a comparison).
Its upper limit follows from the float32 arithmetic of the softmax. The kernels compute in base 2:
each probability is ``exp2(s - lse2)`` with the scaled score ``s = scale · (q·k) · log2(e)`` and
the row's log-sum-exp ``lse2``, both float32, and the backward recomputes it from a score and an
lse that were each rounded on their own path. Float32 holds a number of size ``2**24`` only to
within 1, so past ``|s| = 2**24`` the recomputed probabilities can be off by a factor of 2 and
more, and from about ``2**29`` (where one rounding is 32 and a few of them reach the 128 that
``exp2`` overflows at) they overflow to inf and the gradients turn NaN. The limit on the scale is
where inputs whose entries are at most 1 in magnitude (``|q·k| <= D``) can reach ``2**24``:
``scale < 2**24 · ln(2) / D``. Larger inputs at a smaller scale are the caller's to keep in range.
The reference backend computes float64 inputs in float64, whose 53 bits take the place of the 24.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

from maskc.runtime.dtypes import TORCH_DTYPES

CALL_DTYPES = (*TORCH_DTYPES.values(), torch.float64)  # float64 runs on the reference backend only


class MaskShape(Protocol):
    """What the checks read of a plan (a ``Plan`` or a ``DevicePlan``)."""

    q_len: int
    kv_len: int
    batch: int
    heads: int


@dataclass(frozen=True)
class Call:
    """The facts of one call that :func:`check_call` established, and its scale limits."""

    batch: int
    q_heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device
    default_scale: float  # 1 / sqrt(head_dim)
    max_scale: float  # exclusive; see the module docstring

    @property
    def group(self) -> int:
        """Query heads per key/value head (grouped-query attention; 1 without)."""
        return self.q_heads // self.kv_heads

    def scale(self, scale: float | None) -> float:
        """The softmax scale of a call: the default for None, else ``scale`` if ``0 < scale < max_scale``."""
        if scale is None:
            return self.default_scale
        scale = float(scale)
        if not 0.0 < scale < self.max_scale:  # NaN fails both comparisons
            bits = _softmax_bits(self.dtype)
            raise ValueError(
                f"scale must be positive and below {self.max_scale:.4g} (2**{bits} * ln(2) / head dim {self.head_dim}), got {scale}: "
                f"the softmax computes in {'float64' if bits == 53 else 'float32'}, and past that scale inputs with entries of "
                f"size 1 give base-2 scores it cannot hold to within 1, so the backward's probabilities go wrong and then "
                f"overflow (NaN gradients)")
        return scale


def check_call(plan: MaskShape, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Call:
    """Check q ``[B, Hq, Nq, D]`` and k, v ``[B, Hkv, Nk, D]`` against each other and against the
    plan's mask; a ValueError naming the shapes, dtypes or devices at fault."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor [B, H, N, D], got {_describe(t)}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in CALL_DTYPES:
        raise ValueError(f"q, k, v must share one dtype of float16, bfloat16, float32 (or float64 on the reference backend); "
                         f"got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    (b, hq, nq, d), (bk, hkv, nk, dk) = q.shape, k.shape
    if k.shape != v.shape:
        raise ValueError(f"k {list(k.shape)} and v {list(v.shape)} must have the same shape")
    if bk != b or dk != d:
        raise ValueError(f"q {list(q.shape)} and k/v {list(k.shape)} disagree: batch and head dim must match")
    if hkv == 0 or hq % hkv:
        raise ValueError(f"q heads {hq} must be a multiple of kv heads {hkv} (q {list(q.shape)}, k/v {list(k.shape)})")
    if d == 0:
        raise ValueError(f"q {list(q.shape)} has head dim 0")
    if (nq, nk) != (plan.q_len, plan.kv_len):
        raise ValueError(f"q/k lengths {nq}x{nk} do not match the plan's mask {plan.q_len}x{plan.kv_len}")
    if plan.batch not in (1, b):
        raise ValueError(f"q batch {b} does not match the plan's mask batch {plan.batch} (it must be 1 or {b})")
    if plan.heads not in (1, hq):
        raise ValueError(f"q heads {hq} do not match the plan's mask heads {plan.heads} (it must be 1 or {hq})")
    return Call(batch=b, q_heads=hq, kv_heads=hkv, q_len=nq, kv_len=nk, head_dim=d, dtype=q.dtype, device=q.device,
                default_scale=1.0 / math.sqrt(d), max_scale=2.0 ** _softmax_bits(q.dtype) * math.log(2) / d)


def _softmax_bits(dtype: torch.dtype) -> int:
    """The significand bits of the float the softmax computes in: float64 (53) for float64 inputs,
    else float32 (24)."""
    return 53 if dtype == torch.float64 else 24


def _describe(t) -> str:
    return f"shape {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
