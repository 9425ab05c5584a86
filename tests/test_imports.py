"""The dependency rules of the design: the runtime stays light, the compiler and the CLI's compile and
inspect paths never import torch, nothing in the library imports the measurement package."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

HEAVY = ("torch", "maskc.measure")


def modules_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    return set(out.split())


def heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)}


def test_runtime_imports_neither_the_compiler_nor_scipy_or_measure():
    loaded = modules_after("import maskc.runtime\nfrom maskc.runtime import load_plan, attention, LoadedPlan")
    assert "torch" in loaded
    assert not {m for m in loaded if m.split(".")[0] == "scipy"}
    compiler = {m for m in loaded if m.startswith("maskc.") and not m.startswith("maskc.runtime")}
    assert not compiler and not {m for m in loaded if m.startswith("maskc.measure")}


@pytest.mark.parametrize(
    "code",
    [
        "import maskc\nmaskc.compile([[1, 0], [1, 1]])",
        "import maskc.cache, maskc.library, maskc.verify",
        "import maskc.cli.main",
        "import maskc.cost, maskc.reorder\nmaskc.compile(__import__('numpy').eye(64, dtype=bool), reorder='rcm', block=32)",
        "import maskc, maskc.flashmask\nmaskc.flashmask.to_startend_row_indices(maskc.compile({'kind': 'prefix_lm', 'n': 300, 'prefix': 9}, variant='intervals'))",
    ],
)
def test_compiler_and_cli_do_not_import_torch(code):
    assert not heavy(modules_after(code))


@pytest.fixture
def files(tmp_path):
    from conftest import make_profile

    mask = tmp_path / "m.npy"
    np.save(mask, np.random.default_rng(0).random((300, 300)) < 0.2)
    profile = tmp_path / "gpu.json"
    profile.write_text(json.dumps(make_profile()))
    return {"mask": str(mask), "plan": str(tmp_path / "m.plan"), "profile": str(profile), "png": str(tmp_path / "m.png"), "cache": str(tmp_path / "c")}


@pytest.mark.parametrize(
    "args",
    [
        ["compile", "{mask}", "-o", "{plan}", "--quiet"],
        ["compile", "{mask}", "-o", "{plan}", "--quiet", "--profile", "{profile}", "--reorder", "rcm"],
        ["inspect", "{plan}", "--json", "--profile", "{profile}", "--workload", "batch=2"],
        ["inspect", "{plan}", "--png", "{png}"],
        ["verify", "{plan}", "{mask}"],
        ["cache", "ls"],
    ],
    ids=["compile", "compile-model-rcm", "inspect-reevaluate", "inspect-png", "verify", "cache-ls"],
)
def test_the_compile_and_inspect_commands_import_neither_torch_nor_measure(files, args):
    """Each command runs in a fresh interpreter (after a compile that made the plan it reads)."""
    run = "from maskc.cli.main import cli\ncli.main({args!r}, standalone_mode=False)"
    if args[0] != "compile":
        args_compile = ["compile", files["mask"], "-o", files["plan"], "--quiet", "--profile", files["profile"]]
        modules_after(f"import os\nos.environ['MASKC_CACHE_DIR'] = {files['cache']!r}\n" + run.format(args=args_compile))
    if "--png" in args:
        pytest.importorskip("matplotlib")
    code = f"import os\nos.environ['MASKC_CACHE_DIR'] = {files['cache']!r}\n" + run.format(args=[a.format(**files) for a in args])
    assert not heavy(modules_after(code))
