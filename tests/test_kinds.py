"""The registry of mask kinds: one entry per kind, from which the library's checks, the spec reader
and ``maskc mask`` derive; and the one-way imports of the mask side."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from maskc import library
from maskc.cli.mask_cmd import CLI_KINDS, mask
from maskc.errors import MaskError
from maskc.kinds import Flag, Ints, Registry, Size
from maskc.sources import MaskSource


def test_a_kind_is_one_entry_that_the_spec_reader_and_the_cli_take():
    kinds = Registry()

    @kinds.kind(Size("n", "tokens", 16), Ints("marks", "marked keys", [0, 3]), Flag("causal", "causal", off="bidirectional"))
    def marked(n: int, marks: np.ndarray, causal: bool = False) -> MaskSource:
        """Only the marked keys."""
        return library.causal(n) if causal else library.full(n)

    kind = kinds["marked"]
    assert kind.summary == "Only the marked keys." and kind.function is marked
    assert [kind.required(p) for p in kind.params] == [True, True, False] and kind.default(kind.params[2]) is False
    with pytest.raises(MaskError, match=r"^marked: n must be positive, got 0$"):
        marked(0, [1])
    with pytest.raises(MaskError, match=r"^marked: marks must hold integers only"):
        marked(4, [1.5])
    assert marked(np.int64(4), (1, 2), causal=1).name == "causal(n=4)"  # checked values: ints, bools
    with pytest.raises(TypeError, match="do not match its signature"):
        kinds.kind(Size("n", "tokens"))(lambda count: None)


def test_the_library_functions_check_through_their_entries():
    assert list(library.KINDS) == [
        "causal", "full", "sliding_window", "documents", "prefix_lm", "causal_blockwise", "longformer", "bigbird",
        "shared_question", "token_tree", "medusa", "hash_buckets", "union", "intersection", "stack",
    ]  # fmt: skip
    for name, kind in library.KINDS.items():
        assert getattr(library, name) is kind.function and kind.summary
    assert library.KINDS["prefix-lm"] is library.KINDS["prefix_lm"]
    with pytest.raises(MaskError, match=r"^where: unknown kind 'prefix lm'; known kinds: causal, full, "):
        library.KINDS.lookup("prefix lm", "where")


@pytest.mark.parametrize("spelling", ["causal-blockwise", "causal_blockwise"])
def test_the_cli_takes_kind_names_with_dashes_or_underscores(tmp_path, spelling):
    out = tmp_path / "m.npy"
    result = CliRunner().invoke(mask, [spelling, "-n", "10", "--block", "4", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "causal_blockwise(n=10, block=4)" in result.output
    assert np.array_equal(np.load(out), library.causal_blockwise(10, 4).to_dense()[0, 0])


def test_cli_options_and_help_come_from_the_registry():
    options = {p.name: p for p in mask.params}
    for kind in CLI_KINDS.values():
        for param in kind.params:
            assert param.help in options[param.name].help, (kind.name, param.name)
    assert "bigbird (default 64): tokens per random key block" in options["block"].help
    assert options["causal"].secondary_opts == ["--bidirectional"]
    result = CliRunner().invoke(mask, ["--help"])
    assert result.exit_code == 0 and "KIND is one of: causal, full, sliding_window," in " ".join(result.output.split())


@pytest.mark.parametrize(
    "module, absent",
    [
        ("maskc.sources", ["maskc.library", "maskc.spec", "maskc.inputs"]),
        ("maskc.library", ["maskc.spec", "maskc.inputs", "maskc.compiler"]),
        ("maskc.spec", ["maskc.inputs", "maskc.compiler"]),
    ],
)
def test_imports_point_one_way(module, absent):
    code = f"import sys, {module}; print([m for m in {absent!r} if m in sys.modules])"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"

