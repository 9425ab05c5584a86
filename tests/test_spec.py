"""JSON mask specs: every library kind by name, nested unions and intersections, errors that name
the field at fault, and the CLI's spec input and ``maskc export``."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
from click.testing import CliRunner

import maskc
from maskc import library
from maskc.cli.main import cli
from maskc.errors import MaskError
from maskc.kinds import MAX_PARTS
from maskc.spec import MAX_SPEC_DEPTH, MAX_SPEC_TOKENS, from_spec, load_spec

EXAMPLES = [
    ({"kind": "causal", "n": 50}, library.causal(50)),
    ({"kind": "full", "n": 20, "kv_len": 30}, library.full(20, kv_len=30)),
    ({"kind": "sliding_window", "n": 60, "window": 7, "causal": False}, library.sliding_window(60, 7, causal=False)),
    ({"kind": "documents", "lengths": [10, 25, 5], "causal": True}, library.documents([10, 25, 5])),
    ({"kind": "prefix_lm", "n": 40, "prefix": 12}, library.prefix_lm(40, 12)),
    ({"kind": "causal_blockwise", "n": 40, "block": 8}, library.causal_blockwise(40, 8)),
    ({"kind": "longformer", "n": 40, "window": 3, "global_tokens": [0, 39]}, library.longformer(40, 3, [0, 39])),
    ({"kind": "bigbird", "n": 64, "window": 3, "global_tokens": [0], "random_blocks": 2, "block": 16, "seed": 4},
     library.bigbird(64, 3, [0], 2, block=16, seed=4)),
    ({"kind": "shared_question", "question": 9, "answers": [4, 6]}, library.shared_question(9, [4, 6])),
    ({"kind": "token_tree", "parents": [-1, 0, 0, 1]}, library.token_tree([-1, 0, 0, 1])),
    ({"kind": "medusa", "prompt": 10, "parents": [-1, 0, -1]}, library.medusa(10, [-1, 0, -1])),
    ({"kind": "hash_buckets", "n": 30, "buckets": 3, "causal": False, "seed": 2}, library.hash_buckets(30, 3, causal=False, seed=2)),
    ({"kind": "union", "of": [{"kind": "sliding_window", "n": 40, "window": 4}, {"kind": "prefix_lm", "n": 40, "prefix": 5}]},
     library.union(library.sliding_window(40, 4), library.prefix_lm(40, 5))),
    ({"kind": "intersection", "of": [{"kind": "documents", "lengths": [20, 20]}, {"kind": "sliding_window", "n": 40, "window": 6}]},
     library.intersection(library.documents([20, 20]), library.sliding_window(40, 6))),
    ({"kind": "stack", "of": [{"kind": "causal", "n": 16}, {"kind": "full", "n": 16}], "dim": "batch"},
     library.stack([library.causal(16), library.full(16)], dim="batch")),
]


@pytest.mark.parametrize("spec, source", EXAMPLES, ids=[e[0]["kind"] for e in EXAMPLES])
def test_every_kind_builds_its_library_mask(spec, source, tmp_path):
    built = from_spec(spec)
    assert built.shape == source.shape and built.name == source.name
    assert np.array_equal(built.to_dense(), source.to_dense())
    path = tmp_path / "m.json"
    path.write_text(json.dumps(spec))
    assert maskc.compile(path).to_bytes() == maskc.compile(spec).to_bytes() == maskc.compile(source).to_bytes()


def test_every_library_kind_is_a_spec_kind():
    assert {e[0]["kind"] for e in EXAMPLES} == set(library.KINDS)
    for name, kind in library.KINDS.items():
        assert kind.function is getattr(library, name)
        assert [p.name for p in kind.params] == list(inspect.signature(kind.function).parameters)


@pytest.mark.parametrize("spelling", ["sliding-window", "sliding_window"])
def test_kind_names_take_dashes_or_underscores(spelling):
    built = from_spec({"kind": spelling, "n": 30, "window": 4})
    assert built.name == library.sliding_window(30, 4).name == "sliding_window(n=30, window=4, causal=True)"


@pytest.mark.parametrize(
    "spec, message",
    [
        ([1, 2], r"spec must be a JSON object with a \"kind\", got a list"),
        ({"n": 4}, r"spec: missing \"kind\""),
        ({"kind": "triangle"}, r"spec.kind: unknown kind 'triangle'; known kinds: causal, full"),
        ({"kind": "prefix-lm", "n": 4, "prefix": 5}, r"spec: prefix_lm: prefix \(5\) must not exceed n \(4\)"),
        ({"kind": 3}, r"spec.kind: unknown kind 3"),
        ({"kind": "documents"}, r"spec: documents needs parameter 'lengths' \(a list of integers\)"),
        ({"kind": "causal", "n": 4, "window": 2}, r"spec: unknown parameter 'window' for causal; it takes n"),
        ({"kind": "causal", "n": "4"}, r"spec.n must be an integer, got a string \"4\""),
        ({"kind": "causal", "n": True}, r"spec.n must be an integer, got a boolean true"),
        ({"kind": "causal", "n": 4.0}, r"spec.n must be an integer, got a number 4.0"),
        ({"kind": "causal", "n": 10**9}, r"^spec: causal: n must be at most 1048576 \(maskc.kinds.MAX_TOKENS\), got 1000000000$"),
        ({"kind": "documents", "lengths": 10**5000}, r"^spec.lengths must be a list of integers, got an integer <int>$"),
        ({"kind": "sliding_window", "n": 4, "window": 2, "causal": 1}, r"spec.causal must be true or false, got an integer 1"),
        ({"kind": "documents", "lengths": [3, "x"]}, r"spec.lengths must be a list of integers"),
        ({"kind": "documents", "lengths": [3, -2]}, r"spec: documents: lengths\[1\] = -2; every length must be positive"),
        ({"kind": "union", "of": []}, r"spec.of must be a non-empty list of specs, got a list \[\]"),
        ({"kind": "union", "of": [{"kind": "causal", "n": 4}]}, r"spec: union: give at least two mask sources, got 1"),
        ({"kind": "union", "of": [{"kind": "causal", "n": 4}, {"kind": "causal", "n": 5}]}, r"spec: union: sources\[1\]"),
        ({"kind": "intersection", "of": [{"kind": "causal", "n": 4}, {"kind": "documents", "lengths": "4"}]},
         r"spec.of\[1\].lengths must be a list of integers, got a string \"4\""),
        ({"kind": "union", "of": [{"kind": "causal", "n": 4}, {"kind": "union", "of": [{"kind": "causal"}]}]},
         r"spec.of\[1\].of\[0\]: causal needs parameter 'n'"),
        ({"kind": "stack", "of": [{"kind": "causal", "n": 4}], "dim": "rows"}, r"spec: stack: dim must be 'heads' or 'batch'"),
    ],
)
def test_spec_errors_name_the_field_at_fault(spec, message):
    with pytest.raises(MaskError, match=message):
        from_spec(spec)


def test_spec_files(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"kind": "causal", "n": 4,}')
    with pytest.raises(MaskError, match=r"bad.json: not valid JSON: .* at line 1, column 27"):
        load_spec(path)
    path.write_text('{"kind": "causal", "n": 0}')
    with pytest.raises(MaskError, match=r"bad.json: causal: n must be positive, got 0"):
        maskc.open_mask(path)
    with pytest.raises(MaskError, match="mask file not found"):
        maskc.open_mask(tmp_path / "missing.json")


# --- hostile specs: the work a spec causes is bounded before it is done ----------------------------


def nested_union(depth: int) -> dict:
    """A spec whose kinds nest ``depth`` deep: union(union(... causal ..., causal), causal)."""
    spec = {"kind": "causal", "n": 4}
    for _ in range(depth - 1):
        spec = {"kind": "union", "of": [spec, {"kind": "causal", "n": 4}]}
    return spec


def test_spec_nesting_stops_at_the_depth_limit(tmp_path):
    assert from_spec(nested_union(MAX_SPEC_DEPTH)).shape == (1, 1, 4, 4)
    with pytest.raises(MaskError, match=r"^spec(\.of\[0\]){15}\.of: kinds nest at most 16 deep in a spec \(maskc.spec.MAX_SPEC_DEPTH\)$"):
        from_spec(nested_union(MAX_SPEC_DEPTH + 1))
    with pytest.raises(MaskError, match="kinds nest at most 16 deep"):
        from_spec(nested_union(100_000))  # was a RecursionError
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(MaskError, match=r"deep.json: JSON nested too deeply to read"):
        load_spec(path)


def test_spec_parts_and_tokens_are_bounded():
    many = {"kind": "stack", "of": [{"kind": "causal", "n": 1}] * MAX_PARTS}
    with pytest.raises(MaskError, match=r"^spec.of\[1023\]: a spec holds at most 1024 kinds \(maskc.kinds.MAX_PARTS\)$"):
        from_spec(many)
    heads = MAX_SPEC_TOKENS // 262144
    assert from_spec({"kind": "stack", "of": [{"kind": "causal", "n": 262144}] * heads}).shape == (1, heads, 262144, 262144)
    with pytest.raises(MaskError, match=r"^spec.of\[128\]: the masks of this spec span more than 33554432 tokens in all"):
        from_spec({"kind": "stack", "of": [{"kind": "causal", "n": 262144}] * (heads + 1)})


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"kind": "causal", "n": 4, "n": 5}', r"s.json: the key 'n' appears twice in one object; give each key once"),
        ('{"kind": "union", "of": [{"kind": "causal", "kind": "full", "n": 4}]}', r"the key 'kind' appears twice"),
        ('{"kind": "causal", "n": ' + "9" * 5000 + "}", r"s.json: an integer of 5000 digits; at most 19 \(maskc.spec.MAX_INT_DIGITS\)"),
        ('{"kind": "causal", "n": 99999999999999999999}', r"an integer of 20 digits"),
        ('{"kind": "causal", "n": 1e400}', r"s.json.n must be an integer, got a number Infinity"),
    ],
)
def test_hostile_json_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "s.json"
    path.write_text(text)
    with pytest.raises(MaskError, match=message):
        load_spec(path)


def test_spec_files_are_read_within_a_bound(tmp_path, monkeypatch):
    path = tmp_path / "s.json"
    path.write_text('{"kind": "causal", "n": 4}' + " " * 100)
    monkeypatch.setattr("maskc.spec.MAX_SPEC_BYTES", 64)
    with pytest.raises(MaskError, match=r"s.json: the spec is larger than 64 bytes \(maskc.spec.MAX_SPEC_BYTES\)"):
        load_spec(path)
    path.write_bytes(b'{"kind": "caus\xffal"}')
    monkeypatch.setattr("maskc.spec.MAX_SPEC_BYTES", 1 << 20)
    with pytest.raises(MaskError, match=r"s.json: the spec is not UTF-8 text \(byte 14\)"):
        load_spec(path)


# --- the CLI ---------------------------------------------------------------------------------------


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKC_CACHE_DIR", str(tmp_path / "cache"))
    return CliRunner()


def one_line_error(result, fragment):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and fragment in lines[0], result.output


def test_cli_compiles_a_spec_and_exports_flashmask(runner, tmp_path):
    spec = tmp_path / "docs.json"
    spec.write_text(json.dumps({"kind": "documents", "lengths": [300, 200, 524], "causal": True}))
    plan = tmp_path / "docs.plan"
    result = runner.invoke(cli, ["compile", str(spec), "-o", str(plan), "--variant", "intervals", "--block", "64x64"])
    assert result.exit_code == 0, result.output
    assert "1024x1024 mask" in result.output and "intervals" in result.output
    info = json.loads(runner.invoke(cli, ["inspect", str(plan), "--json"]).output)
    assert info["variant"] == "intervals" and info["partial_distinct"] == 0 and info["plan_bytes"] == plan.stat().st_size
    assert runner.invoke(cli, ["verify", str(plan), str(spec)]).exit_code == 0

    exported = tmp_path / "docs_fm.npy"
    result = runner.invoke(cli, ["export", str(plan), "--flashmask", "-o", str(exported)])
    assert result.exit_code == 0, result.output
    assert "[1, 1, 1024, 1] int32" in result.output and "causal=True" in result.output
    array = np.load(exported)
    assert array.dtype == np.int32 and array[0, 0, :, 0].tolist() == [300] * 300 + [500] * 200 + [1024] * 524
    again = tmp_path / "again.plan"
    result = runner.invoke(cli, ["compile", str(exported), "--flashmask", "causal", "-o", str(again), "--variant", "intervals", "--block", "64x64"])
    assert result.exit_code == 0, result.output
    assert again.read_bytes() == plan.read_bytes()  # the same mask from FlashMask's form: the same plan

    dense = tmp_path / "dense.npy"
    np.save(dense, maskc.open_mask(spec).to_dense()[0, 0])
    assert "(from cache)" in runner.invoke(cli, ["compile", str(dense), "-o", str(tmp_path / "d.plan"), "--variant", "intervals", "--block", "64x64"]).output


@pytest.mark.parametrize(
    "make, args, fragment",
    [
        (lambda t: (t / "s.json").write_text('{"kind": "documents", "lengths": [3, 0]}'), ["compile", "{t}/s.json", "-o", "{t}/p"], "lengths[1] = 0"),
        (lambda t: (t / "s.json").write_text("{"), ["compile", "{t}/s.json", "-o", "{t}/p"], "not valid JSON"),
        (lambda t: (t / "s.json").write_text('{"kind": "causal", "n": 4, "n": 4}'), ["compile", "{t}/s.json", "-o", "{t}/p"], "appears twice"),
        (lambda t: (t / "s.json").write_text('{"kind": "causal", "n": 1000000000}'), ["compile", "{t}/s.json", "-o", "{t}/p"], "n must be at most 1048576"),
        (lambda t: (t / "s.json").write_text('{"kind": "hash_buckets", "n": 64, "buckets": 4}'),
         ["compile", "{t}/s.json", "-o", "{t}/p", "--variant", "intervals"], "does not fit the interval form"),
        (lambda t: np.save(t / "f.npy", np.zeros((1, 1, 8, 3), dtype=np.int32)), ["compile", "{t}/f.npy", "--flashmask", "causal", "-o", "{t}/p"], "1|2|4"),
        (None, ["compile", "{t}/f.npy", "--flashmask", "causal", "-o", "{t}/p"], "FlashMask index file not found"),
        (None, ["compile", "{t}/f.npy", "--variant", "bitmaps", "-o", "{t}/p"], "Invalid value for '--variant'"),
        (lambda t: (t / "s.json").write_text('{"kind": "hash_buckets", "n": 64, "buckets": 4}'), ["export", "{t}/p.plan", "--flashmask", "-o", "{t}/x.npy"], "not found"),
    ],
)
def test_cli_spec_and_flashmask_errors_are_one_line(runner, tmp_path, make, args, fragment):
    if make is not None:
        make(tmp_path)
    one_line_error(runner.invoke(cli, [a.format(t=tmp_path) for a in args]), fragment)


def test_export_errors(runner, tmp_path):
    spec = tmp_path / "s.json"
    spec.write_text('{"kind": "hash_buckets", "n": 64, "buckets": 4}')
    plan = tmp_path / "p.plan"
    assert runner.invoke(cli, ["compile", str(spec), "-o", str(plan)]).exit_code == 0
    one_line_error(runner.invoke(cli, ["export", str(plan), "--flashmask", "-o", str(tmp_path / "x.npy")]), "does not fit FlashMask's column intervals")
    one_line_error(runner.invoke(cli, ["export", str(plan), "-o", str(tmp_path / "x.npy")]), "--flashmask")
    one_line_error(runner.invoke(cli, ["export", str(plan), "--flashmask", "-o", str(tmp_path / "x.bin")]), "must be a .npy file")
    assert not list(tmp_path.glob("x*"))
