"""Family plans: compiled once from a family spec, written as version 5, read back exactly, and
refused with a PlanError when crafted."""

from __future__ import annotations

import hashlib
import json
import struct

import msgpack
import pytest
from click.testing import CliRunner

import maskc
from maskc.cli.main import cli
from maskc.errors import MaskError
from maskc.runtime import format as fmt

SPECS = [
    {"family": "documents", "max_len": 4096, "typical_length": 300},
    {"family": "documents", "max_len": 2048, "causal": False, "window": 256},
    {"family": "documents", "max_len": 2048, "prefix": True},
    {"family": "shared_prefix", "max_len": 4096, "typical_question": 400, "typical_answer": 200, "answers": 3},
    {"family": "token_tree", "max_len": 1024, "max_depth": 16},
    {"family": "hash_buckets", "max_len": 4096, "buckets": 8},
    {"family": "qk_dropping", "max_len": 4096, "keep": 0.25},
]


@pytest.mark.parametrize("spec", SPECS, ids=[s["family"] for s in SPECS])
def test_a_family_compiles_once_and_round_trips(spec):
    family = maskc.compile_family(spec, profile="NVIDIA H100 80GB HBM3")
    assert family.kind == spec["family"] and family.max_len == spec["max_len"]
    assert family.block_m in fmt.TILE_SIZES and set(family.traits) == set(fmt.TRAITS)
    assert family.predictions["chosen"] == f"intervals/{family.block_m}x{family.block_n}"
    data = family.to_bytes()
    assert struct.unpack_from("<I", data, 8)[0] == fmt.FAMILY_VERSION
    back = fmt.decode(data)
    assert isinstance(back, fmt.FamilyPlan) and back.to_bytes() == data
    assert maskc.compile_family(spec, profile="NVIDIA H100 80GB HBM3").to_bytes() == data  # deterministic


def test_without_a_profile_a_family_takes_the_fixed_rules():
    family = maskc.compile_family({"family": "documents", "max_len": 1024}, profile="none")
    assert (family.block_m, family.block_n) == (128, 128) and family.predictions["chosen"] is None


def test_plans_of_one_mask_are_still_written_as_version_4():
    data = maskc.compile(maskc.library.causal(64), block=32).to_bytes()
    assert struct.unpack_from("<I", data, 8)[0] == fmt.PLAN_VERSION == 4


@pytest.mark.parametrize("spec, message", [
    ({"family": "documents"}, "max_len must be an integer"),
    ({"family": "documents", "max_len": 0}, "max_len"),
    ({"family": "documentz", "max_len": 64}, "unknown family"),
    ({"family": "documents", "max_len": 64, "lengths": [3]}, "unknown field 'lengths'"),
    ({"family": "documents", "max_len": 64, "window": 0}, "window"),
    ({"family": "documents", "max_len": 64, "causal": 1}, "causal"),
    ({"family": "qk_dropping", "max_len": 64, "keep": 1.5}, "keep must be a positive fraction"),
    ({"family": "hash_buckets", "max_len": 64, "buckets": 0}, "buckets"),
])
def test_bad_family_specs_are_one_clear_error(spec, message):
    with pytest.raises(MaskError, match=message):
        maskc.compile_family(spec, profile="none")


def _seal(body) -> bytes:
    payload = msgpack.packb(body, use_bin_type=True)
    return struct.pack("<8sI32s", fmt.MAGIC, fmt.FAMILY_VERSION, hashlib.sha256(payload).digest()) + payload


def _family_body() -> dict:
    return msgpack.unpackb(maskc.compile_family({"family": "documents", "max_len": 512}, profile="none").to_bytes()[44:], raw=False)


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b["family"].update(kind="lists"), "family kind"),
    (lambda b: b["family"]["params"].pop("window"), "parameters"),
    (lambda b: b["family"]["params"].update(extra=1), "parameters"),
    (lambda b: b["family"]["params"].update(causal="yes"), "causal"),
    (lambda b: b["family"]["params"].update(window=-3), "out of range"),
    (lambda b: b["family"].update(max_len=2**40), "max_len"),
    (lambda b: b["family"].update(block_m=48), "block_m"),
    (lambda b: b["family"]["traits"].update(rows_shared=1), "traits"),
    (lambda b: b.update(arrays={}), "unknown fields"),
    (lambda b: b.update(options={b"k": 1}), "not a string"),
    (lambda b: b["family"].pop("traits"), "missing"),
])
def test_crafted_family_plans_are_refused(mutate, message):
    body = _family_body()
    mutate(body)
    with pytest.raises(fmt.PlanError, match=message):
        fmt.decode(_seal(body))


def test_family_specs_through_the_cli(tmp_path):
    spec, out = tmp_path / "fam.json", tmp_path / "fam.plan"
    spec.write_text(json.dumps({"family": "documents", "max_len": 2048, "typical_length": 200}))
    runner = CliRunner()
    result = runner.invoke(cli, ["compile", str(spec), "-o", str(out), "--profile", "NVIDIA H100 80GB HBM3"])
    assert result.exit_code == 0, result.output
    assert "FamilyPlan(documents" in result.output and isinstance(fmt.load(out), fmt.FamilyPlan)
    shown = runner.invoke(cli, ["inspect", str(out)])
    assert shown.exit_code == 0 and "family      documents" in shown.output and "* intervals/" in shown.output
    info = json.loads(runner.invoke(cli, ["inspect", str(out), "--json"]).output)
    assert info["family"] == "documents" and info["max_len"] == 2048
    refused = runner.invoke(cli, ["inspect", str(out), "--png", str(tmp_path / "x.png")])
    assert refused.exit_code == 2 and refused.output.count("\n") == 1 and "family plan" in refused.output
    spec.write_text(json.dumps({"family": "documents", "max_len": "big"}))
    bad = runner.invoke(cli, ["compile", str(spec), "-o", str(out)])
    assert bad.exit_code == 2 and bad.output.startswith("Error: family spec: max_len")
