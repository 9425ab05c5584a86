"""The attention as registered PyTorch operators, so that ``torch.compile`` and CUDA graphs take it whole.

Each backend is a pair of operators in the ``maskc`` namespace: ``maskc::tiles`` and
``maskc::tiles_backward`` (the Triton kernels, :mod:`maskc.runtime.kernels.ops`) and
``maskc::reference`` and ``maskc::reference_backward`` (the pure-torch backend). A call passes the
plan as operator inputs: its list tensors (``DevicePlan.row_lists``, ``col_lists``) and its scalars
(``DevicePlan.scalars``) as int and bool arguments, so plans of one shape share a compiled graph and
a bound family plan's tensors are graph inputs like any other. The forward returns ``o`` and the
log-sum-exp; autograd is registered with ``register_autograd`` and runs the backward operator, or,
for a plan with dense pieces where a dense kernel takes the inputs, the pieces' backward
(:mod:`maskc.runtime.pieces`, torch operations).

Both pairs are opaque ``torch.library.custom_op``s with fake implementations (shapes only), and
pass ``torch.library.opcheck``. The Triton pair is not a ``triton_op``: Inductor recompiles a
``wrap_triton`` kernel itself, and on torch 2.11 with Triton 3.6 that compile of the forward kernel
fails (``benchmarks/NOTES.md``), while the opaque operator runs the kernels exactly as an eager call.

``LoadedPlan.attention`` calls these operators whenever a trace or a dispatch mode is watching
(``torch.compile``, ``make_fx``, ``torch.export``, fake or subclassed tensors). A plain eager call on
plain tensors runs the same kernels through an ``autograd.Function`` instead (:func:`traced` says
which): the dispatcher's round trip into a Python operator costs more host time per call than the
whole attention call may add.
"""

import functools
import inspect
from collections.abc import Callable, Sequence

import torch

from maskc.runtime import pieces as dense_pieces
from maskc.runtime import reference
from maskc.runtime.device import DevicePlan

Tensor = torch.Tensor


def forward_signature(q: Tensor, k: Tensor, v: Tensor, rows: Sequence[Tensor], cols: Sequence[Tensor], block_m: int, block_n: int,
                      mask_batch: int, mask_heads: int, intervals: bool, traits: Sequence[bool], pieces: Sequence[int],
                      scale: float) -> tuple[Tensor, Tensor]:
    """``o`` and the natural-log lse ``[B, Hq, Nq]`` (+inf on rows with no visible key) of ``q, k, v``
    through the plan that ``rows``, ``cols`` and the scalars describe (``DevicePlan.scalars``).
    ``pieces`` are the plan's dense pieces, five ints each (``q0, q1, k0, k1, causal``), for the
    backward: the forward does not read them."""
    raise NotImplementedError  # a signature only: the operators' schemas are inferred from it


def backward_signature(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, rows: Sequence[Tensor],
                       cols: Sequence[Tensor], block_m: int, block_n: int, mask_batch: int, mask_heads: int, intervals: bool,
                       traits: Sequence[bool], scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """``dq, dk, dv`` through the same plan, from the forward's ``o`` and ``lse``."""
    raise NotImplementedError  # a signature only


def device_plan(q: Tensor, k: Tensor, rows: Sequence[Tensor], cols: Sequence[Tensor], *scalars) -> DevicePlan:
    """The plan an operator's inputs describe, for calls shaped like ``q`` and ``k``."""
    return DevicePlan.from_lists(tuple(rows), tuple(cols), q.shape[2], k.shape[2], *scalars[:5], tuple(scalars[5]))


class Operators:
    """A backend's forward and backward operators (``OpOverload``s), registered by :func:`define`;
    ``pieces``: whether its backward runs a plan's dense pieces through a dense kernel where it can."""

    def __init__(self, name: str, pieces: bool):
        self.forward = getattr(torch.ops.maskc, name).default
        self.backward = getattr(torch.ops.maskc, f"{name}_backward").default
        self.pieces = pieces


def define(name: str, forward: Callable, backward: Callable, pieces: bool) -> Operators:
    """Register ``maskc::{name}`` and ``maskc::{name}_backward`` with the implementations ``forward``
    and ``backward`` (taking the arguments of :func:`forward_signature` and :func:`backward_signature`),
    their fake implementations and autograd. ``pieces``: as :class:`Operators`."""
    forward_op = torch.library.custom_op(f"maskc::{name}", _with_signature(forward, forward_signature), mutates_args=())
    backward_op = torch.library.custom_op(f"maskc::{name}_backward", _with_signature(backward, backward_signature), mutates_args=())
    forward_op.register_fake(_fake_forward)
    backward_op.register_fake(_fake_backward)
    ops = Operators(name, pieces)
    forward_op.register_autograd(functools.partial(_backward, ops), setup_context=_setup_context)
    return ops


def _with_signature(fn: Callable, like: Callable) -> Callable:
    """``fn`` under ``like``'s name, signature and docstring, which the operator's schema is inferred from."""
    @functools.wraps(like)
    def op(*args):
        return fn(*args)

    op.__signature__ = inspect.signature(like)
    return op


def _fake_forward(q, k, v, rows, cols, *scalars_pieces_scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(q.shape[:3], dtype=_lse_dtype(q))


def _fake_backward(do, q, k, v, o, lse, *plan_scale):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _lse_dtype(q: Tensor) -> torch.dtype:
    """The lse's dtype: float32, float64 for float64 inputs (the reference backend's)."""
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, rows, cols, *scalars, pieces, scale = inputs
    ctx.save_for_backward(q, k, v, *output, *rows, *cols)
    ctx.lists = len(rows)
    ctx.scalars, ctx.pieces, ctx.scale = scalars, pieces, scale
    # no gradient for the plan's inputs, in the structure autograd compares (a list of Nones for a list of tensors)
    ctx.no_grads = tuple([None] * len(x) if isinstance(x, list) and all(isinstance(t, Tensor) for t in x) else None
                         for x in inputs[3:])


def _backward(ops: Operators, ctx, do: Tensor, _dlse: Tensor):
    """The gradients of ``o`` (the lse is not differentiable): through the plan's dense pieces where a
    dense kernel takes the inputs (``maskc.runtime.pieces``; never on the reference backend), else
    through the backend's backward operator."""
    q, k, v, o, lse, *lists = ctx.saved_tensors
    rows, cols = lists[:ctx.lists], lists[ctx.lists:]
    do = do.contiguous()
    if ctx.pieces and ops.pieces and dense_pieces.supported(q):
        pieces = tuple(tuple(ctx.pieces[i:i + 4]) + (bool(ctx.pieces[i + 4]),) for i in range(0, len(ctx.pieces), 5))
        dq, dk, dv = dense_pieces.backward(do, q, k, v, o, lse, pieces, ctx.scale)
    else:
        dq, dk, dv = ops.backward(do, q, k, v, o, lse, rows, cols, *ctx.scalars, ctx.scale)
    return dq, dk, dv, *ctx.no_grads


def flat_pieces(plan: DevicePlan) -> list[int]:
    """The plan's dense pieces as an operator takes them: five ints each."""
    return [int(x) for piece in plan.pieces for x in piece]


def _reference_forward(q, k, v, rows, cols, *scalars_pieces_scale):
    *scalars, _pieces, scale = scalars_pieces_scale
    return reference.forward(q, k, v, device_plan(q, k, rows, cols, *scalars), scale)


def _reference_backward(do, q, k, v, o, lse, rows, cols, *scalars_scale):
    *scalars, scale = scalars_scale
    return reference.backward(do, q, k, v, o, lse, device_plan(q, k, rows, cols, *scalars), scale)


_REFERENCE = define("reference", _reference_forward, _reference_backward, pieces=False)


def operators(backend: str) -> Operators:
    """The operators of a resolved backend name, ``"triton"`` or ``"reference"`` (the Triton kernels'
    are registered on first use, importing Triton)."""
    if backend == "reference":
        return _REFERENCE
    from maskc.runtime.kernels.ops import OPERATORS

    return OPERATORS


def attention(ops: Operators, q: Tensor, k: Tensor, v: Tensor, plan: DevicePlan, scale: float) -> Tensor:
    """``o`` of one call through ``ops``'s forward operator (with autograd): one operator per call."""
    o, _ = ops.forward(q, k, v, plan.row_lists, plan.col_lists, *plan.scalars, flat_pieces(plan), scale)
    return o


def traced(q: Tensor) -> bool:
    """Whether a call must go through the operators: under ``torch.compile``, or when something watches
    the dispatcher (a tensor subclass such as fake or functional tensors, a dispatch mode)."""
    return torch.compiler.is_compiling() or type(q) is not torch.Tensor or torch._C._len_torch_dispatch_stack() > 0
