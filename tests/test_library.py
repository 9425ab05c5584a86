"""The built-in mask library against independent dense constructions, and the ``maskc mask`` command.

Every reference below is built the obvious way, one (query, key) pair at a time in Python, so it
shares no formula with the library's vectorised rows.
"""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from maskc import library
from maskc.cli.mask_cmd import CLI_KINDS, mask
from maskc.compiler import compile, mask_sha256
from maskc.errors import MaskError
from maskc.sources import MaskSource

# --- independent references ----------------------------------------------------------------------


def dense(n: int, visible, kv_len: int | None = None) -> np.ndarray:
    """``[n, kv_len]`` bool array with ``visible(i, j)`` at every pair."""
    return np.array([[bool(visible(i, j)) for j in range(kv_len or n)] for i in range(n)], dtype=bool)


def segment_of(lengths) -> list[int]:
    return [s for s, length in enumerate(lengths) for _ in range(length)]


def ancestors_or_self(parents, i) -> set[int]:
    seen = set()
    while i >= 0:
        seen.add(i)
        i = parents[i]
    return seen


def ref_documents(lengths, causal):
    doc = segment_of(lengths)
    return dense(len(doc), lambda i, j: doc[i] == doc[j] and (j <= i or not causal))


def ref_sliding(n, window, causal):
    if causal:
        return dense(n, lambda i, j: i - window < j <= i)
    return dense(n, lambda i, j: abs(i - j) < window)


def ref_longformer(n, window, globals_, causal):
    g = set(globals_)
    return dense(n, lambda i, j: (abs(i - j) < window or i in g or j in g) and (j <= i or not causal))


def ref_shared_question(question, answers):
    seg = segment_of([question, *answers])
    return dense(len(seg), lambda i, j: j <= i and (seg[i] == seg[j] or seg[j] == 0))


def ref_token_tree(parents):
    return dense(len(parents), lambda i, j: j in ancestors_or_self(parents, i))


def ref_medusa(prompt, parents):
    def visible(i, j):
        if i < prompt:
            return j <= i
        return j < prompt or (j - prompt) in ancestors_or_self(parents, i - prompt)

    return dense(prompt + len(parents), visible)


def two_d(source: MaskSource) -> np.ndarray:
    assert source.shape[:2] == (1, 1)
    return source.to_dense(block_rows=7)[0, 0]


# --- each kind against its reference -------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 64, 129])
def test_causal_full_prefix(n):
    assert np.array_equal(two_d(library.causal(n)), dense(n, lambda i, j: j <= i))
    assert np.array_equal(two_d(library.full(n)), np.ones((n, n), dtype=bool))
    assert np.array_equal(two_d(library.full(n, kv_len=n + 3)), np.ones((n, n + 3), dtype=bool))
    for prefix in {0, 1, n // 2, n}:
        ref = dense(n, lambda i, j: j < prefix or j <= i)
        assert np.array_equal(two_d(library.prefix_lm(n, prefix)), ref)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 90), window=st.integers(1, 100), causal=st.booleans())
def test_sliding_window(n, window, causal):
    assert np.array_equal(two_d(library.sliding_window(n, window, causal=causal)), ref_sliding(n, window, causal))


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=8), causal=st.booleans())
def test_documents(lengths, causal):
    assert np.array_equal(two_d(library.documents(lengths, causal=causal)), ref_documents(lengths, causal))


@st.composite
def parent_arrays(draw, max_size=60):
    """Random forests: entry ``i`` is -1 or an earlier index, with chains and bushes alike."""
    size = draw(st.integers(1, max_size))
    return [-1] + [draw(st.integers(-1, i - 1)) for i in range(1, size)]


@settings(max_examples=60, deadline=None)
@given(parents=parent_arrays())
def test_token_tree(parents):
    assert np.array_equal(two_d(library.token_tree(parents)), ref_token_tree(parents))


@settings(max_examples=30, deadline=None)
@given(prompt=st.integers(1, 20), parents=parent_arrays(max_size=30))
def test_medusa(prompt, parents):
    assert np.array_equal(two_d(library.medusa(prompt, parents)), ref_medusa(prompt, parents))


def test_token_tree_deep_chain():
    n = 3000  # depth 3000: rows stay an interval test, no walk up the tree
    assert np.array_equal(library.token_tree(np.arange(-1, n - 1)).rows(0, 0, n - 5, n), np.tri(n, dtype=bool)[n - 5 :])


@pytest.mark.parametrize("question, answers", [(1, [1]), (5, [3, 1, 4]), (17, [9, 2, 30, 1])])
def test_shared_question(question, answers):
    assert np.array_equal(two_d(library.shared_question(question, answers)), ref_shared_question(question, answers))


@pytest.mark.parametrize("n, window, globals_, causal", [(1, 1, [0], False), (37, 3, [], False), (64, 5, [0, 1, 63], False), (50, 4, [7, 7, 20], True)])
def test_longformer(n, window, globals_, causal):
    assert np.array_equal(two_d(library.longformer(n, window, globals_, causal=causal)), ref_longformer(n, window, globals_, causal))


@pytest.mark.parametrize("n, block, random_blocks", [(100, 16, 2), (64, 64, 1), (130, 8, 0), (200, 32, 7)])
def test_bigbird(n, block, random_blocks):
    source = library.bigbird(n, 3, [0, n - 1], random_blocks, block=block, seed=5)
    blocks = -(-n // block)
    table = source.table
    assert table.shape == (blocks, random_blocks)
    assert all(len(set(row)) == random_blocks and all(0 <= b < blocks for b in row) for row in table.tolist())
    local = ref_longformer(n, 3, [0, n - 1], False)
    ref = dense(n, lambda i, j: local[i, j] or j // block in table[i // block])
    assert np.array_equal(two_d(source), ref)


def test_hash_buckets():
    n, buckets = 150, 6
    for causal in (True, False):
        source = library.hash_buckets(n, buckets, causal=causal, seed=3)
        bucket = source.bucket
        assert set(bucket.tolist()) <= set(range(buckets))
        ref = dense(n, lambda i, j: bucket[i] == bucket[j] and (j <= i or not causal))
        assert np.array_equal(two_d(source), ref)


@pytest.mark.parametrize("dim", ["heads", "batch"])
def test_stack(dim):
    parts = [library.causal(20), library.sliding_window(20, 3), library.full(20)]
    stacked = library.stack(parts, dim=dim)
    assert stacked.shape == ((1, 3, 20, 20) if dim == "heads" else (3, 1, 20, 20))
    expected = np.stack([two_d(p) for p in parts]).reshape(stacked.shape)
    assert np.array_equal(stacked.to_dense(block_rows=6), expected)


# --- every kind: row windows, determinism, bounded memory ----------------------------------------


def small_sources() -> list[MaskSource]:
    return [
        library.causal(67),
        library.full(33, kv_len=50),
        library.sliding_window(70, 9, causal=True),
        library.sliding_window(70, 9, causal=False),
        library.documents([5, 1, 30, 12], causal=True),
        library.documents([5, 1, 30, 12], causal=False),
        library.prefix_lm(61, 17),
        library.longformer(61, 4, [0, 30]),
        library.bigbird(130, 4, [0], 2, block=16, seed=1),
        library.shared_question(20, [7, 3, 11]),
        library.token_tree([-1, 0, 0, 1, 1, 2, 5, -1, 7]),
        library.medusa(40, library.candidate_tree(25, seed=2)),
        library.hash_buckets(90, 5, seed=4),
        library.stack([library.causal(30), library.sliding_window(30, 5)], dim="heads"),
    ]


@pytest.mark.parametrize("source", small_sources(), ids=lambda s: s.name)
def test_rows_windows_agree_with_dense(source):
    whole = source.to_dense()
    assert whole.dtype == bool
    rng = np.random.default_rng(0)
    for _ in range(20):
        start, stop = sorted(rng.integers(0, source.q_len + 1, size=2).tolist())
        b, h = int(rng.integers(source.batch)), int(rng.integers(source.heads))
        block = source.rows(b, h, start, stop)
        assert block.shape == (stop - start, source.kv_len) and block.dtype == bool
        assert np.array_equal(block, whole[b, h, start:stop])


@pytest.mark.parametrize("source", small_sources()[:3], ids=lambda s: s.name)
def test_rows_outside_the_mask_is_an_error(source):
    with pytest.raises(MaskError, match="outside the mask"):
        source.rows(0, 0, 0, source.q_len + 1)
    with pytest.raises(MaskError, match="outside the mask"):
        source.rows(0, source.heads, 0, 1)


def test_seeded_kinds_are_deterministic():
    for make in (
        lambda seed: library.bigbird(300, 3, [0], 3, block=16, seed=seed),
        lambda seed: library.hash_buckets(300, 4, seed=seed),
        lambda seed: library.token_tree(library.candidate_tree(60, seed=seed)),
    ):
        a, b, other = make(0), make(0), make(1)
        assert a.name == b.name
        assert np.array_equal(a.to_dense(), b.to_dense())
        assert not np.array_equal(a.to_dense(), other.to_dense())


@pytest.mark.parametrize("seed", range(4))
def test_candidate_tree_fans_out_less_with_depth(seed):
    parents = library.candidate_tree(64, depth=4, top_k=10, seed=seed).tolist()
    assert len(parents) == 64 and all(-1 <= p < i for i, p in enumerate(parents))
    depth = []
    for p in parents:
        depth.append(0 if p < 0 else depth[p] + 1)
    per_level = np.bincount(depth)
    assert per_level.size <= 4
    fan_out = per_level[1:] / per_level[:-1]  # children per node, level by level
    assert per_level[0] > fan_out[0] and np.all(np.diff(fan_out) < 0)


def test_names_are_readable():
    assert library.causal(8192).name == "causal(n=8192)"
    assert library.sliding_window(10, 3).name == "sliding_window(n=10, window=3, causal=True)"
    assert library.stack([library.causal(4)] * 2).name == "stack(heads=2: causal(n=4))"


def test_the_cli_offers_every_kind_but_the_combinations():
    assert set(library.KINDS) - set(CLI_KINDS) == {"union", "intersection", "stack"}
    assert set(CLI_KINDS) == {
        "causal", "full", "sliding_window", "documents", "prefix_lm", "causal_blockwise", "longformer", "bigbird",
        "shared_question", "token_tree", "medusa", "hash_buckets",
    }  # fmt: skip


def large_sources(n: int) -> list[MaskSource]:
    return [
        library.causal(n),
        library.sliding_window(n, 512, causal=False),
        library.documents([n // 4, n // 2, n - 3 * (n // 4)]),
        library.longformer(n, 256, [0, 1]),
        library.bigbird(n, 256, [0], 3),
        library.shared_question(n // 2, [n // 4, n - 3 * (n // 4)]),
        library.token_tree(np.arange(-1, n - 1)),
        library.medusa(n - 64, library.candidate_tree(64)),
        library.hash_buckets(n, 16),
    ]


def test_large_masks_stay_bounded_in_memory():
    n, rows = 131072, 128
    for source in large_sources(n):
        tracemalloc.start()
        block = source.rows(0, 0, n - rows, n)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert block.shape == (rows, n)
        assert peak < 4 * rows * n, f"{source.name}: {peak / 2**20:.0f} MiB for {rows} rows"


def test_compiling_a_library_mask_matches_its_dense_form():
    source = library.documents([100, 37, 120])
    plan = compile(source, block=64)
    assert plan.mask_sha256 == mask_sha256(source.to_dense())
    assert plan.visible_pairs == int(source.to_dense().sum())


# --- argument errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: library.causal(0), r"causal: n must be positive, got 0"),
        (lambda: library.causal(3.0), r"causal: n must be an integer"),
        (lambda: library.full(4, kv_len=-1), r"full: kv_len must be positive"),
        (lambda: library.sliding_window(8, 0), r"sliding_window: window must be positive"),
        (lambda: library.documents([]), r"documents: lengths must be a non-empty list"),
        (lambda: library.documents([3, -2]), r"documents: lengths\[1\] = -2; every length must be positive"),
        (lambda: library.documents([3, 0]), r"lengths\[1\] = 0"),
        (lambda: library.documents([1.5]), r"lengths must hold integers"),
        (lambda: library.prefix_lm(8, 9), r"prefix_lm: prefix \(9\) must not exceed n \(8\)"),
        (lambda: library.prefix_lm(8, -1), r"prefix_lm: prefix must be >= 0"),
        (lambda: library.longformer(8, 2, [8]), r"longformer: global_tokens holds 8, outside the sequence \[0, 8\)"),
        (lambda: library.bigbird(100, 2, [], 3, block=64), r"bigbird: random_blocks \(3\) exceeds the 2 key blocks"),
        (lambda: library.bigbird(100, 2, [], 1, block=0), r"bigbird: block must be positive"),
        (lambda: library.shared_question(0, [3]), r"shared_question: question must be positive"),
        (lambda: library.shared_question(4, []), r"shared_question: answers must be a non-empty list"),
        (lambda: library.token_tree([0]), r"token_tree: parents\[0\] = 0; it must be -1: the first node is a root"),
        (lambda: library.token_tree([-1, 0, 2]), r"token_tree: parents\[2\] = 2; it must be -1 \(a root\) or the index of an earlier node \(0..1\)"),
        (lambda: library.token_tree([-1, -2]), r"token_tree: parents\[1\] = -2"),
        (lambda: library.medusa(0, [-1]), r"medusa: prompt must be positive"),
        (lambda: library.medusa(4, [-1, 5]), r"medusa: parents\[1\] = 5"),
        (lambda: library.candidate_tree(200, depth=2, top_k=10), r"candidate_tree: n_nodes \(200\) exceeds the 110 nodes"),
        (lambda: library.hash_buckets(8, 0), r"hash_buckets: buckets must be positive"),
        (lambda: library.stack([]), r"stack: give at least one mask source, got 0"),
        (lambda: library.stack([library.causal(4), library.causal(5)]), r"stack: sources\[1\] \(causal\(n=5\)\) has shape \[5, 5\]"),
        (lambda: library.stack([library.causal(4)], dim="rows"), r"stack: dim must be 'heads' or 'batch'"),
    ],
)
def test_bad_arguments_name_the_parameter(make, message):
    with pytest.raises(MaskError, match=message):
        make()


# --- the CLI -------------------------------------------------------------------------------------


def run(args):
    return CliRunner().invoke(mask, args, prog_name="maskc mask")


@pytest.mark.parametrize(
    "args, source",
    [
        (["causal", "-n", "37"], library.causal(37)),
        (["full", "-n", "5", "--kv-len", "9"], library.full(5, kv_len=9)),
        (["sliding-window", "-n", "40", "--window", "6", "--bidirectional"], library.sliding_window(40, 6, causal=False)),
        (["documents", "--lengths", "3,10,7", "-n", "20"], library.documents([3, 10, 7])),
        (["prefix-lm", "-n", "30", "--prefix", "8"], library.prefix_lm(30, 8)),
        (["longformer", "-n", "30", "--window", "3", "--globals", "2"], library.longformer(30, 3, [0, 1])),
        (["longformer", "-n", "30", "--window", "3", "--global-tokens", "4,29", "--causal"], library.longformer(30, 3, [4, 29], causal=True)),
        (["bigbird", "-n", "100", "--window", "3", "--globals", "1", "--random-blocks", "2", "--block", "16", "--seed", "7"], library.bigbird(100, 3, [0], 2, block=16, seed=7)),
        (["shared-question", "--question", "9", "--answers", "4,6"], library.shared_question(9, [4, 6])),
        (["token-tree", "--parents", "-1,0,0,1"], library.token_tree([-1, 0, 0, 1])),
        (["token-tree", "--tree-nodes", "20", "--seed", "3"], library.token_tree(library.candidate_tree(20, seed=3))),
        (["medusa", "--prompt", "12", "--tree-nodes", "15"], library.medusa(12, library.candidate_tree(15))),
        (["hash-buckets", "-n", "50", "--buckets", "4", "--seed", "1", "--bidirectional"], library.hash_buckets(50, 4, causal=False, seed=1)),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else "",
)
def test_cli_writes_the_source(tmp_path, args, source):
    out = tmp_path / "mask.npy"
    result = run([*args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.load(out), two_d(source))
    assert result.stdout.count("\n") == 1 and source.name in result.stdout and "density" in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["mask.npy"]  # no temporary file left behind


def test_cli_heads_quiet_and_parents_files(tmp_path):
    out = tmp_path / "m.npy"
    result = run(["causal", "-n", "6", "--heads", "3", "-o", str(out), "--quiet"])
    assert result.exit_code == 0 and result.output == ""
    assert np.array_equal(np.load(out), np.stack([np.tri(6, dtype=bool)] * 3))
    parents = [-1, 0, 1, 1, -1, 4]
    np.save(tmp_path / "p.npy", np.array(parents))
    (tmp_path / "p.json").write_text(json.dumps(parents))
    for file in ("p.npy", "p.json"):
        result = run(["medusa", "--prompt", "5", "--parents", str(tmp_path / file), "-o", str(out), "-q"])
        assert result.exit_code == 0, result.output
        assert np.array_equal(np.load(out), ref_medusa(5, parents))


@pytest.mark.parametrize(
    "args, message",
    [
        (["sliding-window", "-n", "8"], "sliding_window needs --window, e.g. --window 256"),
        (["causal", "-n", "8", "--window", "3"], "--window does not apply to causal"),
        (["causal", "-n", "8", "--bidirectional"], "--causal/--bidirectional does not apply to causal"),
        (["causal", "-n", "0"], "causal: n must be positive, got 0"),
        (["documents", "--lengths", "3,x"], "--lengths takes comma-separated integers"),
        (["documents", "--lengths", "3,4", "-n", "8"], "-n 8 does not match the 7 tokens given by the other options of documents"),
        (["longformer", "-n", "8", "--window", "2", "--globals", "1", "--global-tokens", "0"], "not both"),
        (["longformer", "-n", "8", "--window", "2", "--globals", "9"], "--globals must be between 0 and n (8)"),
        (["token-tree"], "token_tree needs exactly one of --parents"),
        (["token-tree", "--parents", "-1,0,3"], "token_tree: parents[2] = 3"),
        (["token-tree", "--parents", "-1,0", "--seed", "3"], "--seed does not apply to token_tree"),
        (["medusa", "--prompt", "4", "--parents", "missing.json"], "missing.json: cannot read the --parents file"),
        (["causal", "-n", "4", "-o", "mask.bin"], "--output must be a .npy file"),
        (["causal", "-n", "4", "-o", "no/such/dir/m.npy"], "cannot write no/such/dir/m.npy"),
    ],
)
def test_cli_user_errors_are_one_line(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = run(args if "-o" in args else [*args, "-o", "m.npy"])
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary file left


@pytest.mark.parametrize("args", [["nosuchkind", "-o", "m.npy"], ["causal", "-n", "4"], ["causal", "-n", "four", "-o", "m.npy"]])
def test_cli_parse_errors_exit_2_without_traceback(args):
    result = run(args)
    assert result.exit_code == 2
    assert sum(line.startswith("Error:") for line in result.output.splitlines()) == 1
    assert "Traceback" not in result.output
