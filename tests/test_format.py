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
        fmt.decode(fmt._pack(bad))  # a file written by a buggy or hostile tool
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
