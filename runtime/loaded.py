"""``load_plan`` and the attention call: everything a training step touches.

A plan is decoded and validated once and moved to a device once. A call's inputs are checked at
the first call of each shape, dtype, device and backend (``maskc.runtime.call``), which also readies
the backend for the plan and that shape (the kernels' launches are decided there); later calls of
that shape find it by a dictionary lookup, check the scale and launch, forward and backward
(through autograd). Nothing is analysed per step.

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
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from maskc.runtime import format as plan_format
from maskc.runtime import ops
from maskc.runtime import pieces as dense_pieces
from maskc.runtime import reference
from maskc.runtime.call import Call, check_call
from maskc.runtime.device import DevicePlan
from maskc.runtime.format import DENSE_VARIANTS, FamilyPlan, Plan, PlanError

if TYPE_CHECKING:
    from maskc.runtime.bound import LoadedFamily

BACKENDS = ("auto", "triton", "reference")
MAX_ROUTES = 64  # call shapes remembered per plan (a loop with ever new shapes starts over past this)


class TileBackend(Protocol):
    """A backend made ready for one plan and call shape (``kernels.TileKernels``, ``reference.Reference``)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]: ...

    def backward(self, do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
                 scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True)
class Route:
    """How calls of one shape, dtype, device and backend run through a plan, decided at the first:
    through ``tiles`` (a ready backend) with autograd, the backward through the plan's dense
    ``pieces`` where the inputs allow; or, for a dense plan (``tiles`` None), through SDPA."""

    call: Call
    tiles: TileBackend | None
    pieces: tuple[tuple[int, int, int, int, bool], ...] = ()
    causal: bool = False  # a dense plan's mask

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        if self.tiles is None:
            return _dense(q, k, v, scale, causal=self.causal)
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            return _Attention.apply(q, k, v, self, scale)
        return self.tiles.forward(q, k, v, scale)[0]  # nothing to differentiate: no autograd node

    def backward(self, do, q, k, v, o, lse, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.pieces:
            return dense_pieces.backward(do, q, k, v, o, lse, self.pieces, scale)
        return self.tiles.backward(do, q, k, v, o, lse, scale)


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, route: Route, scale: float):
        o, lse = route.tiles.forward(q, k, v, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.route, ctx.scale = route, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = ctx.route.backward(do.contiguous(), q, k, v, o, lse, ctx.scale)
        return dq, dk, dv, None, None


class LoadedPlan:
    """A validated plan, ready to run: its lists are moved to each device once and kept there, and
    each call shape is checked and its backend made ready once."""

    def __init__(self, plan: Plan, device: torch.device | str | None = None):
        self.plan = plan
        self._on: dict[torch.device, DevicePlan] = {}
        self._routes: dict[tuple, Route] = {}
        if device is not None:
            self.on(torch.device(device))

    def on(self, device: torch.device) -> DevicePlan:
        """The plan's tensors on ``device``, moved there the first time only."""
        device = canonical_device(device)
        if device not in self._on:
            self._on[device] = DevicePlan.from_plan(self.plan, device)
        return self._on[device]

    def attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None, backend: str = "auto"
    ) -> torch.Tensor:
        """Masked attention ``softmax(q kᵀ · scale + mask) v`` for ``[B, H, N, D]`` tensors, with autograd.

        ``k``/``v`` may have fewer heads than ``q`` (GQA/MQA: ``Hq`` a multiple of ``Hkv``). ``scale``
        (positive, below a limit that float32 softmax sets: ``maskc.runtime.call``) defaults to
        ``1/sqrt(D)``. ``backend`` is ``"auto"`` (Triton on CUDA tensors, the reference backend
        elsewhere), ``"triton"`` or ``"reference"``. Rows with no visible key give zeros.

        Under ``torch.compile`` (``fullgraph=True`` included) and any other trace, the call is one
        registered operator (``maskc.runtime.ops``); the plan must be on the call's device by then
        (``load_plan(..., device=...)``, or one eager call).
        """
        if ops.traced(q):
            return self._operator_call(q, k, v, scale, backend)
        route = self._routes.get(route_key(q, k, v, backend))
        if route is None:
            route = self._route(q, k, v, backend)
        return route.run(q, k, v, route.call.scale(scale))

    __call__ = attention

    def _operator_call(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None, backend: str) -> torch.Tensor:
        """A call through the backend's operator, checked as an eager one (a trace runs this once)."""
        call = check_call(self.plan, q, k, v)
        dplan = self.on(call.device)
        if dplan.variant in DENSE_VARIANTS:
            return _dense(q, k, v, call.scale(scale), causal=dplan.variant == "dense_causal")
        return operator_call(dplan, call, q, k, v, scale, backend)

    def _route(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> Route:
        """Check a call of a new shape, dtype, device or backend, and decide how it runs."""
        call = check_call(self.plan, q, k, v)
        impl = backend_module(backend, q)
        dplan = self.on(call.device)
        if dplan.variant in DENSE_VARIANTS:
            route = Route(call, None, causal=dplan.variant == "dense_causal")
        else:
            # A plan with dense pieces runs its backward through them where a dense kernel takes the inputs.
            pieces = dplan.pieces if dplan.pieces and impl is not reference and dense_pieces.supported(q) else ()
            route = Route(call, impl.prepare(dplan, call), pieces)
        if len(self._routes) >= MAX_ROUTES:
            self._routes.clear()
        self._routes[route_key(q, k, v, backend)] = route
        return route

    def __repr__(self) -> str:
        p = self.plan
        return f"LoadedPlan({p.batch}x{p.heads}x{p.q_len}x{p.kv_len}, block {p.block_m}x{p.block_n}, {p.variant}{', reordered' if p.reordered else ''})"


def operator_call(plan: DevicePlan, call: Call, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None,
                  backend: str) -> torch.Tensor:
    """Attention through ``plan`` (a static plan's or a bound step's tile lists) as one call of the
    backend's registered operator, for a ``call`` checked against it: what a trace records."""
    return ops.attention(ops.operators(resolve_backend(backend, q.is_cuda)), q, k, v, plan, call.scale(scale))


def route_key(q, k, v, backend) -> tuple | None:
    """What a call's route depends on: the inputs' shapes, dtypes and devices and the backend
    (None for inputs that are not tensors, which the checks then refuse)."""
    if not (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)):
        return None
    return q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, q.device, k.device, v.device, backend


def load_plan(source: str | os.PathLike | bytes | Plan | FamilyPlan, device: torch.device | str | None = None) -> LoadedPlan | LoadedFamily:
    """Load and validate a plan from a path, bytes or a Plan; with ``device``, move it there now.
    A family plan gives a :class:`~maskc.runtime.bound.LoadedFamily`, bound to each step's data."""
    if isinstance(source, Plan):
        plan_format.validate(source)
        plan = source
    elif isinstance(source, FamilyPlan):
        plan = source
    elif isinstance(source, (bytes, bytearray, memoryview)):
        plan = plan_format.decode(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        plan = plan_format.load(Path(source))
    else:
        raise PlanError(f"load_plan takes a path, bytes, a Plan or a FamilyPlan, not {type(source).__name__}")
    if isinstance(plan, FamilyPlan):
        from maskc.runtime.bound import LoadedFamily

        return LoadedFamily(plan, device)
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


def backend_module(name: str, q: torch.Tensor):
    """The backend module a call runs on, ``reference`` or ``kernels``: each makes itself ready for
    a plan and a checked call with ``prepare(plan, call)``."""
    name = resolve_backend(name, q.is_cuda)
    if name == "reference":
        return reference
    from maskc.runtime import kernels

    return kernels


def canonical_device(device: torch.device) -> torch.device:
    """``device``, with the current CUDA device's index where it names none."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device

