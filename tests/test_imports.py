"""The dependency rules of the design: the runtime stays light, the compiler never imports torch."""

from __future__ import annotations

import subprocess
import sys

import pytest


def modules_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    return set(out.split())


def test_runtime_does_not_import_scipy_or_networkx():
    loaded = modules_after("import maskc.runtime\nfrom maskc.runtime import load_plan, attention, LoadedPlan")
    assert "torch" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("scipy", "networkx")}


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
    assert "torch" not in modules_after(code)
