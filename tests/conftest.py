"""Shared helpers: the float64 reference as these tests compare it, and random inputs."""

from __future__ import annotations

import numpy as np
import pytest

from maskc.measure.reference import attention, rel_err  # noqa: F401  (the tests import rel_err from here)


def dense_reference(q, k, v, mask, scale, grad_out):
    """The float64 output and dq, dk, dv of :func:`maskc.measure.reference.attention` for the
    upstream gradient ``grad_out``, in the order the tests unpack them."""
    ref = attention(q, k, v, mask, scale, grad_out)
    return ref.out, ref.dq, ref.dk, ref.dv


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def no_shipped_profile(monkeypatch):
    """``block="auto"`` follows the fixed rules unless a test names a profile: a GPU profile shipped
    with the package must not change what the suite sees."""
    monkeypatch.setenv("MASKC_PROFILE", "none")


def make_profile(name: str = "Test GPU", head_dim: int = 128, dtype: str = "bf16", tile_ms: float = 0.001, partial_ms: float = 0.0015,
                 pair_ms: float = 1e-9, reorder_factor: float = 1.1, kernels=("block_sparse", "intervals")) -> dict:
    """A ``maskc-profile/3`` dict with made-up constants, for tests of the cost model's plumbing only."""
    entries = []
    for kernel in kernels:
        for pass_, factor in (("fwd", 1.0), ("bwd", 2.5)):
            for block in (64, 128):
                area = (block / 128) ** 2
                launches = 1 if pass_ == "fwd" else 2
                per_list = {"program_ms": 0.0005 * factor / launches, "full_tile_ms": tile_ms * factor * area / launches,
                            "partial_tile_ms": partial_ms * factor * area * (1.2 if kernel == "intervals" else 1.0) / launches}
                entries.append({"kernel": kernel, "pass": pass_, "block": [block, block], "head_dim": head_dim, "dtype": dtype,
                                "launch_ms": 0.01, "lists": [per_list] * launches, "concurrency": 132.0})
    return {
        "schema": "maskc-profile/3",
        "device": {"kind": "test", "name": name},
        "kernels": entries,
        "reorder": [{"block": [block, block], "head_dim": head_dim, "dtype": dtype, "fwd_factor": reorder_factor, "bwd_factor": reorder_factor * 1.1}
                    for block in (64, 128)],
        "sdpa": [{"mask": mask, "pass": pass_, "head_dim": head_dim, "dtype": dtype, "launch_ms": 0.01, "pair_ms": pair_ms * (2.5 if pass_ == "bwd" else 1.0)}
                 for mask in ("full", "causal") for pass_ in ("fwd", "bwd")],
    }
