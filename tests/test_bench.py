"""``maskc bench`` on CPU at a tiny size: the result structure, the errors, the CLI, the mask set."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from maskc.cli.bench_cmd import bench as bench_cli  # noqa: E402
from maskc.errors import MaskError  # noqa: E402
from maskc.measure import adapters, bench, masks, report, timing  # noqa: E402

TINY = dict(ns=[128], heads=2, head_dim=32, batch=1, dtype="fp32", device="cpu", backend="reference",
            flex=False, warmup_ms=1.0, rep_ms=3.0, rows_for_error=32)

ROW_KEYS = {"mask", "n", "method", "fwd_ms", "fwd_tflops", "fwd_bwd_ms", "fwd_bwd_tflops", "rel_err", "notes", "detail"}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "out.json"
    lines: list[str] = []
    cfg = bench.BenchConfig(masks=["causal", "documents"], **TINY)
    res = bench.run_bench(cfg, progress=lines.append, command="test", json_path=path)
    return res, json.loads(path.read_text()), lines


def test_rows_cover_every_mask_and_method(result):
    res, _, _ = result
    got = [(r["mask"], r["n"], r["method"]) for r in res["results"]]
    assert got == [("causal", 128, "dense-causal"), ("causal", 128, "maskc"), ("causal", 128, "sdpa-mask"),
                   ("documents", 128, "maskc"), ("documents", 128, "sdpa-mask")]
    for r in res["results"]:
        assert set(r) == ROW_KEYS
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0, r
        assert r["fwd_tflops"] > 0 and r["fwd_bwd_tflops"] > 0
        assert r["rel_err"] < 1e-5, r  # fp32 against the float64 reference
        assert "failed" not in r["notes"]


def test_flops_follow_visible_pairs(result):
    res, _, _ = result
    maskc_causal = next(r for r in res["results"] if r["mask"] == "causal" and r["method"] == "maskc")
    pairs = 128 * 129 // 2
    assert maskc_causal["detail"]["visible_pairs"] == pairs
    flops = 4 * pairs * 32 * 2
    assert maskc_causal["fwd_tflops"] == pytest.approx(flops / (maskc_causal["fwd_ms"] * 1e-3) / 1e12)
    assert maskc_causal["fwd_bwd_tflops"] == pytest.approx(timing.FWD_BWD_FLOP_FACTOR * flops / (maskc_causal["fwd_bwd_ms"] * 1e-3) / 1e12)


def test_json_has_environment_config_and_cases(result):
    res, on_disk, lines = result
    assert on_disk["schema"] == bench.SCHEMA
    assert on_disk["results"] == json.loads(json.dumps(res["results"]))
    env = on_disk["environment"]
    for key in ("date", "command", "torch", "triton", "cuda", "gpu", "python", "maskc"):
        assert key in env
    assert env["command"] == "test"
    assert on_disk["config"]["masks"] == ["causal", "documents"] and on_disk["config"]["ns"] == [128]
    docs = next(c for c in on_disk["cases"] if c["mask"] == "documents")
    assert sum(docs["params"]["lengths"]) == 128 and docs["visible_pairs"] > 0 and docs["compile_s"] >= 0
    assert len(lines) == len(res["results"]) + len(res["cases"])  # one line per row, one per compiled mask
    assert all(line.startswith("[") or line.startswith("  ") for line in lines)
    table = report.format_table(res)
    assert "dense-causal" in table and "documents" in table and "fwd+bwd TFLOP/s" in table


def test_a_failing_method_is_recorded_not_raised():
    cfg = bench.BenchConfig(**TINY)
    inputs = timing.Inputs(cfg, 128, torch.device("cpu"))
    row = timing.Row("causal", 128, "broken")

    def boom(q, k, v):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")

    def works(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    timing.measure(row, [("first", boom), ("second", works)], inputs, cfg, "cpu", 1e6)
    assert row.fwd_ms is not None and row.fwd_bwd_ms is not None
    assert any("first failed: OutOfMemoryError: CUDA out of memory" in n for n in row.notes)
    assert "backend: second" in row.notes


def test_mask_set_parameters_are_recorded():
    n = 8192
    for name in masks.DEFAULT_MASKS:
        case = masks.build_mask(name, n)
        assert case.source.shape == (1, 1, n, n) and case.params["n"] == n and case.description
    assert masks.build_mask("medusa", n).params["tree_nodes"] == 2048
    assert masks.build_mask("prefix_lm", n).params["prefix"] == n // 4
    assert masks.document_lengths(n) == masks.build_mask("documents", n).params["lengths"]
    lengths = masks.document_lengths(n)
    assert sum(lengths) == n and all(100 <= x <= 700 for x in lengths[:-1])
    with pytest.raises(MaskError, match="unknown benchmark mask"):
        masks.parse_masks("causal,nope")
    with pytest.raises(MaskError, match="unknown benchmark mask 'nope'"):
        masks.build_mask("nope", n)
    assert masks.parse_masks("sliding-window, token_tree") == ["sliding_window", "token_tree"]
    assert masks.parse_masks(None) == list(masks.DEFAULT_MASKS)


def test_the_mask_set_is_built_from_library_specs():
    """Every benchmark mask but the permuted band is the library mask of a spec, named as the library names it."""
    from maskc import library

    case = masks.build_mask("documents", 3000, seed=2)
    assert case.source.name == library.documents(case.params["lengths"], causal=True).name
    for name in masks.DEFAULT_MASKS + ("hash_buckets",):
        assert masks.build_mask(name, 640).source.name.split("(")[0] == name
    assert isinstance(masks.build_mask("permuted_band", 640).source, masks.PermutedBand)


@pytest.mark.parametrize("name", masks.DEFAULT_MASKS + masks.EXTRA_MASKS)
def test_flex_mask_mods_match_the_library_masks(name):
    """Every FlexAttention mask_mod, closed-form or dense lookup, gives exactly the library's mask."""
    from torch.nn.attention.flex_attention import create_mask

    n = 640
    case = masks.build_mask(name, n)
    dense = torch.from_numpy(case.source.to_dense()[0, 0])
    for tree in ("dense", "interval"):
        mod, kind = adapters.flex_mask_mod(case, "cpu", dense, tree)
        assert kind.startswith("closed-form") or kind == "dense lookup"
        assert torch.equal(create_mask(mod, 1, 1, n, n, device="cpu")[0, 0], dense), (name, kind)
    expected = "dense lookup" if name == "bigbird" or (name in ("medusa", "token_tree")) else "closed-form"
    assert adapters.flex_mask_mod(case, "cpu", dense)[1] == expected


def run_cli(out, *options):
    """``maskc bench`` on CPU at N = 128 (reference backend, short timings), JSON to ``out``."""
    args = ["--device", "cpu", "-n", "128", "--head-dim", "32", "--dtype", "fp32", "--backend", "reference",
            "--warmup", "1", "--rep", "3", "--rows-for-error", "16", "--json", str(out), *options]
    res = CliRunner().invoke(bench_cli, args)
    assert res.exit_code == 0, res.output
    return res, json.loads(out.read_text())


def test_gqa_run_on_cpu(tmp_path):
    """--kv-heads: k and v with fewer heads, every method checked against the float64 reference."""
    res, data = run_cli(tmp_path / "gqa.json", "--heads", "4", "--kv-heads", "2", "--masks", "documents")
    assert "heads 4 over 2 key/value heads" in res.stdout
    assert data["config"]["kv_heads"] == 2
    timed = {r["method"]: r for r in data["results"] if r["fwd_ms"] is not None}
    assert {"dense-causal", "maskc", "sdpa-mask"} <= set(timed)
    assert all(r["rel_err"] < 1e-5 and r["fwd_bwd_ms"] is not None for r in timed.values())
    res = CliRunner().invoke(bench_cli, ["--device", "cpu", "-n", "128", "--heads", "4", "--kv-heads", "3"])
    assert res.exit_code == 2 and "--kv-heads 3 must divide --heads 4" in res.output


def test_cli_runs_on_cpu_and_writes_json(tmp_path):
    res, data = run_cli(tmp_path / "bench.json", "--heads", "2", "--masks", "causal", "--no-sdpa", "--no-backward")
    assert "maskc" in res.stdout and "dense-causal" in res.stdout
    methods = [r["method"] for r in data["results"]]
    assert methods == ["dense-causal", "maskc", "flex"]
    flex = data["results"][2]
    assert flex["fwd_ms"] is None and "skipped" in flex["notes"] and "CUDA" in flex["notes"]
    assert data["results"][1]["fwd_bwd_ms"] is None and data["results"][1]["rel_err"] < 1e-5
    assert data["config"]["backward"] is False


def test_cli_rejects_bad_options():
    runner = CliRunner()
    res = runner.invoke(bench_cli, ["--device", "cpu", "-n", "128", "--masks", "causal,bogus"])
    assert res.exit_code == 2 and res.output.startswith("Error: unknown benchmark mask 'bogus'") and len(res.output.splitlines()) == 1
    res = runner.invoke(bench_cli, ["--device", "cpu", "-n", "128", "--block", "100x100"])
    assert res.exit_code == 2 and "block size" in res.output
    res = runner.invoke(bench_cli, ["--device", "cpu", "-n", "0"])
    assert res.exit_code == 2 and "Error: -n must be positive, got 0" in res.output


def test_cli_help_lists_the_mask_set():
    res = CliRunner().invoke(bench_cli, ["--help"])
    assert res.exit_code == 0
    assert f"[default: {', '.join(masks.DEFAULT_MASKS)}; also available: {', '.join(masks.EXTRA_MASKS)}]" in " ".join(res.output.split())


def test_cli_module_imports_neither_the_benchmark_nor_torch():
    import subprocess
    import sys

    code = "import sys, maskc.cli.bench_cmd; print('torch' in sys.modules, 'maskc.measure' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert out == "False False"


def test_predicted_next_to_measured_and_every_candidate_timed(tmp_path):
    from conftest import make_profile

    import maskc
    from maskc import cost

    profile = tmp_path / "p.json"
    profile.write_text(json.dumps(make_profile(head_dim=32, dtype="fp32")))
    cfg = bench.BenchConfig(masks=["causal"], **TINY, dense_causal=False, sdpa=False, profile=str(profile), candidates=True)
    res = bench.run_bench(cfg, command="test")
    assert res["environment"]["profile"] == "Test GPU"
    rows = {r["method"]: r for r in res["results"]}
    causal = rows["maskc"]
    assert causal["detail"]["candidate"] == "dense_causal" and causal["rel_err"] < 1e-5
    assert causal["detail"]["predicted"]["fwd_ms"] > 0 and "predicted fwd" in causal["notes"]
    assert set(rows) == {"maskc", "maskc:block_sparse/64x64", "maskc:block_sparse/128x128", "maskc:intervals/64x64", "maskc:intervals/128x128"}
    for method, r in rows.items():
        assert r["fwd_ms"] > 0 and r["rel_err"] < 1e-5 and r["detail"]["predicted"]["fwd_bwd_ms"] > 0, r
    table = report.format_table(res)
    assert "pred fwd" in table and "pred f+b" in table and "maskc:intervals/64x64" in table
    # the scattered band: the cost model reorders it
    case = masks.build_mask("permuted_band", 2048)
    plan = maskc.compile(case.source, profile=str(profile), workload=cost.Workload(heads=2, head_dim=32, dtype="fp32"))
    assert plan.reordered and cost.plan_candidate(plan).name.endswith("+rcm")
