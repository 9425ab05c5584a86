"""Golden plans of every released format version still load and decode to exactly their masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from maskc import library
from maskc.compiler import fingerprint, mask_sha256
from maskc.runtime.format import load

GOLDEN = Path(__file__).resolve().parent.parent / "plans" / "golden"
MANIFEST = json.loads((GOLDEN / "MANIFEST.json").read_text())


def test_there_are_golden_plans():
    assert len(MANIFEST) >= 5


def test_every_variant_has_golden_plans():
    assert {e.get("variant", "block_sparse") for e in MANIFEST if e["file"].startswith("v2-")} == {"block_sparse", "intervals"}
    v3 = [e for e in MANIFEST if e["file"].startswith("v3-")]
    assert {e["variant"] for e in v3} == {"block_sparse", "intervals", "dense", "dense_causal"}
    assert any(e.get("reordered") for e in v3) and any(e["file"].endswith("-auto.plan") for e in v3)
    v4 = [e for e in MANIFEST if e["file"].startswith("v4-")]
    assert {e["variant"] for e in v4} == {"block_sparse", "intervals", "dense", "dense_causal"}


def test_version_4_golden_plans_carry_their_pieces():
    for name, variant in (("v4-prefix_lm-pieces.plan", "block_sparse"), ("v4-shared_question-intervals-pieces.plan", "intervals")):
        plan = load(GOLDEN / name)
        assert plan.variant == variant and plan.arrays["pieces"].shape[0] >= 2
    assert load(GOLDEN / "v4-prefix_lm.plan").arrays["pieces"].shape == (0, 5)


def test_version_3_golden_plans_carry_their_new_fields():
    reordered = load(GOLDEN / "v3-hash_buckets-rcm.plan")
    assert reordered.reordered and sorted(reordered.arrays["perm"].tolist()) == list(range(reordered.q_len))
    assert reordered.options["reorder"]["method"] == "rcm"
    causal = load(GOLDEN / "v3-causal.plan")
    assert causal.arrays["row_order"].tolist() == [4, 3, 2, 1, 0] and not causal.reordered
    auto = load(GOLDEN / "v3-documents-auto.plan")
    assert auto.predictions["candidates"] == {} and auto.predictions["chosen"] is None and "no cost-model profile" in auto.predictions["note"]
    for name in ("v3-full-dense.plan", "v3-causal-dense_causal.plan"):
        dense = load(GOLDEN / name)
        assert dense.arrays["bitmaps"].shape[0] == 0 and dense.arrays["row_order"].size == 0


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_golden_plan_decodes_to_its_mask(entry):
    plan = load(GOLDEN / entry["file"])
    source = getattr(library, entry["kind"])(**entry["args"])
    assert [plan.block_m, plan.block_n] == entry["block"]
    assert plan.variant == entry.get("variant", "block_sparse") and plan.hash_of == entry.get("hash_of", "bits")
    expected = mask_sha256(source) if plan.hash_of == "bits" else fingerprint(source, "intervals")[0]
    assert plan.mask_sha256 == entry["mask_sha256"] == expected
    assert np.array_equal(plan.to_mask(), source.to_dense())
