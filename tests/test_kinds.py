"""The registry of mask kinds: one entry per kind, from which the library's checks, the spec reader
and ``maskc mask`` derive; and the one-way imports of the mask side."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from click.testing import CliRunner

from maskc import library
from maskc.cli.main import cli
from maskc.cli.mask_cmd import CLI_KINDS, mask
from maskc.errors import MaskError
from maskc.kinds import MAX_PARTS, MAX_TOKENS, Flag, Ints, Registry, Size
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


@pytest.mark.parametrize("args, fragment", [(["union"], "union combines other masks; write it as a JSON spec"), (["triangle"], "'triangle' is not a kind; one of causal")])
def test_the_cli_refuses_other_kinds_in_one_line(tmp_path, args, fragment):
    result = CliRunner().invoke(cli, ["mask", *args, "-o", str(tmp_path / "m.npy")])
    assert result.exit_code == 2 and len(result.output.splitlines()) == 1 and fragment in result.output, result.output


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



# --- limits: sizes are checked before anything is built ------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: library.causal(10**9), r"^causal: n must be at most 1048576 \(maskc.kinds.MAX_TOKENS\), got 1000000000$"),
        (lambda: library.causal(np.uint64(2**64 - 1)), r"^causal: n must be at most 1048576 .*, got 18446744073709551615$"),
        (lambda: library.full(8, kv_len=MAX_TOKENS + 1), r"^full: kv_len must be at most 1048576"),
        (lambda: library.sliding_window(10**30, 4), r"^sliding_window: n must be at most 1048576 .*, got 10{30}$"),
        (lambda: library.prefix_lm(10**5000, 1), r"^prefix_lm: n must be at most 1048576 .*, got an integer of 16610 bits$"),
        (lambda: library.causal(-(10**5000)), r"^causal: n must be positive, got an integer of 16610 bits$"),
        (lambda: library.hash_buckets(64, 4, seed=2**63), r"^hash_buckets: seed must be at most 9223372036854775807 \(maskc.kinds.MAX_SEED\)"),
        (lambda: library.bigbird(10**7, 4, block=1), r"^bigbird: n must be at most 1048576"),
        (lambda: library.bigbird(MAX_TOKENS, 4, block=1), r"^bigbird: n / block gives 1048576 key blocks; at most 65536 .*raise the block size"),
        (lambda: library.documents([MAX_TOKENS, 1]), r"^documents: the sum of lengths is 1048577 tokens; a library mask has at most 1048576"),
        (lambda: library.documents([2**40, 2**40]), r"^documents: lengths\[0\] is 1099511627776 tokens"),
        (lambda: library.documents(np.array([2**64 - 1], dtype=np.uint64)), r"^documents: lengths holds 18446744073709551615, beyond the int64 range"),
        (lambda: library.token_tree(range(-1, MAX_TOKENS)), r"^token_tree: parents holds 1048577 entries; at most 1048576"),
        (lambda: library.longformer(8, 2, range(MAX_TOKENS + 1)), r"^longformer: global_tokens holds 1048577 entries"),
        (lambda: library.shared_question(MAX_TOKENS, [1]), r"^shared_question: question \+ the sum of answers is 1048577 tokens"),
        (lambda: library.medusa(MAX_TOKENS, [-1]), r"^medusa: prompt \+ the tree's nodes is 1048577 tokens"),
        (lambda: library.candidate_tree(64, depth=10**6, top_k=10), r"^candidate_tree: depth × top_k is 10000000 acceptance probabilities"),
        (lambda: library.stack([library.causal(4)] * (MAX_PARTS + 1)), r"^stack: sources holds 1025 masks; at most 1024 \(maskc.kinds.MAX_PARTS\)"),
        (lambda: library.union(*[library.causal(4)] * (MAX_PARTS + 1)), r"^union: sources holds 1025 masks"),
    ],
)
def test_sizes_over_the_limits_are_refused_before_anything_is_built(make, message):
    tracemalloc.start()
    with pytest.raises(MaskError, match=message):
        make()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 << 20  # no O(n) table of the refused size, no random table drawn


def test_sizes_at_the_limits_still_build():
    assert MAX_TOKENS == 1 << 20  # 8192 tiles of 128 a side
    assert library.causal(MAX_TOKENS).shape == (1, 1, MAX_TOKENS, MAX_TOKENS)
    assert library.documents([MAX_TOKENS // 2] * 2).q_len == MAX_TOKENS
    assert library.bigbird(MAX_TOKENS, 4, random_blocks=1, block=16).table.shape == (65536, 1)
    assert library.candidate_tree(8, depth=100_000, top_k=2).size == 8  # the capacity sum stops early


def test_cli_heads_are_bounded_like_a_stack(tmp_path):
    result = CliRunner().invoke(mask, ["causal", "-n", "4", "--heads", str(MAX_PARTS + 1), "-o", str(tmp_path / "m.npy")])
    assert result.exit_code == 2 and "--heads" in result.output and not list(tmp_path.iterdir())
