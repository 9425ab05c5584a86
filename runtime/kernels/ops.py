"""The Triton kernels as the operators ``maskc::tiles`` and ``maskc::tiles_backward`` (``maskc.runtime.ops``).

An operator's implementation decides the kernels' launches from its inputs' shapes and the plan's
scalars (:func:`.launches.plan_launches`), once per distinct set of them, then launches.
"""

from __future__ import annotations

import torch

from maskc.runtime import ops
from maskc.runtime.call import check_call
from maskc.runtime.kernels import config
from maskc.runtime.kernels.bwd import launch_backward
from maskc.runtime.kernels.fwd import launch_forward
from maskc.runtime.kernels.launches import Launches, plan_launches

_MAX_LAUNCHES = 256  # launch decisions remembered (a loop with ever new shapes starts over past this)
_launches: dict[tuple, Launches] = {}


def _decided(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows, cols, scalars) -> Launches:
    """The launches for these inputs, decided at the first call of their shapes, dtype, device, list
    sizes, permutation strides (one permutation for every slice or one per slice, alike in shape)
    and plan scalars (and the active configuration override)."""
    *_, perm_q, perm_k = rows
    key = (q.shape, k.shape, v.shape, q.dtype, q.device, tuple(t.shape for t in rows), tuple(t.shape for t in cols),
           perm_q.stride(), perm_k.stride(), *scalars[:5], tuple(scalars[5]), config.overrides())
    launches = _launches.get(key)
    if launches is None:
        plan = ops.device_plan(q, k, rows, cols, *scalars)
        launches = plan_launches(plan, check_call(plan, q, k, v))
        if len(_launches) >= _MAX_LAUNCHES:
            _launches.clear()
        _launches[key] = launches
    return launches


def _forward(q, k, v, rows, cols, *scalars_pieces_scale):
    *scalars, _pieces, scale = scalars_pieces_scale
    return launch_forward(q, k, v, tuple(rows), scale, _decided(q, k, v, rows, cols, scalars).fwd)


def _backward(do, q, k, v, o, lse, rows, cols, *scalars_scale):
    *scalars, scale = scalars_scale
    launches = _decided(q, k, v, rows, cols, scalars)
    return launch_backward(do, q, k, v, o, lse, tuple(rows), tuple(cols), scale, launches.dq, launches.dkdv)


OPERATORS = ops.define("tiles", _forward, _backward, pieces=True)
