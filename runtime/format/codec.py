"""The plan file's bytes: a fixed preamble (magic, version, SHA-256 of the body), then one msgpack
map of plain values and raw little-endian arrays (``plans/FORMAT.md``). Encoding is deterministic;
decoding checks the preamble, then every field's type and every array's dtype, shape and length,
then the plan itself (:mod:`maskc.runtime.format.validate`) before returning it.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
import struct
from collections.abc import Mapping

import msgpack
import numpy as np

from maskc.runtime.format.plan import ARRAY_SPECS, DERIVED_LISTS, LIST_ARRAYS, MAX_DIM, ORDER_ARRAYS, Plan, PlanError
from maskc.runtime.format.validate import validate, with_derived_lists

MAGIC = b"MASKCPLN"
VERSION = 4
_PREAMBLE = struct.Struct("<8sI32s")  # magic, format version, sha256(body)
META_INTS = ("q_len", "kv_len", "batch", "heads", "block_m", "block_n", "visible_pairs")
V3_ARRAYS = tuple(name for name in ARRAY_SPECS if name != "pieces")
V2_ARRAYS = tuple(name for name in V3_ARRAYS if name not in ORDER_ARRAYS)
V1_ARRAYS = tuple(name for name in V2_ARRAYS if name != "intervals")
_ARRAYS_OF_VERSION = {1: V1_ARRAYS, 2: V2_ARRAYS, 3: V3_ARRAYS, 4: tuple(ARRAY_SPECS)}


def encode(plan: Plan) -> bytes:
    """Serialise a validated plan; byte-identical output for identical plans (map keys are sorted)."""
    validate(plan)
    return _pack(plan)


def _pack(plan: Plan) -> bytes:
    """The file's bytes for ``plan``, unchecked (tests craft malformed files with it)."""
    arrays = {}
    for name in sorted(plan.arrays):
        dtype, _ = ARRAY_SPECS[name]
        a = np.ascontiguousarray(plan.arrays[name], dtype=np.dtype(dtype))
        if plan.variant in DERIVED_LISTS and name in LIST_ARRAYS:
            a = a[:0]  # derived by every reader: not stored
        arrays[name] = {"dtype": dtype, "shape": list(a.shape), "data": a.tobytes()}
    meta = {
        **{k: int(getattr(plan, k)) for k in META_INTS},
        "mask_sha256": plan.mask_sha256,
        "variant": plan.variant,
        "hash_of": plan.hash_of,
        "reordered": plan.reordered,
    }
    if plan.predictions is not None:
        meta["predictions"] = plan.predictions
    body = {"meta": meta, "options": plan.options, "arrays": arrays}
    payload = msgpack.packb(_sorted(body), use_bin_type=True)
    return _PREAMBLE.pack(MAGIC, VERSION, hashlib.sha256(payload).digest()) + payload


def decode(data: bytes) -> Plan:
    """Parse and fully validate a plan file's bytes."""
    if len(data) < _PREAMBLE.size:
        raise PlanError(f"not a maskc plan: {len(data)} bytes is shorter than the {_PREAMBLE.size}-byte preamble")
    magic, version, digest = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise PlanError("not a maskc plan: bad magic bytes")
    if version > VERSION:
        raise PlanError(f"plan format version {version} is newer than this maskc reads ({VERSION}); upgrade maskc")
    if version < 1:
        raise PlanError(f"plan format version {version} is not valid")
    payload = memoryview(data)[_PREAMBLE.size:]
    if hashlib.sha256(payload).digest() != digest:
        raise PlanError("plan checksum mismatch: the file is truncated or corrupted")
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types on bad input
        raise PlanError(f"plan body is not valid msgpack: {e}") from None
    plan = _plan_from_body(body, version)
    if plan.variant in DERIVED_LISTS and plan.arrays["row_ptr"].size == 0:
        return with_derived_lists(plan)
    validate(plan)
    return plan


def load(path: str | os.PathLike) -> Plan:
    """Read and validate a plan file (a regular file: a device or a pipe is refused unread)."""
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise PlanError(f"{path}: not a regular file")
            data = f.read()
    except FileNotFoundError:
        raise PlanError(f"plan file not found: {path}") from None
    except IsADirectoryError:
        raise PlanError(f"plan path is a directory: {path}") from None
    except OSError as e:
        raise PlanError(f"{path}: cannot read the plan: {e.strerror or e}") from None
    try:
        return decode(data)
    except PlanError as e:
        raise PlanError(f"{path}: {e}") from None


def _sorted(obj):
    if isinstance(obj, Mapping):
        return {k: _sorted(obj[k]) for k in sorted(obj)}
    if isinstance(obj, (list, tuple)):
        return [_sorted(v) for v in obj]
    return obj


def _field(mapping, key, kind, where):
    if not isinstance(mapping, dict) or key not in mapping:
        raise PlanError(f"plan field {where}{key} is missing")
    value = mapping[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise PlanError(f"plan field {where}{key} must be an integer, got {type(value).__name__}")
    if kind is not int and not isinstance(value, kind):
        raise PlanError(f"plan field {where}{key} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _plan_from_body(body, version: int) -> Plan:
    """The Plan a decoded body describes, its fields typed and its arrays' dtypes, shapes and byte
    lengths checked (sizes in Python integers: a crafted shape can neither overflow nor allocate)."""
    if not isinstance(body, dict):
        raise PlanError("plan body must be a map")
    meta = _field(body, "meta", dict, "")
    ints = {k: _field(meta, k, int, "meta.") for k in META_INTS}
    for k in ("q_len", "kv_len", "batch", "heads"):
        if not 1 <= ints[k] <= MAX_DIM:
            raise PlanError(f"plan {k}={ints[k]} is out of range [1, {MAX_DIM}]")
    hash_of = _field(meta, "hash_of", str, "meta.") if version >= 2 else "bits"
    raw_arrays = _field(body, "arrays", dict, "")
    names = _ARRAYS_OF_VERSION[version]
    arrays = {}
    for name in names:
        dtype, ndim = ARRAY_SPECS[name]
        spec = _field(raw_arrays, name, dict, "arrays.")
        where = f"arrays.{name}."
        if _field(spec, "dtype", str, where) != dtype:
            raise PlanError(f"plan array {name} has dtype {spec['dtype']!r}, expected {dtype!r}")
        shape = _field(spec, "shape", list, where)
        if len(shape) != ndim or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape):
            raise PlanError(f"plan array {name} has invalid shape {shape!r}")
        buf = _field(spec, "data", bytes, where)
        itemsize = np.dtype(dtype).itemsize
        if len(buf) != math.prod(shape) * itemsize:
            raise PlanError(f"plan array {name}: {len(buf)} bytes do not match shape {shape}")
        arrays[name] = np.frombuffer(buf, dtype=dtype).reshape(shape)
    extra = set(raw_arrays) - set(names)
    if extra:
        raise PlanError(f"plan has unknown arrays {sorted(extra)}")
    if version < 2:  # version 1 plans are all block-sparse: they carry no interval vectors
        arrays["intervals"] = np.zeros((0, 4, ints["kv_len"]), dtype="<i4")
    predictions = None
    if version >= 3:
        reordered = _field(meta, "reordered", bool, "meta.")
        if reordered != (arrays["perm"].size > 0):
            raise PlanError(f"plan meta.reordered is {reordered} but it {'stores no' if reordered else 'stores a'} permutation")
        if "predictions" in meta:
            predictions = _field(meta, "predictions", dict, "meta.")
    options = body.get("options", {})
    if not isinstance(options, dict):
        raise PlanError("plan field options must be a map")
    return Plan(
        **ints,
        mask_sha256=_field(meta, "mask_sha256", str, "meta."),
        variant=_field(meta, "variant", str, "meta."),
        hash_of=hash_of,
        arrays=arrays,
        options=options,
        predictions=predictions,
    )
