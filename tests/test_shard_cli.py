"""``maskc shard``: the per-rank report, the written shards, one-line errors, no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import make_profile

import maskc
from maskc.cli.main import cli
from maskc.runtime.format import load
from maskc.runtime.format.shards import load_manifest, plan_path

SPEC = {"kind": "documents", "lengths": [3000, 1000, 5000, 2000, 1192], "causal": True}


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "docs.json"
    path.write_text(json.dumps(SPEC))
    return path


@pytest.fixture
def profile_file(tmp_path):
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps(make_profile()))
    return path


def run(*args):
    return CliRunner().invoke(cli, ["shard", *map(str, args)])


def test_the_report_lists_every_rank_and_the_baselines(spec_file, profile_file):
    result = run(spec_file, "-P", 4, "--profile", profile_file)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"sharded {spec_file} over 4 ranks in 128-token tiles: ") and "profile Test GPU" in lines[0]
    assert [line.split()[0] for line in lines[2:6]] == ["0", "1", "2", "3"]
    assert sum(("* " in line) for line in lines) == 1
    for name in ("contiguous", "lpt", "head_tail", "ptrr"):
        assert any(name in line.split() for line in lines[6:]), name


def test_json_report_and_the_written_shards(spec_file, profile_file, tmp_path):
    out = tmp_path / "shards"
    result = run(spec_file, "-P", 3, "--profile", profile_file, "--block", 64, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ranks"] == 3 and report["tile"] == 64 and report["output"] == str(out) and report["unit"] == "ms"
    assert set(report["compared"]) == {"contiguous", "lpt", "head_tail", "ptrr"}
    shard_map = load_manifest(out)
    assert shard_map.report == {k: v for k, v in report.items() if k != "output"}
    for r, entry in enumerate(report["per_rank"]):
        plan = load(plan_path(out, r))
        assert (plan.q_len, plan.kv_len, plan.block_m) == (entry["tokens"], entry["key_tokens"], 64)


def test_a_plan_file_shards_like_its_mask(spec_file, tmp_path):
    plan_file = tmp_path / "docs.plan"
    maskc.compile(SPEC, block=128, variant="intervals").save(plan_file)
    from_plan, from_mask = (json.loads(run(p, "-P", 2, "--json").output) for p in (plan_file, spec_file))
    assert from_plan == from_mask


@pytest.mark.parametrize("args, fragment", [
    (["-P", 0], "Invalid value for '-P' / '--ranks'"),
    (["-P", 200], "fewer than 200 ranks"),
    (["-P", 2, "--workload", "heads=x"], "workload heads must be an integer"),
    (["-P", 2, "--profile", "nowhere.json"], "profile file not found"),
])
def test_user_errors_are_one_line(spec_file, args, fragment):
    result = run(spec_file, *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and fragment in lines[0], result.output


def test_a_corrupted_plan_is_one_line(tmp_path):
    bad = tmp_path / "bad.plan"
    bad.write_bytes(b"MASKCPLN" + bytes(40))
    result = run(bad, "-P", 2)
    assert result.exit_code == 2 and result.output.startswith("Error:") and "Traceback" not in result.output


def test_maskc_shard_does_not_import_torch(spec_file):
    code = ("import sys\nfrom click.testing import CliRunner\nfrom maskc.cli.main import cli\n"
            f"r = CliRunner().invoke(cli, ['shard', {str(spec_file)!r}, '-P', '2', '--profile', 'none'])\n"
            "assert r.exit_code == 0, r.output\nprint('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip() == "False"
