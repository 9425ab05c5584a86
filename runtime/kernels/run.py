"""The tile kernels made ready for one plan and one call shape, and their checked entry points.

:class:`TileKernels` is what ``LoadedPlan`` runs a call through: its launches are decided once
(:func:`.launches.plan_launches`), so a call only allocates and launches. :func:`forward` and
:func:`backward` take a :class:`DevicePlan` and check their inputs first, for callers outside a
``LoadedPlan`` (tests, the self-check).
"""

from __future__ import annotations

import torch

from maskc.runtime.call import Call, check_call
from maskc.runtime.device import DevicePlan
from maskc.runtime.kernels import config
from maskc.runtime.kernels.bwd import launch_backward
from maskc.runtime.kernels.fwd import launch_forward
from maskc.runtime.kernels.launches import Launches, plan_launches


class TileKernels:
    """The forward and backward kernels for ``plan`` and calls shaped like ``call``.

    The launches are decided when this is made (or taken from ``launches``, decided for a plan
    of the same sizes, variant and traits), and again only when a configuration override
    (:func:`.config.override`) has changed since.
    """

    def __init__(self, plan: DevicePlan, call: Call, launches: Launches | None = None):
        self.plan, self.call = plan, call
        self.rows, self.cols = plan.row_lists, plan.col_lists
        self._overrides = config.overrides()
        self._launches = plan_launches(plan, call) if launches is None else launches

    def rebind(self, plan: DevicePlan) -> "TileKernels":
        """These kernels over ``plan``, a plan of the same sizes, variant, traits and permutation
        strides as this one (a mask family's next step): its tensors, launched as decided here."""
        return TileKernels(plan, self.call, self.launches)

    @property
    def launches(self) -> Launches:
        if self._overrides is not config.overrides():
            self._overrides = config.overrides()
            self._launches = plan_launches(self.plan, self.call)
        return self._launches

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``o`` and the natural-log ``lse`` ``[B, Hq, Nq]`` (+inf on rows with no visible key)."""
        return launch_forward(q, k, v, self.rows, scale, self.launches.fwd)

    def backward(self, do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
                 scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``dq``, ``dk``, ``dv`` from the forward's ``o`` and ``lse``, ``do`` in q's dtype."""
        launches = self.launches
        return launch_backward(do, q, k, v, o, lse, self.rows, self.cols, scale, launches.dq, launches.dkdv)


def prepare(plan: DevicePlan, call: Call) -> TileKernels:
    """The kernels ready for ``plan`` and calls shaped like ``call`` (a backend's entry for ``LoadedPlan``)."""
    return TileKernels(plan, call)


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: DevicePlan, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked forward: q ``[B, Hq, Nq, D]``, k/v ``[B, Hkv, Nk, D]`` (``Hq % Hkv == 0``),
    fp16/bf16/fp32, any strides; ``plan`` a block-sparse or interval :class:`DevicePlan` on q's
    device. Returns ``o`` (like q, contiguous) and ``lse`` float32 ``[B, Hq, Nq]``: the
    natural-log log-sum-exp of the scaled scores, +inf for rows with no visible key (whose o rows are 0)."""
    call = check_call(plan, q, k, v)
    return TileKernels(plan, call).forward(q, k, v, call.scale(scale))


def backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
             plan: DevicePlan, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checked backward: ``dq`` (like q) and ``dk``/``dv`` (like k/v, summed over the query heads of
    each GQA group) from the forward's ``o`` and ``lse``; ``do`` in any float dtype."""
    call = check_call(plan, q, k, v)
    if tuple(do.shape) != tuple(q.shape) or tuple(o.shape) != tuple(q.shape):
        raise ValueError(f"do {list(do.shape)} and o {list(o.shape)} must have q's shape {list(q.shape)}")
    if tuple(lse.shape) != (call.batch, call.q_heads, call.q_len) or lse.dtype != torch.float32:
        raise ValueError(f"lse must be float32 [{call.batch}, {call.q_heads}, {call.q_len}], got {lse.dtype} {list(lse.shape)}")
    return TileKernels(plan, call).backward(do.to(q.dtype), q, k, v, o, lse, call.scale(scale))
