"""``maskc calibrate``: the synthetic plans are what they claim, and the CPU pipeline writes a valid profile."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_profile

import maskc
from maskc import cost, library
from maskc.cli.main import cli
from maskc.errors import MaskError
from maskc.measure.experiments import Experiment, experiments, synthetic_plan


@pytest.mark.parametrize("kernel", ["block_sparse", "intervals"])
@pytest.mark.parametrize("block", [64, 128])
def test_synthetic_plans_have_the_tiles_they_claim(kernel, block):
    extra = [Experiment(2, (3, 0, 1), (1, 2, 0)), Experiment(1, (0, 2), (3, 1), "cols"), Experiment.of_bench(1, "token_tree", 200)]
    for e in experiments(quick=True, cpu=True) + extra:
        if e.layout == "bench" and kernel == "intervals":
            with pytest.raises(MaskError, match="does not fit the interval form"):  # calibration skips it
                synthetic_plan(e, kernel, block, block)
            continue
        plan = synthetic_plan(e, kernel, block, block)
        expected = maskc.compile(plan.to_mask(), block=block, variant=kernel, schedule="none")
        for name in ("row_ptr", "row_full", "row_col", "row_tile", "col_ptr", "col_full", "col_row", "col_tile", "bitmaps"):
            assert np.array_equal(plan.arrays[name], expected.arrays[name]), (e, name)
        work = cost.work_of(plan)
        lists = (e.full, e.partial)
        if e.layout in ("mask", "bench"):
            assert work.rows.full + work.rows.partial == work.cols.full + work.cols.partial > 0
        elif e.layout == "rows":
            assert (work.rows.full, work.rows.partial) == (sum(lists[0]), sum(lists[1]))
            assert sorted(zip(*lists)) == sorted(zip(plan.arrays["row_full"].tolist(), (np.diff(plan.arrays["row_ptr"]) - plan.arrays["row_full"]).tolist()))
        else:
            assert work.cols.lists == sum(1 for f, p in zip(*lists) for n in (f, p) if n)
            assert work.rows.full == sum(lists[0]) and work.rows.partial == sum(lists[1])


def test_calibrate_on_cpu_writes_a_valid_profile(tmp_path, monkeypatch):
    out = tmp_path / "cpu.json"
    result = CliRunner().invoke(cli, ["calibrate", "--device", "cpu", "--quick", "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "(cpu)" in result.output
    data = json.loads(out.read_text())
    assert data["schema"] == cost.SCHEMA and data["device"]["kind"] == "cpu" and data["environment"]["backend"] == "reference"
    for key in ("date", "torch", "triton", "maskc", "command"):
        assert key in data["environment"]
    profile = cost.load_profile(out)
    assert profile.device_kind == "cpu"
    assert {(k[0], k[1], k[2]) for k in profile.kernels} == {(kernel, p, b) for kernel in cost.KERNELS for p in cost.PASSES for b in (64, 128)}
    assert all(e["fit"]["samples"] >= 5 and e["fit"]["rms_rel_error"] >= 0 for e in data["kernels"])
    assert set(profile.sdpa) == {(m, p, 32, "fp32") for m in ("causal", "full") for p in cost.PASSES} 
    assert set(profile.reorder) == {(b, b, 32, "fp32") for b in (64, 128)}
    assert all(len(e["samples"]) == 3 and e["fwd_factor"] > 0 and e["bwd_factor"] > 0 for e in data["reorder"])
    # the pipeline end to end: the compiler predicts from it, for the workload it measured
    monkeypatch.setenv(cost.ENV_PROFILE, str(out))
    plan = maskc.compile(library.documents([100, 150, 70]), workload=cost.Workload(heads=2, head_dim=32, dtype="fp32"))
    assert plan.predictions["profile"] == data["device"]["name"] and plan.predictions["chosen"] is not None
    assert all(isinstance(c["fwd_ms"], float) for name, c in plan.predictions["candidates"].items() if not name.endswith("+pieces"))  # fp32: no pieces
    # the measurements are kept: refitting them gives the same constants, without a device
    refitted = tmp_path / "refit.json"
    result = CliRunner().invoke(cli, ["calibrate", "--refit", str(out), "-o", str(refitted), "-q"])
    assert result.exit_code == 0, result.output
    again = json.loads(refitted.read_text())
    for before, after in zip(data["kernels"], again["kernels"], strict=True):
        assert len(before["samples"]) == before["fit"]["samples"] and after["samples"] == before["samples"]
        assert after["concurrency"] == pytest.approx(before["concurrency"])
        for got, want in zip(after["lists"], before["lists"], strict=True):  # one flat list of numbers per launch
            assert got.keys() == want.keys() and [got[k] for k in want] == pytest.approx([want[k] for k in want])
    assert [e["launch_ms"] for e in again["sdpa"]] == pytest.approx([e["launch_ms"] for e in data["sdpa"]]) and len(again["refits"]) == 1


def test_profiles_measured_in_parts_merge(tmp_path):
    out = tmp_path / "cpu.json"
    first = CliRunner().invoke(cli, ["calibrate", "--device", "cpu", "--quick", "-o", str(out), "-q", "--blocks", "64", "--kernels", "block_sparse"])
    assert first.exit_code == 0, first.output
    second = CliRunner().invoke(cli, ["calibrate", "--device", "cpu", "--quick", "-o", str(out), "-q", "--blocks", "128", "--kernels", "block_sparse", "--merge"])
    assert second.exit_code == 0, second.output
    data = json.loads(out.read_text())
    assert sorted((e["block"][0], e["pass"]) for e in data["kernels"]) == [(64, "bwd"), (64, "fwd"), (128, "bwd"), (128, "fwd")]
    assert len(data["sdpa"]) == 4 and len(data["reorder"]) == 2 and len(data["merged"]) == 1
    before = {(e["block"][0], e["pass"]): e for e in data["kernels"]}
    forward = CliRunner().invoke(cli, ["calibrate", "--device", "cpu", "--quick", "-o", str(out), "-q", "--only", "kernels", "--passes", "fwd",
                                       "--kernels", "block_sparse", "--merge"])
    assert forward.exit_code == 0, forward.output
    after = {(e["block"][0], e["pass"]): e for e in json.loads(out.read_text())["kernels"]}
    assert after.keys() == before.keys() and json.loads(out.read_text())["settings"]["passes"] == ["fwd"]
    assert all(after[key] == before[key] for key in before if key[1] == "bwd")  # kept as measured
    assert all(after[key]["samples"] != before[key]["samples"] for key in before if key[1] == "fwd")  # measured again
    other = json.loads(out.read_text())
    other["device"]["name"] = "Another GPU"
    out.write_text(json.dumps(other))
    third = CliRunner().invoke(cli, ["calibrate", "--device", "cpu", "--quick", "-o", str(out), "-q", "--blocks", "64", "--kernels", "block_sparse", "--merge"])
    assert third.exit_code == 2 and "cannot merge a profile of 'Another GPU'" in third.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--device", "cpu", "-o", "x.json"], "--device cpu --quick"),
        (["--device", "cpu", "--quick"], "--output is required on a CPU"),
        (["--device", "cpu", "--quick", "-o", "nodir/x.json"], "output directory does not exist"),
        (["--device", "cpu", "--quick", "-o", "x.json", "--blocks", "32"], "choose from 64, 128"),
        (["--device", "cpu", "--quick", "-o", "x.json", "--dtypes", "int8"], "choose from bf16, fp16, fp32"),
        (["--refit", "missing.json"], "--refit: cannot read missing.json"),
        (["--refit", "bad.json"], "--refit: bad.json is not a profile with its measurements"),
        (["--refit", "nosamples.json"], "kernels[0] records no measurements to fit"),
        (["--refit", "badreorder.json"], "reorder[0]: every measurement must hold 'fwd': [plain_ms, reordered_ms], plain > 0"),
        (["--device", "cpu", "--quick", "-o", "x.json", "--only", "gather"], "choose from kernels, reorder, sdpa"),
        (["--device", "cpu", "--quick", "-o", "x.json", "--passes", "both"], "choose from fwd, bwd"),
    ],
)
def test_calibrate_usage_errors(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.json").write_text('{"schema": "maskc-profile/3"}')
    (tmp_path / "nosamples.json").write_text(json.dumps(make_profile()))
    bad_reorder = {**make_profile(), "kernels": [], "sdpa": []}
    bad_reorder["reorder"] = [{**bad_reorder["reorder"][0], "samples": [{"fwd": [0.0, 1.0], "bwd": [1.0, 1.0]}]}]
    (tmp_path / "badreorder.json").write_text(json.dumps(bad_reorder))
    result = CliRunner().invoke(cli, ["calibrate", *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
