"""Triton block-sparse flash-attention kernels, forward and backward, driven by a :class:`DevicePlan`.

``forward(q, k, v, plan, scale) -> (o, lse)`` and ``backward(do, q, k, v, o, lse, plan, scale) ->
(dq, dk, dv)`` check their inputs and run ``"block_sparse"`` (bitmap) and ``"intervals"`` plans;
``prepare(plan, call)`` readies them for a plan and a checked call shape once
(:class:`TileKernels`, what ``LoadedPlan`` runs). Rows with no visible key produce o = 0,
lse = +inf and zero gradients. Launch configurations come from :mod:`maskc.runtime.kernels.config`
(a static table, no autotuning).

Modules: ``fwd`` (forward kernel), ``bwd`` (dQ kernel, which also computes delta, then dK/dV),
``common`` (the pieces the kernels share: program ids, row loads and stores, bitmap and interval
readers), ``launches`` (each launch's grid and constexprs, decided once per plan and call shape),
``run`` (the entry points), ``config`` (launch table), ``aotcheck`` (ahead-of-time compile check,
no GPU needed). Their GPU accuracy check against float64 is ``python -m maskc.measure.selfcheck``.
"""

from maskc.runtime.kernels.run import TileKernels, backward, forward, prepare

__all__ = ["forward", "backward", "prepare", "TileKernels"]
