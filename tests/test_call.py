"""A call's inputs are checked once per call shape, the scale against the limit float32 softmax
sets, and the Triton backend refuses inputs it cannot run with a clear error.

The Triton kernels run on CPU tensors in the interpreter (``TRITON_INTERPRET=1``, set here before
triton is imported); one test runs a fresh process without it.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import dense_reference, rel_err

import maskc
from maskc.runtime import load_plan
from maskc.runtime import loaded as loaded_module
from maskc.runtime.kernels import common, config

N = 64
LN2 = math.log(2)


@pytest.fixture(autouse=True)
def _nan_outputs(monkeypatch):
    """Kernel outputs start as NaN: an element a kernel does not write cannot pass as finite."""
    monkeypatch.setattr(common, "empty", lambda shape, dtype, device: torch.full(shape, math.nan, dtype=dtype, device=device))


def causal_plan():
    return load_plan(maskc.compile(np.tri(N, dtype=bool), block=(32, 32), variant="block_sparse"))


def unit_inputs(d: int, dtype=torch.float32, seed: int = 0):
    """q = k with entries ±1: each row's score with its own key (on the causal diagonal) is exactly
    ``d``, the largest ``|q·k|`` that inputs with entries of size 1 can reach."""
    g = torch.Generator().manual_seed(seed)
    q = (torch.randint(0, 2, (1, 2, N, d), generator=g) * 2 - 1).to(dtype)
    v, do = torch.randn(1, 2, N, d, generator=g, dtype=dtype), torch.randn(1, 2, N, d, generator=g, dtype=dtype)
    return q, q.clone(), v, do


def attention_and_grads(plan, q, k, v, do, scale, backend):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = plan.attention(q, k, v, scale=scale, backend=backend)
    return (out, *torch.autograd.grad(out, (q, k, v), do))


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("d", [16, 64])
def test_the_largest_scale_keeps_unit_inputs_finite(backend, d):
    """Just under the limit, scores of inputs with entries of size 1 reach 2**24 in base-2 units and
    every output and gradient is finite; at the limit, and at the 1e8 that gave NaN gradients, the
    call is refused with the limit and its reason."""
    plan = causal_plan()
    limit = 2.0**24 * LN2 / d
    q, k, v, do = unit_inputs(d)
    for got in attention_and_grads(plan, q, k, v, do, limit * (1 - 1e-6), backend):
        assert torch.isfinite(got).all()
    for scale in (limit, 1e8, math.inf, math.nan):
        with pytest.raises(ValueError, match=re.escape(f"scale must be positive and below {limit:.4g} (2**24 * ln(2) / head dim {d})")):
            plan.attention(q, k, v, scale=scale, backend=backend)


def test_float64_reference_takes_float64_scales():
    """The reference backend computes float64 inputs in float64: a scale past the float32 limit is
    taken, and still agrees with the dense float64 softmax."""
    d = 16
    plan = causal_plan()
    scale = 2.0**24 * LN2 / d * 4  # four times the float32 limit
    q, k, v, do = (t.double() / 64 for t in unit_inputs(d))  # entries 1/64: scores up to 2**14 in base-2 units
    got = attention_and_grads(plan, q, k, v, do, scale, "reference")
    ref = dense_reference(q, k, v, np.broadcast_to(np.tri(N, dtype=bool), (1, 2, N, N)), scale, do)
    for a, b in zip(got, ref):
        assert rel_err(a, b) < 1e-9
    with pytest.raises(ValueError, match=r"2\*\*24"):
        plan.attention(q.float(), k.float(), v.float(), scale=scale, backend="reference")


def test_triton_on_cpu_tensors_without_the_interpreter():
    """Kernels defined without ``TRITON_INTERPRET=1`` cannot take CPU tensors: a clear error naming
    the three ways out, not Triton's "0 active drivers"."""
    code = (
        "import numpy as np, torch, maskc\n"
        "from maskc.runtime import load_plan\n"
        "plan = load_plan(maskc.compile(np.tri(64, dtype=bool), block=32, variant='block_sparse'))\n"
        "q = torch.randn(1, 1, 64, 16)\n"
        "try:\n"
        "    plan.attention(q, q, q, backend='triton')\n"
        "except ValueError as e:\n"
        "    print(e)\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "the Triton kernels run on CUDA tensors, and these are on cpu" in res.stdout
    assert "backend='reference'" in res.stdout and "TRITON_INTERPRET=1" in res.stdout


def test_triton_refuses_float64_and_wide_heads():
    plan = causal_plan()
    q = torch.randn(1, 1, N, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="use backend='reference' for float64"):
        plan.attention(q, q, q, backend="triton")
    q = torch.randn(1, 1, N, 264)
    with pytest.raises(ValueError, match=r"head dim 264 is not supported by the kernels \(1..256\)"):
        plan.attention(q, q, q, backend="triton")


def test_head_dim_zero_is_refused():
    q = torch.randn(1, 1, N, 0)
    with pytest.raises(ValueError, match="has head dim 0"):
        causal_plan().attention(q, q, q)


def test_inputs_are_checked_once_per_call_shape(monkeypatch):
    """The checks run at the first call of a shape, dtype, device and backend; later calls of it
    reuse what they established, and a call of another shape is checked again."""
    checked = []
    check_call = loaded_module.check_call
    monkeypatch.setattr(loaded_module, "check_call", lambda plan, q, k, v: checked.append(q.shape) or check_call(plan, q, k, v))
    plan = causal_plan()
    q = torch.randn(1, 2, N, 16)
    first = plan.attention(q, q, q, backend="reference")
    assert torch.equal(plan.attention(q, q, q, backend="reference"), first)
    assert len(checked) == 1
    plan.attention(q[:, :1], q[:, :1], q[:, :1], backend="reference")
    assert len(checked) == 2
    with pytest.raises(ValueError, match="must have the same shape"):
        plan.attention(q, q, q[:, :, :, :8], backend="reference")
    with pytest.raises(ValueError, match="must be a 4-D tensor"):
        plan.attention(q.numpy(), q, q, backend="reference")


def test_a_config_override_reaches_a_call_shape_seen_before():
    """The kernels' launches are decided at a shape's first call, and again under a configuration
    override entered later (tuning sweeps time one plan under many)."""
    plan = causal_plan()
    q = torch.randn(1, 2, N, 16)
    before = plan.attention(q, q, q, backend="triton")
    with config.override(fwd_sub_n=24):
        with pytest.raises(ValueError, match="fwd_sub_n=24 must be a power of two"):
            plan.attention(q, q, q, backend="triton")
    with config.override(fwd_sub_n=16, fwd_rows=16):
        assert rel_err(plan.attention(q, q, q, backend="triton"), before) < 1e-6
    assert torch.equal(plan.attention(q, q, q, backend="triton"), before)
