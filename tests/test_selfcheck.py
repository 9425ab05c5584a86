"""The kernels' self-check (``python -m maskc.measure.selfcheck``) on CPU, under the Triton interpreter."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest
import torch

from maskc import library
from maskc.measure import selfcheck

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU tests run the kernels in the Triton interpreter")


def test_its_masks_are_the_library_masks_as_arrays():
    causal = library.causal(130).to_dense()[0, 0]
    assert np.array_equal(selfcheck.causal(130, 130), causal)
    assert np.array_equal(selfcheck.causal(97, 130), causal[33:])  # bottom-right aligned
    assert np.array_equal(selfcheck.sliding_window(50, 50, 8), library.sliding_window(50, 8).to_dense()[0, 0])
    assert np.array_equal(selfcheck.documents(100, [30, 90]), library.documents([30, 70]).to_dense()[0, 0])  # cut at n
    assert np.array_equal(selfcheck.documents(100, [30, 50], causal_within=False), library.documents([30, 50, 20], causal=False).to_dense()[0, 0])


def test_a_case_passes_and_a_failing_case_sets_the_exit_status(capsys, monkeypatch):
    assert selfcheck.main(["--device", "cpu", "--seq", "64", "--filter", "fp32 causal"]) == 0
    out = capsys.readouterr().out
    assert "fp32 causal 64" in out and "PASS" in out and out.rstrip().endswith("all passed")
    monkeypatch.setitem(selfcheck.TOLERANCE, torch.float32, 0.0)
    assert selfcheck.main(["--device", "cpu", "--seq", "64", "--filter", "fp32 causal"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "1 case(s) failed" in out
