"""The ahead-of-time compile check (``python -m maskc.runtime.kernels.aotcheck``) still compiles the
three kernels for an H100 without a GPU: it is how launch configurations are vetted for spills, so
it must keep up with the kernels' signatures. It runs in its own process, and this module imports
neither triton nor the kernels: the other kernel tests of the session load them in the interpreter."""

from __future__ import annotations

import os
import subprocess
import sys


def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "maskc.runtime.kernels.aotcheck", "--arch", "90", "--dtype", "bf16", "--head-dim", "64",
           "--tiles", "64x64"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [line.split() for line in res.stdout.splitlines() if "64x64" in line]
    assert [row[4] for row in rows] == ["fwd", "dq", "dkdv"], res.stdout
    assert "no compile errors" in res.stdout
