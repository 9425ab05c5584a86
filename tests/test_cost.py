"""The cost model: predictions follow the model, profiles load or refuse clearly, and the compiler
picks, records and falls back as documented."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_profile

import maskc
from maskc import cost, library
from maskc.cache import PlanCache
from maskc.errors import MaskError
from maskc.runtime.format import decode


def test_pareto_front_is_the_set_of_undominated_lists(rng):
    full, partial = rng.integers(0, 6, 200), rng.integers(0, 6, 200)
    front = cost.pareto_front(full, partial)
    points = set(zip(full.tolist(), partial.tolist()))
    expected = {p for p in points if not any(q != p and q[0] >= p[0] and q[1] >= p[1] for q in points)}
    assert set(front) == expected and list(front) == sorted(front, reverse=True)
    for w_full, w_partial in ((1.0, 1.0), (1.0, 5.0), (3.0, 0.1)):
        assert max(w_full * f + w_partial * p for f, p in front) == max(w_full * f + w_partial * p for f, p in points)


def test_predictions_follow_the_model():
    profile = cost.parse_profile(make_profile())
    workload = cost.Workload()
    plan = maskc.compile(library.documents([300, 200, 524]), block=64, variant="block_sparse")
    work = cost.work_of(plan)
    kernel = profile.kernel("block_sparse", "fwd", (64, 64), workload)
    (k,) = kernel.lists
    mult = 16
    total = mult * (k.program_ms * work.rows.lists + k.full_tile_ms * work.rows.full + k.partial_tile_ms * work.rows.partial)
    heaviest = max(k.program_ms + k.full_tile_ms * f + k.partial_tile_ms * p for f, p in work.rows.front)
    plain = cost.predict(profile, cost.Candidate("block_sparse", (64, 64)), work, workload)
    assert plain.fwd_ms == pytest.approx(kernel.launch_ms + max(total, kernel.concurrency * heaviest))
    reordered = cost.predict(profile, cost.Candidate("block_sparse", (64, 64), True), work, workload)
    factors = profile.reorder_cost((64, 64), workload)
    assert reordered.fwd_ms == pytest.approx(plain.fwd_ms * 1.1) and reordered.bwd_ms == pytest.approx(plain.bwd_ms * 1.21)
    assert (factors.fwd_factor, factors.bwd_factor) == pytest.approx((1.1, 1.21))
    dense = cost.predict(profile, cost.Candidate("dense_causal", (128, 128)), cost.Work(1024, 1024, 1, 1, 1024 * 1025 // 2), workload)
    assert dense.fwd_ms == pytest.approx(0.01 + 1e-9 * 16 * 1024 * 1025 / 2)
    bigger = cost.predict(profile, cost.Candidate("block_sparse", (64, 64)), work, cost.Workload(batch=4))
    assert bigger.fwd_ms > plain.fwd_ms
    with pytest.raises(cost.ProfileError, match="no block_sparse fwd constants .* head dim 64, bf16"):
        cost.predict(profile, cost.Candidate("block_sparse", (64, 64)), work, cost.Workload(head_dim=64))
    no_factors = cost.parse_profile({**make_profile(), "reorder": []})
    with pytest.raises(cost.ProfileError, match="no reordering factors for 64x64 tiles, head dim 128, bf16"):
        cost.predict(no_factors, cost.Candidate("block_sparse", (64, 64), True), work, workload)


def test_profiles_load_by_path_and_refuse_clearly(tmp_path, monkeypatch):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(make_profile()))
    profile = cost.load_profile(path)
    assert profile.name == "Test GPU" and len(profile.kernels) == 8 and len(profile.sdpa) == 4
    with pytest.raises(cost.ProfileError, match="no profile for 'Some GPU' .* run 'maskc calibrate' on that GPU"):
        cost.load_profile("Some GPU")
    with pytest.raises(cost.ProfileError, match="profile file not found"):
        cost.load_profile(tmp_path / "missing.json")
    bad = make_profile()
    bad["kernels"][0]["lists"] = [{**bad["kernels"][0]["lists"][0], "full_tile_ms": -1}]
    path.write_text(json.dumps(bad))
    with pytest.raises(cost.ProfileError, match=r"kernels\[0\] lists\[0\]: full_tile_ms must be a finite number >= 0"):
        cost.load_profile(path)
    bad = make_profile()
    bad["reorder"][0]["bwd_factor"] = 0
    path.write_text(json.dumps(bad))
    with pytest.raises(cost.ProfileError, match=r"reorder\[0\]: field 'bwd_factor' must be positive"):
        cost.load_profile(path)
    path.write_text("{")
    with pytest.raises(cost.ProfileError, match="not a JSON profile"):
        cost.load_profile(path)
    path.write_text(json.dumps({"schema": "other"}))
    with pytest.raises(cost.ProfileError, match="is not a maskc-profile/3 profile"):
        cost.load_profile(path)
    assert cost.default_profile() is None  # MASKC_PROFILE=none
    path.write_text(json.dumps(make_profile()))
    monkeypatch.setenv(cost.ENV_PROFILE, str(path))
    assert cost.default_profile().name == "Test GPU"
    assert cost.profile_filename("NVIDIA H100 80GB HBM3") == "NVIDIA_H100_80GB_HBM3.json"


def test_workload_parsing():
    assert cost.Workload.parse("batch=2, heads=32,kv_heads=8,head_dim=64,dtype=fp16") == cost.Workload(2, 32, 8, 64, "fp16")
    for text, message in (("heads=x", "must be an integer"), ("depth=3", "is not one of"), ("kv_heads=5", "must divide"), ("dtype=int8", "dtype")):
        with pytest.raises(cost.ProfileError, match=message):
            cost.Workload.parse(text)


# --- the compiler's choice ------------------------------------------------------------------------


def scrambled_band(n: int, width: int, seed: int = 0) -> np.ndarray:
    i = np.arange(n)
    band = np.abs(i[:, None] - i[None, :]) < width
    order = np.random.default_rng(seed).permutation(n)
    return band[order][:, order]


@pytest.fixture
def profile():
    return cost.parse_profile(make_profile())


@pytest.mark.parametrize(
    "mask, chosen",
    [
        (library.full(1000), "dense"),
        (library.causal(2048), "dense_causal"),
        (scrambled_band(2048, 64), "block_sparse/64x64+rcm"),
    ],
    ids=["full", "causal", "scrambled band"],
)
def test_auto_picks_the_fastest_predicted_candidate(profile, mask, chosen):
    plan = maskc.compile(mask, profile=profile)
    pred = plan.predictions
    assert pred["chosen"] == chosen == cost.plan_candidate(plan).name
    assert pred["profile"] == "Test GPU" and pred["profile_sha256"] == profile.sha256 and pred["objective"] == "fwd_bwd"
    times = {name: c["fwd_bwd_ms"] for name, c in pred["candidates"].items()}
    assert times[chosen] == min(times.values())
    back = decode(plan.to_bytes())
    assert back.predictions == pred
    assert {r.candidate.name for r in cost.recorded(back)} == set(pred["candidates"])
    again = cost.reevaluate(back, profile, cost.Workload())
    assert again[chosen].fwd_bwd_ms == pytest.approx(times[chosen], rel=1e-5)


def test_auto_candidates_cover_tiles_variants_and_reordering(profile):
    tiles = {"block_sparse/64x64", "block_sparse/128x128", "intervals/64x64", "intervals/128x128"}
    names = set(maskc.compile(library.documents([300, 500, 700, 548]), profile=profile).predictions["candidates"])
    assert names == tiles | {name + "+pieces" for name in tiles}  # fits intervals: no RCM; four dense pieces
    names = set(maskc.compile(library.documents([300, 500, 700, 548]), profile=profile, backward="tiles").predictions["candidates"])
    assert names == tiles
    names = set(maskc.compile(scrambled_band(512, 8), profile=profile).predictions["candidates"])
    assert names == {"block_sparse/64x64", "block_sparse/128x128", "block_sparse/64x64+rcm", "block_sparse/128x128+rcm"}
    names = set(maskc.compile(scrambled_band(512, 8), profile=profile, reorder="none").predictions["candidates"])
    assert names == {"block_sparse/64x64", "block_sparse/128x128"}
    names = set(maskc.compile(library.causal(512), profile=profile, variant="intervals", backward="pieces").predictions["candidates"])
    assert names == {"intervals/64x64+pieces", "intervals/128x128+pieces"}
    names = set(maskc.compile(library.causal(512), profile=profile).predictions["candidates"])
    assert not any(name.endswith("+pieces") for name in names)  # dense_causal runs the one piece whole
    plan = maskc.compile(library.causal(512), profile=profile, backward="pieces")
    assert cost.plan_candidate(plan).pieces and plan.arrays["pieces"].tolist() == [[0, 512, 0, 512, 1]]
    assert set(maskc.compile(np.ones((40, 60), dtype=bool), profile=profile).predictions["candidates"]) >= {"dense"}


def test_the_objective_can_be_the_forward_alone(profile):
    plan = maskc.compile(library.documents([300, 500, 700, 548]), profile=profile, objective="fwd")
    times = {name: c["fwd_ms"] for name, c in plan.predictions["candidates"].items() if c["fwd_ms"] is not None}
    assert plan.predictions["objective"] == "fwd" and times[plan.predictions["chosen"]] == min(times.values())
    with pytest.raises(MaskError, match="objective"):
        maskc.compile(library.causal(64), profile=profile, objective="latency")


def test_without_a_profile_auto_is_128_and_the_fixed_rule():
    mask = np.random.default_rng(0).random((300, 300)) < 0.3
    plan = maskc.compile(mask)
    assert (plan.block_m, plan.block_n, plan.variant, plan.reordered) == (128, 128, "block_sparse", False)
    assert plan.predictions["candidates"] == {} and plan.predictions["chosen"] is None
    assert "no cost-model profile" in plan.predictions["note"]
    explicit = maskc.compile(mask, block=128)
    assert explicit.predictions is None and explicit.arrays["row_col"].tolist() == plan.arrays["row_col"].tolist()


def test_explicit_blocks_never_consult_the_model(profile):
    """An explicit tile size compiles exactly as told, whatever the profile."""
    for mask in (library.causal(300), np.ones((200, 200), dtype=bool), scrambled_band(300, 8)):
        with_profile = maskc.compile(mask, block=64, profile=profile)
        assert with_profile.to_bytes() == maskc.compile(mask, block=64).to_bytes()
        assert with_profile.predictions is None and with_profile.variant in ("block_sparse", "intervals") and not with_profile.reordered


def test_a_profile_without_constants_for_the_workload_falls_back(profile):
    plan = maskc.compile(library.documents([100, 200]), profile=profile, workload=cost.Workload(head_dim=64))
    assert (plan.block_m, plan.variant) == (128, "block_sparse")
    pred = plan.predictions
    assert pred["chosen"] is None and "no candidate could be predicted" in pred["note"]
    assert all(c["fwd_ms"] is None and "head dim 64" in c["note"] for c in pred["candidates"].values())


def test_the_cache_keys_on_the_profile(tmp_path, profile):
    cache = PlanCache(tmp_path / "cache")
    mask = library.causal(256)
    first, hit1 = cache.compile(mask, profile=profile)
    second, hit2 = cache.compile(mask, profile=profile)
    other = cost.parse_profile(make_profile(pair_ms=1.0), sha256="0" * 64)
    third, hit3 = cache.compile(mask, profile=other)
    fourth, hit4 = cache.compile(mask, profile="none")
    assert (hit1, hit2, hit3, hit4) == (False, True, False, False)
    assert first.variant == "dense_causal" and third.variant != "dense_causal" and fourth.predictions["chosen"] is None
    assert len(cache.entries()) == 3
