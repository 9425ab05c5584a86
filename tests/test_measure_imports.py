"""maskc.measure sits above the compiler and the runtime: nothing but the commands that measure import it."""

from __future__ import annotations

import subprocess
import sys


def run(code: str, cwd=None) -> tuple[list[str], set[str]]:
    """What ``code`` prints in a fresh interpreter, and the modules loaded after it."""
    script = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    lines = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, cwd=cwd).stdout.splitlines()
    return lines[:-1], set(lines[-1].split())


def measured(modules: set[str]) -> set[str]:
    return {m for m in modules if m == "torch" or m.startswith("maskc.measure")}


def test_mask_compile_and_inspect_import_neither_the_measure_package_nor_torch(tmp_path):
    runs = [["mask", "documents", "--lengths", "40,24", "-o", "m.npy"], ["compile", "m.npy", "-o", "m.plan", "--quiet"],
            ["inspect", "m.plan", "--json"]]
    code = "from maskc.cli.main import cli\n" + "".join(f"cli.main({args!r}, standalone_mode=False)\n" for args in runs)
    _, loaded = run(code, cwd=tmp_path)
    assert (tmp_path / "m.plan").is_file() and "maskc.compiler" in loaded
    assert not measured(loaded)


def test_the_cli_and_the_runtime_import_no_measure_package():
    assert not measured(run("import maskc.cli.main")[1])
    _, loaded = run("import maskc.runtime\nfrom maskc.runtime import load_plan, attention, LoadedPlan")
    assert "torch" in loaded and not {m for m in loaded if m.startswith("maskc.measure")}


def test_bench_checks_its_options_before_it_imports_torch():
    code = ("from maskc.cli.main import cli\ntry:\n    cli.main(['bench', '--masks', 'bogus'], standalone_mode=False)\n"
            "except Exception as e:\n    print(type(e).__name__)")
    printed, loaded = run(code)
    assert printed == ["UserError"] and "torch" not in loaded and "maskc.measure.bench" not in loaded
