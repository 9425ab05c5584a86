"""The maskc command: compile, inspect, verify, cache, and one-line errors with status 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maskc.cli.main import cli


@pytest.fixture
def runner(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKC_CACHE_DIR", str(tmp_path / "cache"))
    return CliRunner()


@pytest.fixture
def mask_file(tmp_path, rng):
    path = tmp_path / "m.npy"
    mask = np.tril(np.ones((300, 300), dtype=bool))
    mask[:, :20] |= rng.random((300, 20)) < 0.5
    np.save(path, mask)
    return path


def compile_ok(runner, mask_file, plan, *extra):
    result = runner.invoke(cli, ["compile", str(mask_file), "-o", str(plan), *extra])
    assert result.exit_code == 0, result.output
    return result


def assert_user_error(result, fragment):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert fragment in lines[0]
    assert "Traceback" not in result.output


def test_compile_inspect_verify(runner, mask_file, tmp_path):
    plan = tmp_path / "m.plan"
    out = compile_ok(runner, mask_file, plan, "--block", "64x64").output
    assert "300x300" in out and "partial" in out
    info = json.loads(runner.invoke(cli, ["inspect", str(plan), "--json"]).output)
    for key in ("q_len", "kv_len", "batch", "heads", "block_m", "block_n", "visible_pairs", "tiles_empty", "tiles_full",
                "tiles_partial", "partial_distinct", "plan_bytes", "variant", "reordered"):
        assert key in info
    mask = np.load(mask_file)
    assert (info["q_len"], info["block_m"], info["visible_pairs"]) == (300, 64, int(mask.sum()))
    assert info["plan_bytes"] == plan.stat().st_size and info["variant"] == "block_sparse" and info["reordered"] is False
    assert info["tiles_empty"] + info["tiles_full"] + info["tiles_partial"] == 25
    human = runner.invoke(cli, ["inspect", str(plan)]).output
    assert "visible" in human and "tiles" in human
    assert runner.invoke(cli, ["verify", str(plan), str(mask_file)]).exit_code == 0


def test_verify_reports_a_mismatch(runner, mask_file, tmp_path):
    plan = tmp_path / "m.plan"
    compile_ok(runner, mask_file, plan)
    other = np.load(mask_file)
    other[123, 45] = not other[123, 45]
    np.save(tmp_path / "other.npy", other)
    result = runner.invoke(cli, ["verify", str(plan), str(tmp_path / "other.npy")])
    assert result.exit_code == 1 and "query 123, key 45" in result.output


def test_quiet_and_cache(runner, mask_file, tmp_path):
    assert compile_ok(runner, mask_file, tmp_path / "a.plan", "--quiet").output == ""
    assert "(from cache)" in compile_ok(runner, mask_file, tmp_path / "b.plan").output
    assert "(from cache)" not in compile_ok(runner, mask_file, tmp_path / "c.plan", "--no-cache").output
    assert (tmp_path / "a.plan").read_bytes() == (tmp_path / "b.plan").read_bytes() == (tmp_path / "c.plan").read_bytes()
    assert "1 plans" in runner.invoke(cli, ["cache", "stats"]).output
    assert "300x300" in runner.invoke(cli, ["cache", "ls"]).output
    assert "removed 1" in runner.invoke(cli, ["cache", "clear"]).output


def test_png_tile_map(runner, mask_file, tmp_path):
    pytest.importorskip("matplotlib")
    plan, png = tmp_path / "m.plan", tmp_path / "m.png"
    compile_ok(runner, mask_file, plan, "--block", "32x32")
    result = runner.invoke(cli, ["inspect", str(plan), "--png", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_png_without_matplotlib(runner, mask_file, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    plan = tmp_path / "m.plan"
    compile_ok(runner, mask_file, plan)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert_user_error(runner.invoke(cli, ["inspect", str(plan), "--png", str(tmp_path / "x.png")]), "pip install 'maskc[viz]'")


@pytest.mark.parametrize(
    "make, args, fragment",
    [
        (None, ["compile", "{tmp}/missing.npy", "-o", "{tmp}/p"], "not found"),
        (lambda t: np.save(t / "m.npy", np.ones(7, dtype=bool)), ["compile", "{tmp}/m.npy", "-o", "{tmp}/p"], "dimensions"),
        (lambda t: np.save(t / "m.npy", np.full((4, 4), 3)), ["compile", "{tmp}/m.npy", "-o", "{tmp}/p"], "value 3"),
        (lambda t: np.save(t / "m.npy", np.array([[np.nan, 1.0]])), ["compile", "{tmp}/m.npy", "-o", "{tmp}/p"], "NaN"),
        (lambda t: np.save(t / "m.npy", np.ones((4, 4), dtype=bool)), ["compile", "{tmp}/m.npy", "-o", "{tmp}/p", "--block", "100x100"], "block size"),
        (lambda t: np.save(t / "m.npy", np.ones((4, 4), dtype=bool)), ["compile", "{tmp}/m.npy", "-o", "{tmp}/nodir/p"], "does not exist"),
        (lambda t: (t / "p").write_bytes(b"garbage"), ["inspect", "{tmp}/p"], "not a maskc plan"),
        (None, ["inspect", "{tmp}/missing.plan"], "not found"),
        (lambda t: (t / "p").write_bytes(b"garbage"), ["verify", "{tmp}/p", "{tmp}/p"], "not a maskc plan"),
        (None, ["compile", "{tmp}/m.npy"], "Missing option"),
        (None, ["mask", "causal", "-o", "{tmp}/m.npy"], "-n"),
    ],
)
def test_user_errors_are_one_line_with_status_2(runner, tmp_path, make, args, fragment):
    if make is not None:
        make(tmp_path)
    assert_user_error(runner.invoke(cli, [a.format(tmp=tmp_path) for a in args]), fragment)


def test_truncated_plan_is_a_user_error(runner, mask_file, tmp_path):
    plan = tmp_path / "m.plan"
    compile_ok(runner, mask_file, plan)
    plan.write_bytes(plan.read_bytes()[:-3])
    assert_user_error(runner.invoke(cli, ["inspect", str(plan)]), "checksum")


def test_interrupted_compile_leaves_no_file(runner, mask_file, tmp_path, monkeypatch):
    import maskc.runtime.format.files as fmt

    def boom(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(fmt.os, "fsync", boom)
    result = runner.invoke(cli, ["compile", str(mask_file), "-o", str(tmp_path / "m.plan"), "--no-cache"])
    assert result.exit_code != 0
    assert not (tmp_path / "m.plan").exists() and not list(tmp_path.glob(".m.plan*"))


def test_dense_and_reordered_plans_through_the_cli(runner, tmp_path):
    causal = tmp_path / "causal.npy"
    np.save(causal, np.tri(256, dtype=bool))
    plan = tmp_path / "c.plan"
    assert "dense_causal" in compile_ok(runner, causal, plan, "--variant", "dense_causal").output
    assert "(run by SDPA)" in runner.invoke(cli, ["inspect", str(plan)]).output
    assert runner.invoke(cli, ["verify", str(plan), str(causal)]).exit_code == 0
    i = np.arange(256)
    order = np.random.default_rng(0).permutation(256)
    band = (np.abs(i[:, None] - i[None, :]) < 8)[order][:, order]
    scrambled = tmp_path / "band.npy"
    np.save(scrambled, band)
    compile_ok(runner, scrambled, plan, "--block", "32x32", "--reorder", "rcm")
    info = json.loads(runner.invoke(cli, ["inspect", str(plan), "--json"]).output)
    assert info["reordered"] is True and info["perm"]["length"] == 256 and info["perm"]["method"] == "rcm"
    assert info["perm"]["tiles_after"]["full"] + info["perm"]["tiles_after"]["partial"] == info["tiles_full"] + info["tiles_partial"]
    assert info["tiles_full"] + info["tiles_partial"] < info["perm"]["tiles_before"]["partial"]
    assert "reordered   rcm: tiles 64 -> " in runner.invoke(cli, ["inspect", str(plan)]).output
    assert runner.invoke(cli, ["verify", str(plan), str(scrambled)]).exit_code == 0
    assert_user_error(runner.invoke(cli, ["compile", str(scrambled), "-o", str(plan), "--variant", "dense"]), "is not all-true")


def test_predictions_through_the_cli(runner, tmp_path):
    from conftest import make_profile

    profile = tmp_path / "gpu.json"
    profile.write_text(json.dumps(make_profile()))
    causal = tmp_path / "causal.npy"
    np.save(causal, np.tri(512, dtype=bool))
    plan = tmp_path / "c.plan"
    out = compile_ok(runner, causal, plan, "--profile", str(profile)).output
    assert "dense_causal" in out and "predicted fwd" in out and "(Test GPU)" in out
    human = runner.invoke(cli, ["inspect", str(plan)]).output
    assert "predicted   profile Test GPU, B=1 H=16 D=128 bf16, objective fwd_bwd" in human
    assert "* dense_causal" in human and "  block_sparse/64x64" in human
    info = json.loads(runner.invoke(cli, ["inspect", str(plan), "--json"]).output)
    assert info["predictions"]["chosen"] == "dense_causal" and "block_sparse/128x128" in info["predictions"]["candidates"]
    again = json.loads(runner.invoke(cli, ["inspect", str(plan), "--json", "--profile", str(profile), "--workload", "batch=4"]).output)
    stored = info["predictions"]["candidates"]["dense_causal"]["fwd_ms"]
    assert again["reevaluated"]["workload"]["batch"] == 4 and again["reevaluated"]["candidates"]["dense_causal"]["fwd_ms"] > stored
    assert "(re-evaluated)" in runner.invoke(cli, ["inspect", str(plan), "--profile", str(profile), "--workload", "head_dim=64"]).output
    assert_user_error(runner.invoke(cli, ["inspect", str(plan), "--workload", "batch=2"]), "no profile to predict with")
    assert_user_error(runner.invoke(cli, ["compile", str(causal), "-o", str(plan), "--profile", "Nope GPU"]), "run 'maskc calibrate' on that GPU")
    assert_user_error(runner.invoke(cli, ["compile", str(causal), "-o", str(plan), "--workload", "heads=x"]), "must be an integer")
    explicit = tmp_path / "e.plan"
    compile_ok(runner, causal, explicit, "--block", "64x64", "--variant", "block_sparse")
    out = runner.invoke(cli, ["inspect", str(explicit), "--profile", str(profile)]).output
    assert "* block_sparse/64x64" in out and "(re-evaluated)" in out and "fwd+bwd" in out
    none = compile_ok(runner, causal, plan, "--no-cache").output
    assert "block_sparse" in none and "predicted" not in none
    assert "predicted   none: no cost-model profile" in runner.invoke(cli, ["inspect", str(plan)]).output


def test_compile_encodes_and_validates_the_plan_once(runner, mask_file, tmp_path, monkeypatch):
    import maskc.runtime.format.codec as fmt

    calls = []
    validate = fmt.validate
    monkeypatch.setattr(fmt, "validate", lambda plan: calls.append(1) or validate(plan))
    for flag, expected in (("--no-cache", 1), ("--cache", 1), ("--cache", 1)):  # a miss encodes, a hit decodes: once each
        calls.clear()
        compile_ok(runner, mask_file, tmp_path / f"m{flag}.plan", flag)
        assert len(calls) == expected, flag
    (entry,) = (tmp_path / "cache").glob("*.plan")
    assert (tmp_path / "m--cache.plan").read_bytes() == (tmp_path / "m--no-cache.plan").read_bytes() == entry.read_bytes()


def test_an_unwritable_cache_warns_in_one_line_and_the_plan_is_written(runner, mask_file, tmp_path, monkeypatch):
    (tmp_path / "blocker").write_text("a file where the cache directory should be")
    monkeypatch.setenv("MASKC_CACHE_DIR", str(tmp_path / "blocker" / "cache"))
    result = runner.invoke(cli, ["compile", str(mask_file), "-o", str(tmp_path / "m.plan"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and result.stderr.startswith("Warning: plan cache: cannot write ") and len(result.stderr.splitlines()) == 1
    assert "Not a directory; the plan was not cached" in result.stderr
    compile_ok(runner, mask_file, tmp_path / "n.plan", "--no-cache")
    assert (tmp_path / "m.plan").read_bytes() == (tmp_path / "n.plan").read_bytes()


def test_a_full_disk_names_the_output(runner, mask_file, tmp_path, monkeypatch):
    import errno
    import os

    import maskc.runtime.format.files as fmt

    def full(*_):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fmt.os, "fsync", full)
    result = runner.invoke(cli, ["compile", str(mask_file), "-o", str(tmp_path / "m.plan"), "--no-cache"])
    assert_user_error(result, f"No space left on device: {tmp_path / 'm.plan'}")
    assert not list(tmp_path.glob("*m.plan*"))


def test_a_device_is_not_read_as_a_plan(runner, tmp_path):
    for args in (["inspect", "/dev/zero"], ["verify", "/dev/zero", "/dev/zero"], ["export", "/dev/zero", "--flashmask", "-o", str(tmp_path / "x.npy")]):
        assert_user_error(runner.invoke(cli, args), "/dev/zero: not a regular file")


JUNK = [
    None, 3, "text", [1, [2, {"x": None}]], {"candidates": [1, 2]}, {"candidates": {"a": 5, "b": {"fwd_ms": "fast"}}},
    {"candidates": {"a": {"fwd_ms": 1.0}}, "chosen": "a"}, {"candidates": {"a": {"fwd_ms": 1.0, "fwd_bwd_ms": True}}, "workload": [1, 2]},
    {"profile": {"name": 1}, "objective": 7, "note": ["x"], "workload": {"batch": [1], "heads": "many"}, "candidates": {}},
    {"workload": "B=1", "candidates": {"a": {"variant": "block_sparse", "block": [64, 64], "reordered": False, "work": {}}}},
]
plain = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
                         ["candidates", "chosen", "workload", "profile", "objective", "note", "fwd_ms", "fwd_bwd_ms", "tiles_before", "tiles_after",
                          "full", "partial", "method", "bandwidth_before", "bandwidth_after", "block_sparse/32x32+rcm"]), inner, max_size=4),
                     max_leaves=12)


@pytest.fixture(scope="module")
def reordered_plan():
    order = np.random.default_rng(0).permutation(128)
    band = (np.abs(np.arange(128)[:, None] - np.arange(128)[None, :]) < 4)[order][:, order]
    import maskc

    return maskc.compile(band, block=32, reorder="rcm")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(predictions=plain | st.sampled_from(JUNK), reorder=plain | st.sampled_from(JUNK))
def test_inspect_shows_odd_metadata_of_an_accepted_plan(reordered_plan, predictions, reorder):
    """Whatever plain data a plan's predictions and reordering record hold, the summary, its JSON
    and its text come out (showing what reads) instead of a traceback."""
    from dataclasses import replace

    from maskc.cli.inspect_cmd import _human, summary
    from maskc.runtime.format import decode

    if not isinstance(predictions, dict):
        predictions = {"candidates": predictions}
    plan = decode(replace(reordered_plan, predictions=predictions, options={"block": [32, 32], "reorder": reorder}).to_bytes())
    info = summary(plan, 1000)
    json.loads(json.dumps(info))
    text = _human("p.plan", info)
    assert "reordered   " in text and "mask hash" in text


@pytest.mark.parametrize("predictions", JUNK[4:])
def test_inspect_re_evaluates_odd_predictions_or_says_why_not(runner, tmp_path, reordered_plan, predictions):
    from dataclasses import replace

    from conftest import make_profile

    (tmp_path / "gpu.json").write_text(json.dumps(make_profile()))
    path = tmp_path / "odd.plan"
    path.write_bytes(replace(reordered_plan, predictions=predictions).to_bytes())
    for extra in ([], ["--json"]):
        result = runner.invoke(cli, ["inspect", str(path), "--profile", str(tmp_path / "gpu.json"), *extra])
        assert result.exit_code in (0, 2) and "Traceback" not in result.output, result.output
        if result.exit_code == 2:
            assert_user_error(result, "")


def test_inspect_profile_none_shows_the_recorded_predictions(runner, tmp_path, monkeypatch):
    from conftest import make_profile

    profile = tmp_path / "gpu.json"
    profile.write_text(json.dumps(make_profile()))
    causal = tmp_path / "causal.npy"
    np.save(causal, np.tri(256, dtype=bool))
    plan = tmp_path / "c.plan"
    compile_ok(runner, causal, plan, "--profile", str(profile))
    human = runner.invoke(cli, ["inspect", str(plan), "--profile", "none"])
    assert human.exit_code == 0, human.output
    assert "predicted   profile Test GPU, B=1 H=16 D=128 bf16, objective fwd_bwd\n" in human.output
    assert "note: --profile none: no profile, so the recorded predictions are not re-evaluated" in human.output
    info = json.loads(runner.invoke(cli, ["inspect", str(plan), "--json", "--profile", "None"]).output)
    assert info["reevaluated"] == {"profile": None, "note": "--profile none: no profile, so the recorded predictions are not re-evaluated"}


def test_cache_ls_shows_bad_entries(runner, mask_file, tmp_path):
    compile_ok(runner, mask_file, tmp_path / "m.plan")
    cache_dir = tmp_path / "cache"
    (cache_dir / f"{'a' * 64}.plan").mkdir()
    (cache_dir / f"{'b' * 64}.plan").write_bytes(b"not a plan" * 10)
    (cache_dir / f"{'c' * 64}.plan").symlink_to("/dev/zero")
    result = runner.invoke(cli, ["cache", "ls"])
    assert result.exit_code == 0, result.output
    shown = {line[:16]: line.split("  ")[-1] for line in result.output.splitlines()}
    assert len(shown) == 4 and sum("1x1x300x300 block 128x128 block_sparse" == what for what in shown.values()) == 1
    assert (shown["a" * 16], shown["b" * 16], shown["c" * 16]) == ("bad entry, dropped on next use: not a regular file",
                                                                   "bad entry, dropped on next use: not a maskc plan: bad magic bytes",
                                                                   "bad entry, dropped on next use: not a regular file")
    assert "removed 3 plans" in runner.invoke(cli, ["cache", "clear"]).output  # the directory is left
    assert [p.name for p in cache_dir.iterdir()] == [f"{'a' * 64}.plan"]


@pytest.mark.parametrize("case", ["small", "long title", "reordered"])
def test_tile_map_ticks_title_and_order(case, reordered_plan):
    pytest.importorskip("matplotlib")
    import maskc
    from maskc import library
    from maskc.cli.tilemap import tile_map_figure

    plan = {"small": lambda: maskc.compile(library.causal(96), block=32),
            "long title": lambda: maskc.compile({"kind": "causal", "n": 40000}, block=32, variant="intervals"),
            "reordered": lambda: reordered_plan}[case]()
    fig = tile_map_figure(plan)
    renderer = fig.canvas.get_renderer()
    axes = fig.axes
    for ax in axes:
        for ticks, (lo, hi) in ((ax.get_xticks(), ax.get_xlim()), (ax.get_yticks(), sorted(ax.get_ylim()))):
            shown = [t for t in ticks if lo <= t <= hi]
            assert shown and all(float(t).is_integer() for t in shown), ticks  # whole tiles only
    title = fig._suptitle.get_window_extent(renderer)
    assert 0 <= title.x0 and title.x1 <= fig.bbox.width and title.y1 <= fig.bbox.height
    assert all(title.y0 > ax.get_tightbbox(renderer).y1 for ax in axes)  # above every panel, its title included
    reordered = "reordered" in axes[0].get_xlabel() and "reordered (RCM)" in fig._suptitle.get_text()
    assert reordered == (case == "reordered")
    if case == "long title":
        assert "\n" in fig._suptitle.get_text()


@pytest.mark.parametrize("workload, message", [([1, 2], "the plan's recorded workload is not a map"),
                                               ({"batch": [1], "heads": 16}, "workload batch must be a positive integer")])
def test_a_recorded_workload_that_is_not_one_is_a_user_error(runner, tmp_path, reordered_plan, workload, message):
    from dataclasses import replace

    from conftest import make_profile

    (tmp_path / "gpu.json").write_text(json.dumps(make_profile()))
    path = tmp_path / "odd.plan"
    path.write_bytes(replace(reordered_plan, predictions={"workload": workload, "candidates": {}}).to_bytes())
    assert_user_error(runner.invoke(cli, ["inspect", str(path), "--profile", str(tmp_path / "gpu.json")]), message)
    assert runner.invoke(cli, ["inspect", str(path), "--profile", str(tmp_path / "gpu.json"), "--workload", "batch=2"]).exit_code == 0
