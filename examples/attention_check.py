"""Run attention through a compiled plan and check it against dense attention with the same mask.

    python examples/attention_check.py PLAN MASK.npy

Uses the Triton kernels on a GPU and the reference backend on a CPU; checks the output and the
three gradients against the float64 dense softmax of ``maskc.measure.reference`` with the same mask.
"""

import sys

import numpy as np
import torch

from maskc.measure.reference import attention, rel_err
from maskc.runtime import load_plan


def main(plan_path: str, mask_path: str) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    plan = load_plan(plan_path, device=device)
    mask = torch.from_numpy(np.load(mask_path).astype(bool)).to(device)
    batch, heads, dim = 1, 4, 64
    n_q, n_k = mask.shape[-2:]
    torch.manual_seed(0)
    q = torch.randn(batch, heads, n_q, dim, device=device, requires_grad=True)
    k = torch.randn(batch, heads, n_k, dim, device=device, requires_grad=True)
    v = torch.randn(batch, heads, n_k, dim, device=device, requires_grad=True)
    grad = torch.randn(batch, heads, n_q, dim, device=device)

    out = plan.attention(q, k, v)
    got = (out, *torch.autograd.grad(out, (q, k, v), grad))

    ref = attention(q, k, v, mask, dim**-0.5, grad)  # rows with no visible key: 0
    want = (ref.out, ref.dq, ref.dk, ref.dv)

    print(f"attention through {plan} on {device}, q {list(q.shape)}")
    worst = 0.0
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        err = rel_err(a, b)
        worst = max(worst, err)
        print(f"  {name:4s} relative error vs float64 dense attention: {err:.2e}")
    tolerance = 1e-4 if q.dtype == torch.float32 and device == "cpu" else 2e-2
    if not worst < tolerance:
        sys.exit(f"FAILED: error {worst:.2e} is above {tolerance:.0e}")
    print("ok")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
