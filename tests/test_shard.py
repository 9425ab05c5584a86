"""Context parallelism, compiler side: rank views of a mask, partitions, the predicted balance
against head-tail and PTRR, shard maps and their checks."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import make_profile
from hypothesis import given, settings
from hypothesis import strategies as st

import maskc
from maskc import cost, library, partition
from maskc.errors import MaskError
from maskc.runtime.format import decode
from maskc.runtime.format.shards import MANIFEST, MAX_MANIFEST_BYTES, ShardError, ShardMap, expand, load_manifest, plan_path, runs_of
from maskc.shard import shard
from maskc.shardwork import ITEMSIZE, TileRows
from maskc.submask import PlanMask, SubMask


@pytest.fixture(scope="module")
def profile():
    return cost.parse_profile(make_profile())


def random_mask(n: int, seed: int, density: float = 0.15) -> np.ndarray:
    return np.random.default_rng(seed).random((n, n)) < density


def documents_of(n: int, seed: int, shortest: int = 512, longest: int = 16384) -> list[int]:
    """Packed document lengths summing to ``n``."""
    rng, lengths = np.random.default_rng(seed), []
    while sum(lengths) < n:
        lengths.append(int(min(rng.integers(shortest, longest), n - sum(lengths))))
    return lengths


# --- rank views --------------------------------------------------------------------------------


def pick(n: int, rng, fraction: float) -> np.ndarray:
    """Ascending indices: a few runs and scattered ones, never empty."""
    chosen = np.flatnonzero(rng.random(n) < fraction)
    return chosen if chosen.size else np.array([n // 2])


@pytest.mark.parametrize("source", [
    library.documents([70, 13, 90, 27]),
    library.prefix_lm(200, 61),
    library.sliding_window(200, 17, causal=False),
    library.stack([library.causal(200), library.sliding_window(200, 9)]),
])
def test_a_view_of_a_structured_mask_is_its_rows_and_columns_from_intervals(source, rng):
    dense = source.to_dense()
    rows, cols = pick(200, rng, 0.4), pick(200, rng, 0.6)
    view = SubMask(source, rows, cols)
    assert view.intervals() is not None and view.shape == (*source.shape[:2], rows.size, cols.size)
    assert np.array_equal(view.to_dense(block_rows=7), dense[:, :, rows][:, :, :, cols])


def test_a_view_of_a_dense_mask_reads_its_rows_a_run_at_a_time(rng):
    mask = random_mask(150, seed=3)
    rows = np.concatenate([np.arange(10, 40), [55, 56, 90], np.arange(120, 150)])
    cols = pick(150, rng, 0.5)
    view = SubMask(maskc.open_mask(mask), rows, cols)
    assert view.intervals() is None
    assert np.array_equal(view.to_dense(block_rows=13)[0, 0], mask[rows][:, cols])


def test_a_view_of_a_plan_is_the_plan_s_mask(rng):
    mask = library.documents([50, 80, 70])
    for plan in (maskc.compile(mask, block=32, variant="intervals"), maskc.compile(mask, block=32, variant="block_sparse")):
        rows, cols = pick(200, rng, 0.5), pick(200, rng, 0.5)
        assert np.array_equal(SubMask(PlanMask(plan), rows, cols).to_dense()[0, 0], mask.to_dense()[0, 0][rows][:, cols])


@pytest.mark.parametrize("rows, what", [([], "rows"), ([3, 2], "rows"), ([0, 200], "rows")])
def test_a_view_refuses_rows_out_of_order_or_range(rows, what):
    with pytest.raises(MaskError, match=f"sub-mask's {what} must be ascending"):
        SubMask(library.causal(200), np.array(rows, dtype=np.int64), np.arange(5))


# --- partitions ---------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=9), st.integers(1, 4))
def test_contiguous_runs_are_the_best_consecutive_split(weights, ranks):
    ranks = min(ranks, len(weights))
    w = np.array(weights, dtype=np.float64)
    owner = partition.contiguous(w, ranks)
    assert np.all(np.diff(owner) >= 0) and np.array_equal(np.unique(owner), np.arange(ranks))
    best = min(max(w[a:b].sum() for a, b in zip((0, *cuts), (*cuts, w.size)))
               for cuts in itertools.combinations(range(1, w.size), ranks - 1))
    assert np.bincount(owner, w, minlength=ranks).max() <= best * (1 + 1e-9)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=4, max_size=30), st.integers(1, 4))
def test_lpt_gives_every_rank_a_tile_and_stays_within_one_tile_of_the_mean(weights, ranks):
    w = np.array(weights, dtype=np.float64)
    loads = np.bincount(partition.lpt(w, ranks), w, minlength=ranks)
    assert np.all(np.bincount(partition.lpt(w, ranks), minlength=ranks) > 0)
    assert loads.max() <= w.sum() / ranks + w.max() + 1e-9


def test_head_tail_gives_rank_i_chunks_i_and_2p_1_i():
    assert partition.head_tail(8, 2).tolist() == [0, 0, 1, 1, 1, 1, 0, 0]
    assert partition.head_tail(10, 2).tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 0, 0]


def test_ptrr_deals_the_heaviest_first_in_alternating_rounds():
    # the processing times and groups of PyTorch's documented PTRR example
    times = np.array([9, 14, 2, 20, 10, 15, 8, 14, 16, 19, 15, 3, 12, 1, 12, 10])
    owner = partition.ptrr(times, 4)
    assert [sorted(np.flatnonzero(owner == r).tolist()) for r in range(4)] == [[3, 12, 13, 14], [2, 4, 7, 9], [1, 8, 11, 15], [0, 5, 6, 10]]


# --- what each rank does ------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["intervals", "block_sparse"])
def test_tile_rows_count_every_visible_pair(variant):
    plan = maskc.compile(library.union(library.prefix_lm(333, 90), library.documents([111, 222])), block=32, variant=variant)
    rows = TileRows.of(plan)
    assert int(rows.pairs.sum()) == plan.visible_pairs
    assert int(rows.visited.sum()) == plan.arrays["row_col"].size


@pytest.mark.parametrize("mask", [library.documents([300, 77, 500, 147]), library.prefix_lm(1024, 300), random_mask(700, seed=5)])
def test_every_rank_s_plan_has_the_lists_and_pairs_its_assessment_predicted(mask, profile):
    workload = cost.Workload(heads=4, kv_heads=2, head_dim=128, dtype="bf16")
    sharding = shard(mask, 3, block=64, profile=profile, workload=workload, strategy="lpt")
    report = sharding.map.report
    assert report["unit"] == "ms"
    candidate = cost.Candidate(sharding.plans[0].variant, (64, 64))
    for r, plan in enumerate(sharding.plans):
        entry = report["per_rank"][r]
        assert (plan.q_len, plan.kv_len, plan.visible_pairs) == (entry["tokens"], entry["key_tokens"], entry["pairs"])
        predicted = cost.predict(profile, candidate, cost.work_of(plan), workload)
        assert (entry["fwd_ms"], entry["bwd_ms"]) == pytest.approx((predicted.fwd_ms, predicted.bwd_ms), rel=1e-5)
        assert entry["work"] == pytest.approx(predicted.fwd_bwd_ms, rel=1e-5)
        owned, needed = sharding.map.owned_tokens(r), sharding.map.needed_tokens(r)
        assert entry["recv_bytes"] == np.setdiff1d(needed, owned).size * 2 * 2 * 128 * ITEMSIZE["bf16"]  # k and v, 2 kv heads
    assert sum(e["recv_bytes"] for e in report["per_rank"]) == sum(e["send_bytes"] for e in report["per_rank"])


def test_a_rank_needs_exactly_the_key_tiles_its_rows_visit():
    mask = library.documents([256, 256, 512])  # three documents in 128-tiles: 2, 2 and 4 tiles
    sharding = shard(mask, 4, block=128, profile="none", strategy="contiguous", plans=False)
    owner = sharding.map.owner()
    for r in range(4):
        docs = {0 if t < 2 else 1 if t < 4 else 2 for t in np.flatnonzero(owner == r)}
        expected = sorted(t for t in range(8) if (0 if t < 2 else 1 if t < 4 else 2) in docs and t <= max(np.flatnonzero(owner == r)))
        assert sharding.map.needed_tiles(r).tolist() == expected


def test_without_a_profile_shares_are_weighed_by_tiles_and_the_report_says_so():
    report = shard(library.causal(1024), 4, block=64, profile="none", plans=False).map.report
    assert report["unit"] == "tiles" and report["profile"] is None and "no cost-model profile" in report["note"]
    assert sum(e["work"] for e in report["per_rank"]) == 16 * 17 / 2
    assert "fwd_ms" not in report["per_rank"][0]


def test_a_profile_without_constants_for_the_call_falls_back_to_tiles(profile):
    report = shard(library.causal(1024), 2, block=64, profile=profile, workload=cost.Workload(dtype="fp32"), plans=False).map.report
    assert report["unit"] == "tiles" and "fp32" in report["note"]


# --- the balance bar ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_plans():
    """Whole plans of the three long-context masks at 128-tiles, compiled once for every P."""
    out = {}
    for n in (131072, 262144):
        out[("documents", n)] = library.documents(documents_of(n, seed=n), causal=True)
        out[("prefix_lm", n)] = library.prefix_lm(n, n // 3)
        out[("window", n)] = library.sliding_window(n, 4096)
    return {key: maskc.compile(source, block=128, variant="intervals", schedule="none") for key, source in out.items()}


@pytest.mark.parametrize("n", [131072, 262144])
@pytest.mark.parametrize("kind", ["documents", "prefix_lm", "window"])
def test_predicted_work_is_balanced_within_5_percent_and_no_worse_than_head_tail_or_ptrr(long_plans, profile, kind, n):
    for ranks in (2, 4, 8):
        report = shard(long_plans[(kind, n)], ranks, profile=profile, plans=False).map.report
        ours, compared = report["summary"], report["compared"]
        assert ours == compared[report["strategy"]]
        assert ours["max_over_mean"] <= 1.05, (ranks, ours)
        for baseline in ("head_tail", "ptrr"):
            theirs = compared[baseline]
            assert ours["max_work"] <= theirs["max_work"] * (1 + 1e-9), (ranks, baseline, ours, theirs)
            if kind == "prefix_lm":
                continue  # every rank needs every key: PTRR's own balance is within rounding of the best
            assert ours["max_work"] < theirs["max_work"] or ours["max_recv_bytes"] < theirs["max_recv_bytes"], (ranks, baseline)
        if kind != "prefix_lm":  # rows see nearby keys only: a contiguous share moves far less than a scattered one
            assert ours["max_recv_bytes"] < compared["ptrr"]["max_recv_bytes"] / 4
        assert ours["max_work"] < compared["head_tail"]["max_work"]


def test_the_sharding_pass_takes_a_plan_or_its_mask_alike(profile):
    mask = library.documents([3000, 1000, 5000, 2000, 1192])
    from_mask = shard(mask, 4, profile=profile, plans=False).map
    from_plan = shard(maskc.compile(mask, block=128, variant="intervals"), 4, profile=profile, plans=False).map
    assert from_mask.as_dict() == from_plan.as_dict()


# --- shard maps ---------------------------------------------------------------------------------


def test_runs_round_trip():
    for indices in ([], [4], [0, 1, 2, 5, 7, 8]):
        runs = runs_of(np.array(indices))
        assert expand(runs).tolist() == indices


def test_a_sharded_mask_saves_and_loads(tmp_path, profile):
    mask = library.prefix_lm(1000, 300)
    sharding = shard(mask, 3, block=64, profile=profile)
    sharding.save(tmp_path / "out")
    back = load_manifest(tmp_path / "out")
    assert back.as_dict() == json.loads(json.dumps(sharding.map.as_dict()))
    for r in range(3):
        plan = decode(plan_path(tmp_path / "out", r).read_bytes())
        assert plan.mask_sha256 == sharding.plans[r].mask_sha256
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MANIFEST, "rank0.plan", "rank1.plan", "rank2.plan"]


def good_manifest() -> dict:
    return ShardMap.from_tiles(1000, 128, np.array([0, 0, 0, 1, 1, 1, 2, 2]), [np.arange(3), np.arange(6), np.arange(8)]).as_dict()


@pytest.mark.parametrize("change, fragment", [
    (lambda d: d.update(format="other"), "not a maskc-shards manifest"),
    (lambda d: d.update(version=2), "version 2"),
    (lambda d: d.update(q_len=0), "q_len"),
    (lambda d: d.update(tile=100), "tile must be one of"),
    (lambda d: d.update(tile=True), "tile must be one of"),
    (lambda d: d["owned"].pop(), "one entry per rank"),
    (lambda d: d["owned"][1].append([2, 3]), "ascending, separate runs"),
    (lambda d: d["owned"][1].__setitem__(0, [3, 5]), "cover the 8 tiles exactly once"),
    (lambda d: d["owned"][2].__setitem__(0, [6, 9]), "in [0, 8)"),
    (lambda d: d["needed"][0].clear(), "needed[0] is empty"),
    (lambda d: d["needed"][0].__setitem__(0, [0, "3"]), "list of [start, stop] tile runs"),
    (lambda d: d["needed"][0].__setitem__(0, [2, 1]), "ascending, separate runs"),
    (lambda d: d.update(report=[1]), "report must be a map"),
    (lambda d: d.update(report={"a": {1: 2}}), "report"),
    (lambda d: d.update(owned=[[[0, 8]]] * 9, needed=[[[0, 1]]] * 9), "9 ranks but only 8 tiles"),
])
def test_a_malformed_manifest_is_refused_with_its_fault_named(change, fragment):
    d = good_manifest()
    change(d)
    with pytest.raises(ShardError, match=re.escape(fragment)):
        ShardMap.from_dict(d)


def test_a_manifest_file_is_checked_before_it_is_parsed(tmp_path):
    with pytest.raises(ShardError, match="not found"):
        load_manifest(tmp_path)
    (tmp_path / MANIFEST).write_bytes(b"{not json")
    with pytest.raises(ShardError, match="not a JSON shard manifest"):
        load_manifest(tmp_path)
    with open(tmp_path / MANIFEST, "wb") as f:
        f.truncate(MAX_MANIFEST_BYTES + 1)
    with pytest.raises(ShardError, match="larger than a shard manifest may be"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("call, fragment", [
    (lambda: shard(library.causal(512), 0), "ranks must be a positive integer"),
    (lambda: shard(library.causal(512), 2, block=96), "shard tile size 96"),
    (lambda: shard(library.causal(512), 2, strategy="zigzag"), "strategy 'zigzag'"),
    (lambda: shard(library.causal(512), 2, objective="bwd"), "objective 'bwd'"),
    (lambda: shard(library.full(512, kv_len=256), 2), "q_len == kv_len"),
    (lambda: shard(library.causal(500), 5, block=128), "4 tiles of 128, fewer than 5 ranks"),
])
def test_the_sharding_pass_refuses_bad_options(call, fragment):
    with pytest.raises(MaskError, match=re.escape(fragment)):
        call()


def test_sharding_does_not_import_torch():
    code = ("import sys, maskc.shard\nmaskc.shard.shard({'kind': 'documents', 'lengths': [300, 500]}, 2, block=64).map\n"
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip() == "False"
