"""Hostile plan files: bounded work, typed errors, and plans that run exactly their own mask.

Every crafted file here has a valid checksum, so the damage reaches the body parser and the
validator. Each must either raise :class:`PlanError`, quickly and within a memory bound, or decode
to a plan whose attention (forward and all three gradients, through the runtime's reference
backend) is exactly dense attention under the mask it reads back as.
"""

from __future__ import annotations

import copy
import hashlib
import struct
import time
import tracemalloc

import msgpack
import numpy as np
import pytest
import torch

import maskc
from maskc import library
from conftest import dense_reference, rel_err
from maskc.runtime import format as fmt
from maskc.runtime import load_plan

CRAFTED = 20_000
MEMORY_BOUND = 64 << 20  # bytes a decode of one of these small files may allocate at its peak
TIME_BOUND = 2.0  # seconds one decode may take


def _seal(body) -> bytes:
    payload = msgpack.packb(body, use_bin_type=True)
    return struct.pack("<8sI32s", fmt.MAGIC, fmt.VERSION, hashlib.sha256(payload).digest()) + payload


def _body(plan: fmt.Plan) -> dict:
    return msgpack.unpackb(plan.to_bytes()[44:], raw=False)


def _dense_body(variant: str, **meta) -> dict:
    body = _body(maskc.compile(library.causal(64) if variant == "dense_causal" else library.full(64), block=32, variant=variant))
    body["meta"].update(meta)
    body["arrays"]["intervals"]["shape"] = [0, 4, body["meta"]["kv_len"]]  # a dense plan stores none, of its kv_len
    return body


def _decode_bounded(data: bytes):
    """Decode ``data``; return the plan or the PlanError, after checking time and peak memory."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        return fmt.decode(data)
    except fmt.PlanError as e:
        return e
    finally:
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak <= MEMORY_BOUND, f"decoding a {len(data)}-byte file allocated {peak} bytes"
        assert elapsed <= TIME_BOUND, f"decoding a {len(data)}-byte file took {elapsed:.2f} s"


# --- the reproducers of known attacks ----------------------------------------------------------------


@pytest.mark.parametrize("body, message", [
    (_dense_body("dense", q_len=2**31 - 1, visible_pairs=0), "at most"),  # derived lists of 2^31 rows
    (_dense_body("dense", batch=20_000, q_len=8192, kv_len=8192), "at most"),  # derived lists proportional to batch
    (_dense_body("dense", kv_len=2**63 - 1), "out of range"),
    (_dense_body("dense", batch=2**31 - 1), "at most|visible_pairs"),
    (_dense_body("dense", q_len=0), "out of range"),
], ids=["q_len 2^31-1", "batch 20000", "kv_len 2^63-1", "batch 2^31-1", "q_len 0"])
def test_dense_plans_that_ask_for_unbounded_work(body, message):
    result = _decode_bounded(_seal(body))
    assert isinstance(result, fmt.PlanError) and result.args[0]
    assert pytest.raises(fmt.PlanError, fmt.decode, _seal(body)).match(message)


def test_many_slices_of_a_dense_plan_cost_their_tiles_only():
    plan = _decode_bounded(_seal(_dense_body("dense", batch=20_000, visible_pairs=20_000 * 64 * 64)))
    assert plan.slices == 20_000 and plan.tile_counts()["tiles_full"] == 20_000 * 4


def test_interval_plans_that_ask_for_unbounded_work():
    plan = maskc.compile(library.documents([40, 24]), block=32, variant="intervals", schedule="none")
    body = _body(plan)
    body["meta"].update(q_len=2**31 - 1)  # 2^26 query tiles over 2 key tiles: refused before deriving
    result = _decode_bounded(_seal(body))
    assert isinstance(result, fmt.PlanError) and "at most" in str(result)


def test_lists_derived_in_bands_are_the_same(monkeypatch):
    """A slice too large to classify at once is classified a band of query tiles at a time, and many
    small slices together: the lists are exactly those of one pass."""
    from maskc.runtime.format import intervals

    rng = np.random.default_rng(7)
    for _ in range(30):
        slices, q_len, kv_len = int(rng.integers(1, 4)), int(rng.integers(1, 700)), int(rng.integers(1, 700))
        block_m, block_n = (int(b) for b in rng.choice(fmt.TILE_SIZES, 2))
        bounds = np.sort(rng.integers(0, q_len + 1, (slices, 2, 2, kv_len)), axis=2).reshape(slices, 4, kv_len)
        whole = intervals.tile_lists(bounds, q_len, block_m, block_n)
        monkeypatch.setattr(intervals, "LIST_CHUNK_TILES", int(rng.integers(1, 20)))
        banded = intervals.tile_lists(bounds, q_len, block_m, block_n)
        monkeypatch.undo()
        assert all(np.array_equal(whole[name], banded[name]) for name in fmt.LIST_ARRAYS)


@pytest.mark.parametrize("shape", [[2**31 - 1, 2**31 - 1, 2**31 - 1], [2**40, 1, 1]])
def test_array_shapes_whose_product_overflows(shape):
    body = _body(maskc.compile(library.causal(64), block=32))
    body["arrays"]["bitmaps"]["shape"] = shape
    assert isinstance(_decode_bounded(_seal(body)), fmt.PlanError)


@pytest.mark.parametrize("block", [16, 256, 48])
def test_only_the_tile_sizes_the_kernels_run_are_read(block):
    body = _body(maskc.compile(library.causal(64), block=32))
    body["meta"]["block_m"] = block
    with pytest.raises(fmt.PlanError, match=r"block_m=\d+ is not one of \(32, 64, 128\)"):
        fmt.decode(_seal(body))


@pytest.mark.parametrize("options, message", [
    ({b"block": [32, 32]}, "not a string"),
    ({"deep": [[[[[[[[[[1]]]]]]]]]]}, "nested too deeply"),
])
def test_options_must_be_plain_data_so_they_re_encode(options, message):
    body = _body(maskc.compile(library.causal(64), block=32))
    body["options"] = options
    with pytest.raises(fmt.PlanError, match=message):
        fmt.decode(_seal(body))


def test_a_device_or_a_directory_is_not_read(tmp_path):
    with pytest.raises(fmt.PlanError, match="not a regular file"):
        fmt.load("/dev/zero")
    with pytest.raises(fmt.PlanError, match="directory"):
        fmt.load(tmp_path)


def test_plans_are_immutable():
    plan = maskc.compile(library.causal(64), block=32)
    with pytest.raises(Exception):
        plan.q_len = 3
    with pytest.raises(TypeError):
        plan.arrays["perm"] = np.arange(64, dtype="<i4")
    with pytest.raises(ValueError):
        plan.arrays["row_col"][0] = 1
    with pytest.raises(TypeError):
        plan.options["block"] = [64, 64]


def test_a_plan_prints_short_and_shows_its_tiles():
    plan = maskc.compile(library.causal(96), block=32)
    assert repr(plan) == "Plan(block_sparse, mask 1x1x96x96, tiles 32x32: 3 full + 3 partial of 9 (66.7% visited), 1 distinct bitmaps)"
    assert str(plan).splitlines()[2:] == ["░··", "█░·", "██░"]
    # the worked example of the docstring
    assert plan.arrays["row_ptr"].tolist() == [0, 1, 3, 6] and plan.arrays["row_full"].tolist() == [0, 1, 2]
    assert plan.arrays["row_col"].tolist() == [0, 0, 1, 0, 1, 2] and plan.arrays["row_tile"].tolist() == [0, -1, 0, -1, -1, 0]
    big = maskc.compile(library.causal(8192), block=64, variant="intervals")
    assert len(str(big).splitlines()) == 2 + 32 and "one cell per 4x4 tiles" in str(big)


# --- crafted plans in bulk ---------------------------------------------------------------------------

INTERESTING_INTS = [0, 1, 2, -1, -2, 31, 32, 33, 63, 64, 65, 96, 127, 128, 150, 2**31 - 1, 2**31, -(2**31), 2**32, 2**63 - 1, -(2**63)]


def _bases() -> list[bytes]:
    rng = np.random.default_rng(0)
    plans = [
        maskc.compile(library.causal(100), block=32),
        maskc.compile(library.documents([30, 50, 20]), block=(32, 64), variant="intervals"),
        maskc.compile(library.stack([library.sliding_window(70, 9), library.prefix_lm(70, 20)]), block=32),
        maskc.compile(library.prefix_lm(96, 30), block=32, backward="pieces"),
        maskc.compile(library.prefix_lm(96, 30), block=32, variant="intervals", backward="pieces"),
        maskc.compile(library.hash_buckets(96, 4, seed=1), block=32, reorder="rcm"),
        maskc.compile(library.longformer(96, 4, global_tokens=[0, 50]), block=32),
        maskc.compile(rng.random((2, 1, 40, 70)) < 0.3, block=32),
        maskc.compile(library.causal(64), block=32, variant="dense_causal"),
        maskc.compile(library.full(40, 72), block=32, variant="dense"),
    ]
    return [p.to_bytes() for p in plans]


def _mutate(body: dict, rng: np.random.Generator) -> None:
    """One random change to a decoded body: a meta field, an array's dtype, shape or values, the
    options or predictions, or a whole entry added or removed."""
    kind = rng.integers(8)
    meta, arrays = body["meta"], body["arrays"]
    if kind == 0:
        key = rng.choice(sorted(meta))
        meta[key] = _value(rng, meta[key])
    elif kind in (1, 2, 3):
        name = rng.choice(sorted(arrays))
        spec = arrays[name]
        if kind == 1:
            spec["shape"] = [int(rng.choice(INTERESTING_INTS)) if rng.random() < 0.3 else max(0, d + int(rng.integers(-2, 3))) for d in spec["shape"]]
        elif kind == 2 and spec["data"]:
            values = np.frombuffer(spec["data"], dtype=spec["dtype"]).copy()
            for _ in range(int(rng.integers(1, 4))):
                values.flat[rng.integers(values.size)] = np.array(rng.choice(INTERESTING_INTS)).astype(values.dtype)
            spec["data"] = values.tobytes()
        else:
            spec["dtype"] = str(rng.choice(["<i4", "<u4", "<i8", ">i4", "|b1", "<f4"]))
    elif kind == 4:
        if rng.random() < 0.5 and arrays:
            del arrays[rng.choice(sorted(arrays))]
        else:
            arrays[str(rng.choice(["extra", "perm", "pieces"]))] = {"dtype": "<i4", "shape": [2], "data": bytes(8)}
    elif kind == 5:
        body["options"] = _value(rng, body.get("options"))
    elif kind == 6:
        meta["predictions"] = _value(rng, meta.get("predictions"))
    else:
        spec = arrays[rng.choice(sorted(arrays))]
        data = bytearray(spec["data"])
        if data:
            data[rng.integers(len(data))] ^= int(rng.integers(1, 256))
        spec["data"] = bytes(data)


def _value(rng: np.random.Generator, old):
    """A replacement for a field: an interesting integer, a wrong type, a nearby value, or deep data."""
    pick = rng.integers(7)
    if pick == 0:
        return int(rng.choice(INTERESTING_INTS))
    if pick == 1:
        return str(rng.choice(["block_sparse", "intervals", "dense", "dense_causal", "bits", "x", "0" * 64, "a" * 64]))
    if pick == 2:
        return bool(rng.integers(2))
    if pick == 3 and isinstance(old, int) and not isinstance(old, bool):
        return old + int(rng.integers(-3, 4))
    if pick == 4:
        deep: object = 1
        for _ in range(int(rng.integers(1, 12))):
            deep = {"k": deep} if rng.random() < 0.5 else [deep]
        return deep
    if pick == 5:
        return {b"bytes": 1} if rng.random() < 0.5 else None
    return [old, 1.5]


def _runs_its_own_mask(plan: fmt.Plan, seed: int) -> None:
    """The reference backend's output and gradients equal float64 dense attention under the mask
    the plan reads back as."""
    g = torch.Generator().manual_seed(seed)
    heads = plan.heads
    q, k, v = (torch.randn(plan.batch, heads, n, 8, generator=g, dtype=torch.float64).requires_grad_()
               for n in (plan.q_len, plan.kv_len, plan.kv_len))
    do = torch.randn(plan.batch, heads, plan.q_len, 8, generator=g, dtype=torch.float64)
    out = load_plan(plan).attention(q, k, v, backend="reference")
    grads = torch.autograd.grad(out, (q, k, v), do)
    want = dense_reference(q, k, v, plan.to_mask(), 8**-0.5, do)
    for got, ref in zip((out, *grads), want):
        assert rel_err(got, ref) < 1e-6  # float64 throughout but the log-sum-exp, which the runtime keeps in float32


def _what_it_runs(plan: fmt.Plan) -> bytes:
    """A digest of everything that decides what a plan computes (not its metadata)."""
    h = hashlib.sha256(repr((plan.variant, plan.batch, plan.heads, plan.q_len, plan.kv_len, plan.block_m, plan.block_n)).encode())
    for name in sorted(plan.arrays):
        h.update(name.encode() + np.ascontiguousarray(plan.arrays[name]).tobytes())
    return h.digest()


def test_twenty_thousand_crafted_plans():
    """Each accepted plan that computes something not seen before (most accepted ones differ from
    their base only in metadata) is run against the dense reference."""
    rng = np.random.default_rng(2026)
    bases = [msgpack.unpackb(b[44:], raw=False) for b in _bases()]
    accepted = refused = 0
    checked: set[bytes] = set()
    for i in range(CRAFTED):
        body = copy.deepcopy(bases[i % len(bases)])
        for _ in range(int(rng.integers(1, 3))):
            _mutate(body, rng)
        result = _decode_bounded(_seal(body))
        if isinstance(result, fmt.PlanError):
            refused += 1
            continue
        accepted += 1
        digest = _what_it_runs(result)
        if digest not in checked and result.q_len * result.kv_len * result.slices <= 1 << 16:
            checked.add(digest)
            _runs_its_own_mask(result, i)
    assert refused > CRAFTED // 2 and accepted > 100 and len(checked) > len(bases), (accepted, refused, len(checked))
