"""Triton block-sparse flash-attention kernels, forward and backward, driven by a :class:`DevicePlan`.

``forward(q, k, v, plan, scale) -> (o, lse)`` and ``backward(do, q, k, v, o, lse, plan, scale) ->
(dq, dk, dv)`` for ``"block_sparse"`` (bitmap) and ``"intervals"`` plans. Rows with no visible key
produce o = 0, lse = +inf and zero gradients. Launch configurations come from
:mod:`maskc.runtime.kernels.config` (a static table, no autotuning).

Modules: ``fwd`` (forward kernel), ``bwd`` (dQ kernel, which also computes delta, then dK/dV), ``common``
(bitmap/interval readers, masked loads, input checks), ``config`` (launch table), ``aotcheck``
(ahead-of-time compile check, no GPU needed). Their GPU accuracy check against float64 is
``python -m maskc.measure.selfcheck``.
"""

from maskc.runtime.kernels.bwd import backward
from maskc.runtime.kernels.fwd import forward

__all__ = ["forward", "backward"]
