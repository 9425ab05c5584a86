"""The plan format: exact round trips, determinism, and clean PlanErrors for every bad file."""

from __future__ import annotations

import dataclasses
import struct

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import maskc
from maskc.runtime import format as fmt
from maskc.runtime.format import codec
from maskc.runtime.format import PlanError

BLOCKS = [(32, 32), (64, 32), (32, 64), (64, 64), (128, 128)]


@st.composite
def masks(draw):
    lead = draw(st.sampled_from([(), (2,), (1, 3), (2, 1), (2, 2)]))
    nq, nk = draw(st.integers(1, 150)), draw(st.integers(1, 150))
    density = draw(st.sampled_from([0.0, 0.05, 0.5, 0.95, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    r = np.random.default_rng(seed)
    mask = r.random((*lead, nq, nk)) < density
    if draw(st.booleans()):  # structured blocks so full and empty tiles appear
        mask[..., : nq // 2, : nk // 3] = True
        mask[..., nq // 2 :, nk // 3 :] = False
    return mask


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(masks(), st.sampled_from(BLOCKS))
def test_round_trip_is_exact(mask, block):
    plan = maskc.compile(mask, block=block)
    data = plan.to_bytes()
    back = fmt.decode(data)
    assert np.array_equal(back.to_mask().reshape(mask.shape), mask)
    assert back.visible_pairs == int(mask.sum())
    assert back.to_bytes() == data


def test_compile_is_deterministic(rng):
    mask = rng.random((3, 200, 170)) < 0.3
    assert maskc.compile(mask).to_bytes() == maskc.compile(mask.copy()).to_bytes()


def test_identical_partial_tiles_are_stored_once():
    plan = maskc.compile(np.tril(np.ones((1000, 1000), dtype=bool)), block=(128, 128))
    counts = plan.tile_counts()
    assert counts["tiles_partial"] == 8  # the diagonal tiles
    assert counts["partial_distinct"] == 2  # one interior diagonal tile, one ragged last tile


def test_row_lists_put_full_tiles_first():
    mask = np.tril(np.ones((256, 256), dtype=bool))
    a = maskc.compile(mask, block=(64, 64)).arrays
    for row in range(4):
        lo, hi, nfull = a["row_ptr"][row], a["row_ptr"][row + 1], a["row_full"][row]
        assert np.all(a["row_tile"][lo : lo + nfull] == -1)
        assert np.all(a["row_tile"][lo + nfull : hi] >= 0)


def test_full_tiles_must_ascend_within_a_list():
    """The kernels address a run of consecutive full tiles from its first: a list giving the same
    full tiles out of order is refused, in rows and in columns."""
    plan = _causal_plan()
    for prefix, other in (("row", "row_col"), ("col", "col_row")):
        a = plan.arrays
        lo = int(a[f"{prefix}_ptr"][2])
        assert a[f"{prefix}_full"][2] >= 2
        swapped = a[other].copy()
        swapped[[lo, lo + 1]] = swapped[[lo + 1, lo]]
        with pytest.raises(PlanError, match=f"plan {prefix} lists must give their full tiles in ascending order"):
            fmt.decode(codec._pack(_with_array(plan, other, swapped)))


def _causal_plan() -> fmt.Plan:
    return maskc.compile(np.tril(np.ones((300, 300), dtype=bool)), block=(64, 64))


def _with_array(plan: fmt.Plan, name: str, value: np.ndarray) -> fmt.Plan:
    return dataclasses.replace(plan, arrays={**plan.arrays, name: value})


def _corrupt_cases():
    plan = _causal_plan()
    a = plan.arrays
    bump = lambda x, i, d: np.concatenate([x[:i], [x[i] + d], x[i + 1 :]]).astype(x.dtype)  # noqa: E731
    return {
        "column out of range": _with_array(plan, "row_col", bump(a["row_col"], 0, 99)),
        "negative column": _with_array(plan, "row_col", bump(a["row_col"], 0, -99)),
        "tile id out of range": _with_array(plan, "row_tile", np.where(a["row_tile"] >= 0, 7, -1).astype("<i4")),
        "offsets not monotone": _with_array(plan, "row_ptr", bump(a["row_ptr"], 2, 50)),
        "full count too large": _with_array(plan, "row_full", a["row_full"] + 5),
        "columns not a transpose": _with_array(plan, "col_row", np.zeros_like(a["col_row"])),
        "visible pairs wrong": dataclasses.replace(plan, visible_pairs=plan.visible_pairs + 1),
        "bad block size": dataclasses.replace(plan, block_m=48),
        "q_len too small for the lists": dataclasses.replace(plan, q_len=64),
        "unknown variant": dataclasses.replace(plan, variant="magic"),
        "bitmap shape": _with_array(plan, "bitmaps", a["bitmaps"][:, :32]),
    }


@pytest.mark.parametrize("case", sorted(_corrupt_cases()))
def test_inconsistent_plans_are_refused(case):
    bad = _corrupt_cases()[case]
    with pytest.raises(PlanError):
        fmt.decode(codec._pack(bad))  # a file written by a buggy or hostile tool
    with pytest.raises(PlanError):
        fmt.encode(bad)


def test_not_a_plan():
    with pytest.raises(PlanError, match="not a maskc plan"):
        fmt.decode(b"\x93NUMPY" + bytes(100))
    with pytest.raises(PlanError, match="shorter"):
        fmt.decode(b"MASK")


def test_newer_version_is_refused():
    data = bytearray(_causal_plan().to_bytes())
    struct.pack_into("<I", data, 8, fmt.VERSION + 1)
    with pytest.raises(PlanError, match="newer"):
        fmt.decode(bytes(data))


def test_checksum_and_truncation():
    data = _causal_plan().to_bytes()
    flipped = bytearray(data)
    flipped[-10] ^= 0x40
    with pytest.raises(PlanError, match="checksum"):
        fmt.decode(bytes(flipped))
    with pytest.raises(PlanError, match="checksum"):
        fmt.decode(data[:-7])


def _repack(body) -> bytes:
    import hashlib

    payload = msgpack.packb(body, use_bin_type=True)
    return struct.pack("<8sI32s", fmt.MAGIC, fmt.VERSION, hashlib.sha256(payload).digest()) + payload


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b.update(meta="x"), "meta must be dict"),
        (lambda b: b["meta"].pop("q_len"), "meta.q_len is missing"),
        (lambda b: b["meta"].update(q_len="300"), "meta.q_len must be an integer"),
        (lambda b: b["arrays"]["row_col"].update(dtype="<i8"), "dtype"),
        (lambda b: b["arrays"]["row_col"].update(shape=[1, 2]), "invalid shape"),
        (lambda b: b["arrays"]["row_col"].update(data=b"\x00" * 3), "do not match shape"),
        (lambda b: b["arrays"].update(extra={}), "unknown arrays"),
        (lambda b: b["meta"].update(mask_sha256="zz"), "hex"),
    ],
)
def test_well_checksummed_but_malformed_bodies(mutate, message):
    body = msgpack.unpackb(_causal_plan().to_bytes()[44:], raw=False)
    mutate(body)
    with pytest.raises(PlanError, match=message):
        fmt.decode(_repack(body))


def test_garbage_body_with_valid_checksum():
    with pytest.raises(PlanError):
        fmt.decode(_repack([1, 2, 3]))
    import hashlib

    junk = b"\xc1\xff\x00"
    with pytest.raises(PlanError, match="msgpack"):
        fmt.decode(struct.pack("<8sI32s", fmt.MAGIC, fmt.VERSION, hashlib.sha256(junk).digest()) + junk)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_flips_and_truncations(data):
    """Any damaged file either fails with PlanError or decodes to a valid mask."""
    original = _FUZZ_BASE
    raw = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    for candidate in (bytes(raw), _reseal(bytes(raw))):
        try:
            plan = fmt.decode(candidate)
        except PlanError:
            continue
        mask = plan.to_mask()
        assert mask.shape == (plan.batch, plan.heads, plan.q_len, plan.kv_len)
        assert int(mask.sum()) == plan.visible_pairs


def _reseal(raw: bytes) -> bytes:
    """Recompute the checksum so the damage reaches the body parser and validator."""
    import hashlib

    if len(raw) < 44:
        return raw
    return raw[:12] + hashlib.sha256(raw[44:]).digest() + raw[44:]


_FUZZ_BASE = maskc.compile(np.random.default_rng(5).random((2, 70, 90)) < 0.4, block=(32, 32)).to_bytes()


# --- version 2: interval plans ---------------------------------------------------------------------


def _interval_plan() -> fmt.Plan:
    from maskc import library

    return maskc.compile(library.stack([library.documents([100, 37, 163]), library.sliding_window(300, 40, causal=False)]), block=(64, 32), variant="intervals")


def _body(plan: fmt.Plan, store_lists: bool = False) -> dict:
    """The msgpack body of a plan, optionally with an interval plan's lists stored, as another writer may."""
    body = msgpack.unpackb(codec._pack(plan)[44:], raw=False)
    if store_lists:
        for name in fmt.LIST_ARRAYS:
            a = np.ascontiguousarray(plan.arrays[name], dtype="<i4")
            body["arrays"][name] = {"dtype": "<i4", "shape": list(a.shape), "data": a.tobytes()}
    return body


def test_interval_plan_files_leave_out_the_lists_and_readers_derive_them():
    plan = _interval_plan()
    data = plan.to_bytes()
    body = msgpack.unpackb(data[44:], raw=False)
    assert body["meta"]["variant"] == "intervals" and body["meta"]["hash_of"] == "intervals"
    assert all(body["arrays"][name]["shape"] == [0] for name in fmt.LIST_ARRAYS)
    assert body["arrays"]["intervals"]["shape"] == [2, 4, 300] and body["arrays"]["bitmaps"]["shape"] == [0, 64, 1]
    back = fmt.decode(data)
    for name, array in plan.arrays.items():
        assert np.array_equal(back.arrays[name], array), name
    assert back.to_bytes() == data
    assert fmt.decode(_repack(_body(plan, store_lists=True))).to_bytes() == data  # stored lists are accepted when exact
    assert len(data) < len(maskc.compile(plan.to_mask(), block=(64, 32), variant="block_sparse").to_bytes()) * 4


def _with_intervals(plan: fmt.Plan, edit) -> fmt.Plan:
    iv = plan.arrays["intervals"].copy()
    edit(iv)
    return _with_array(plan, "intervals", iv)


def _interval_corrupt_cases():
    plan = _interval_plan()
    a = plan.arrays
    return {
        "LTS after LTE": _with_intervals(plan, lambda iv: iv.__setitem__((0, 0, 5), iv[0, 1, 5] + 1)),
        "UTE past q_len": _with_intervals(plan, lambda iv: iv.__setitem__((1, 3, 7), 301)),
        "negative UTS": _with_intervals(plan, lambda iv: iv.__setitem__((1, 2, 7), -1)),
        "intervals of the wrong width": _with_array(plan, "intervals", a["intervals"][:, :, :299]),
        "intervals of one slice too few": _with_array(plan, "intervals", a["intervals"][:1]),
        "bitmaps in an interval plan": _with_array(plan, "bitmaps", np.zeros((1, 64, 1), dtype="<u4")),
        "visible pairs wrong": dataclasses.replace(plan, visible_pairs=plan.visible_pairs - 1),
        "unknown hash_of": dataclasses.replace(plan, hash_of="rows"),
    }


@pytest.mark.parametrize("case", sorted(_interval_corrupt_cases()))
def test_inconsistent_interval_plans_are_refused(case):
    bad = _interval_corrupt_cases()[case]
    with pytest.raises(PlanError):
        fmt.decode(codec._pack(bad))
    with pytest.raises(PlanError):
        fmt.encode(bad)


def _list_corrupt_cases():
    plan = _interval_plan()
    a = plan.arrays
    partial = np.flatnonzero(a["row_tile"] == -2)[0]
    return {
        "partial tile id -1": _with_array(plan, "row_tile", np.where(np.arange(a["row_tile"].size) == partial, -1, a["row_tile"]).astype("<i4")),
        "partial tile id 0 (a bitmap)": _with_array(plan, "col_tile", np.where(a["col_tile"] == -2, 0, a["col_tile"]).astype("<i4")),
        "a tile left out": _with_array(plan, "row_full", np.maximum(a["row_full"] - 1, 0).astype("<i4")),
        "another tile order": _with_array(plan, "row_col", a["row_col"][::-1].copy()),
        "intervals that make other tiles": _with_intervals(plan, lambda iv: iv.__setitem__((0, slice(None), slice(0, 64)), np.array([300, 300, 0, 0])[:, None])),
    }


@pytest.mark.parametrize("case", sorted(_list_corrupt_cases()))
def test_interval_plan_lists_must_be_exactly_what_the_intervals_make(case):
    bad = _list_corrupt_cases()[case]
    with pytest.raises(PlanError, match="what its intervals make"):
        fmt.encode(bad)
    with pytest.raises(PlanError):
        fmt.decode(_repack(_body(bad, store_lists=True)))  # a file that stores wrong lists


def test_an_interval_plan_stores_all_lists_or_none():
    body = _body(_interval_plan())
    body["arrays"]["col_full"] = {"dtype": "<i4", "shape": [1], "data": b"\x00" * 4}
    with pytest.raises(PlanError, match="stores col_full but not row_ptr"):
        fmt.decode(_repack(body))


def test_block_sparse_plans_carry_no_intervals():
    plan = _causal_plan()
    assert plan.arrays["intervals"].shape == (0, 4, 300) and plan.hash_of == "bits"
    with pytest.raises(PlanError, match=r"intervals shape \[1, 4, 300\] is not \[0, 4, 300\]"):
        fmt.encode(_with_array(plan, "intervals", np.zeros((1, 4, 300), dtype="<i4")))


def _old_bytes(plan: fmt.Plan, version: int) -> bytes:
    """A plan as format version 1, 2 or 3 wrote it: no pieces; before version 3 no v3 arrays and no
    meta.reordered; version 1 also no intervals array and no hash_of."""
    import hashlib

    body = _body(plan)
    del body["arrays"]["pieces"]
    if version < 3:
        for name in fmt.ORDER_ARRAYS:
            del body["arrays"][name]
        del body["meta"]["reordered"]
    if version == 1:
        del body["arrays"]["intervals"], body["meta"]["hash_of"]
    payload = msgpack.packb(body, use_bin_type=True)
    return struct.pack("<8sI32s", fmt.MAGIC, version, hashlib.sha256(payload).digest()) + payload


def _unscheduled(plan: fmt.Plan) -> fmt.Plan:
    return dataclasses.replace(plan, arrays={k: v for k, v in plan.arrays.items() if k not in fmt.ORDER_ARRAYS})


def test_version_1_2_and_3_files_still_load():
    plan = _unscheduled(_causal_plan())
    for version in (1, 2, 3):
        back = fmt.decode(_old_bytes(plan, version))
        assert back.variant == "block_sparse" and back.hash_of == "bits" and back.to_bytes() == plan.to_bytes()
        assert not back.reordered and all(back.arrays[name].size == 0 for name in fmt.ORDER_ARRAYS)
    interval_plan = _unscheduled(_interval_plan())
    assert fmt.decode(_old_bytes(interval_plan, 2)).to_bytes() == interval_plan.to_bytes()
    with pytest.raises(PlanError, match="intervals shape"):  # version 1 knew no interval plans
        fmt.decode(_old_bytes(interval_plan, 1))
    body = _body(plan)
    del body["meta"]["hash_of"]
    with pytest.raises(PlanError, match="meta.hash_of is missing"):  # ... but version 2 and later require it
        fmt.decode(_repack(body))


def _decode_damaged(data, original: bytes):
    """Flip a few body bytes, reseal the checksum and decode: (None, None) on a clean PlanError,
    else the plan and its mask, checked to hold exactly the visible pairs the plan claims."""
    raw = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(44, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    try:
        plan = fmt.decode(_reseal(bytes(raw)))
    except PlanError:
        return None, None
    mask = plan.to_mask()
    assert int(mask.sum()) == plan.visible_pairs
    return plan, mask


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_interval_plan_files(data):
    """Any damage to an interval plan file fails with PlanError or decodes to a consistent mask."""
    plan, mask = _decode_damaged(data, _FUZZ_INTERVALS)
    if plan is not None:
        assert np.array_equal(maskc.compile(mask, block=(plan.block_m, plan.block_n), variant="intervals").to_mask(), mask)


_FUZZ_INTERVALS = maskc.compile(np.tril(np.ones((2, 70, 90), dtype=bool), k=5), block=(32, 32), variant="intervals").to_bytes()


# --- version 3: permutations, launch orders, dense plans, predictions -------------------------------


def _reordered_plan() -> fmt.Plan:
    i = np.arange(200)
    band = np.abs(i[:, None] - i[None, :]) < 6
    order = np.random.default_rng(3).permutation(200)
    return maskc.compile(np.stack([band[order][:, order], band]), block=32, reorder="rcm")


def _v3_corrupt_cases():
    plan = _reordered_plan()
    a = plan.arrays
    perm = a["perm"]
    rows = a["row_order"]
    tm = plan.tiles_m
    crossing = rows.copy()
    crossing[[0, tm]] = crossing[[tm, 0]] + np.array([tm, -tm])  # each slice's entries still in range, one repeated
    return {
        "perm repeats an index": _with_array(plan, "perm", np.where(perm == perm[1], perm[0], perm).astype("<i4")),
        "perm out of range": _with_array(plan, "perm", np.where(perm == perm[0], 200, perm).astype("<i4")),
        "perm too short": _with_array(plan, "perm", perm[:-1].copy()),
        "row_order repeats a row": _with_array(plan, "row_order", np.where(rows == rows[0], rows[1], rows).astype("<i4")),
        "row_order beyond the slice": _with_array(plan, "row_order", np.where(np.arange(rows.size) == 0, tm, rows).astype("<i4")),
        "row_order swaps across slices": _with_array(plan, "row_order", crossing.astype("<i4")),
        "col_order of the wrong length": _with_array(plan, "col_order", a["col_order"][: plan.tiles_n].copy()),
        "predictions not plain": dataclasses.replace(plan, predictions={"a": {1: 2}}),
        "predictions too deep": dataclasses.replace(plan, predictions=_nested(12)),
    }


def _nested(depth: int) -> dict:
    out: dict = {"x": 1}
    for _ in range(depth):
        out = {"x": out}
    return out


@pytest.mark.parametrize("case", sorted(_v3_corrupt_cases()))
def test_inconsistent_v3_plans_are_refused(case):
    bad = _v3_corrupt_cases()[case]
    with pytest.raises(PlanError):
        fmt.encode(bad)
    if "predictions not plain" not in case:  # msgpack itself cannot hold an integer map key here
        with pytest.raises(PlanError):
            fmt.decode(codec._pack(bad))


def test_reordered_flag_must_match_the_permutation():
    body = _body(_reordered_plan())
    body["meta"]["reordered"] = False
    with pytest.raises(PlanError, match="meta.reordered is False but it stores a permutation"):
        fmt.decode(_repack(body))
    body = _body(_unscheduled(_causal_plan()))
    body["meta"]["reordered"] = True
    with pytest.raises(PlanError, match="stores no permutation"):
        fmt.decode(_repack(body))
    body["meta"]["reordered"] = 1
    with pytest.raises(PlanError, match="meta.reordered must be bool"):
        fmt.decode(_repack(body))


def test_a_permutation_needs_a_square_block_sparse_plan():
    rect = maskc.compile(np.tril(np.ones((64, 96), dtype=bool)), block=32)
    with pytest.raises(PlanError, match="only self-attention masks are reordered"):
        fmt.encode(_with_array(rect, "perm", np.arange(64, dtype="<i4")))
    dense = maskc.compile(np.ones((64, 64), dtype=bool), block=32, variant="dense")
    with pytest.raises(PlanError, match="cannot be reordered"):
        fmt.encode(_with_array(dense, "perm", np.arange(64, dtype="<i4")))
    with pytest.raises(PlanError, match="stores no row_order"):
        fmt.encode(_with_array(dense, "row_order", np.arange(2, dtype="<i4")))


def test_dense_plans_are_checked_like_interval_plans():
    dense = maskc.compile(np.tri(96, dtype=bool), block=32, variant="dense_causal")
    assert fmt.decode(_repack(_body(dense, store_lists=True))).to_bytes() == dense.to_bytes()
    with pytest.raises(PlanError, match="visible_pairs"):
        fmt.encode(dataclasses.replace(dense, visible_pairs=dense.visible_pairs + 1))
    with pytest.raises(PlanError, match="must be square"):
        fmt.decode(codec._pack(_with_array(dataclasses.replace(dense, kv_len=128), "intervals", np.zeros((0, 4, 128), dtype="<i4"))))
    wrong = _with_array(dense, "row_full", np.zeros_like(dense.arrays["row_full"]))
    with pytest.raises(PlanError, match="what its intervals make"):
        fmt.decode(_repack(_body(wrong, store_lists=True)))
    with pytest.raises(PlanError, match="bitmaps shape"):
        fmt.encode(_with_array(dense, "bitmaps", np.zeros((1, 32, 1), dtype="<u4")))


def test_launch_orders_are_heaviest_first():
    plan = maskc.compile(np.tril(np.ones((256, 256), dtype=bool)), block=64)
    assert plan.arrays["row_order"].tolist() == [3, 2, 1, 0]  # the last row of a causal mask visits the most tiles
    assert plan.arrays["col_order"].size == 0  # the first column does: ascending order is left out
    two = maskc.compile(np.stack([np.tril(np.ones((256, 256), dtype=bool)), np.triu(np.ones((256, 256), dtype=bool))]), block=64)
    assert two.arrays["row_order"].tolist() == [3, 2, 1, 0, 0, 1, 2, 3]  # per slice
    assert two.arrays["col_order"].tolist() == [0, 1, 2, 3, 3, 2, 1, 0]
    back = fmt.decode(two.to_bytes())
    assert np.array_equal(back.arrays["row_order"], two.arrays["row_order"])
    none = maskc.compile(np.tril(np.ones((256, 256), dtype=bool)), block=64, schedule="none")
    assert none.arrays["row_order"].size == none.arrays["col_order"].size == 0


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_fuzz_reordered_plan_files(data):
    """Any damage to a reordered plan file fails with PlanError or decodes to a consistent mask."""
    plan, _ = _decode_damaged(data, _FUZZ_REORDERED)
    if plan is not None and plan.reordered:
        assert sorted(plan.arrays["perm"].tolist()) == list(range(plan.q_len))


_FUZZ_REORDERED = maskc.compile(np.random.default_rng(9).random((60, 60)) < 0.1, block=32, reorder="rcm").to_bytes()
