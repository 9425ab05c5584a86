"""Mask specs: a library mask named by its kind and parameters, as a dict or a small JSON file.

    {"kind": "documents", "lengths": [4096, 1000, 8192], "causal": true}
    {"kind": "union", "of": [{"kind": "sliding_window", "n": 8192, "window": 512},
                             {"kind": "prefix_lm", "n": 8192, "prefix": 64}]}

Every kind of :mod:`maskc.library` is a spec kind under its function's name, its parameters under
theirs; ``union`` and ``intersection`` combine the specs listed in ``of``, ``stack`` stacks them
over ``dim`` (``"heads"`` or ``"batch"``). A spec is checked before anything is built: an unknown
kind, a missing or unknown parameter, or a value of the wrong JSON type is a MaskError that names
the field at fault by its path (``spec.of[1].lengths``). The spec's sources give their interval
vectors directly, so ``maskc compile spec.json`` never produces an ``N × N`` mask.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from maskc import library
from maskc.errors import MaskError
from maskc.sources import MaskSource

# parameter types, as JSON spells them
INT, BOOL, INTS, STR, SPECS = "an integer", "true or false", "a list of integers", "a string", "a non-empty list of specs"

KINDS: dict[str, tuple[Callable[..., MaskSource], dict[str, str]]] = {
    "causal": (library.causal, {"n": INT}),
    "full": (library.full, {"n": INT, "kv_len": INT}),
    "sliding_window": (library.sliding_window, {"n": INT, "window": INT, "causal": BOOL}),
    "documents": (library.documents, {"lengths": INTS, "causal": BOOL}),
    "prefix_lm": (library.prefix_lm, {"n": INT, "prefix": INT}),
    "causal_blockwise": (library.causal_blockwise, {"n": INT, "block": INT}),
    "longformer": (library.longformer, {"n": INT, "window": INT, "global_tokens": INTS, "causal": BOOL}),
    "bigbird": (library.bigbird, {"n": INT, "window": INT, "global_tokens": INTS, "random_blocks": INT, "block": INT, "seed": INT}),
    "shared_question": (library.shared_question, {"question": INT, "answers": INTS}),
    "token_tree": (library.token_tree, {"parents": INTS}),
    "medusa": (library.medusa, {"prompt": INT, "parents": INTS}),
    "hash_buckets": (library.hash_buckets, {"n": INT, "buckets": INT, "causal": BOOL, "seed": INT}),
    "union": (library.union, {"of": SPECS}),
    "intersection": (library.intersection, {"of": SPECS}),
    "stack": (library.stack, {"of": SPECS, "dim": STR}),
}
"""Spec kind -> (library function, parameter -> JSON type). ``of`` holds nested specs."""


def load_spec(path: str | os.PathLike) -> MaskSource:
    """The mask source a JSON spec file describes."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise MaskError(f"{path}: cannot read the spec: {e.strerror or e}") from None
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise MaskError(f"{path}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    return from_spec(spec, where=str(path))


def from_spec(spec: Any, where: str = "spec") -> MaskSource:
    """The mask source ``spec`` (a dict as in the module docstring) describes; ``where`` names it in errors."""
    if not isinstance(spec, dict):
        raise MaskError(f"{where} must be a JSON object with a \"kind\", got {_json_type(spec)}")
    kind = spec.get("kind")
    if kind is None:
        raise MaskError(f"{where}: missing \"kind\"; one of {', '.join(KINDS)}")
    if not isinstance(kind, str) or kind not in KINDS:
        hint = f"; did you mean {kind.replace('-', '_')!r}?" if isinstance(kind, str) and kind.replace("-", "_") in KINDS else ""
        raise MaskError(f"{where}.kind: unknown kind {kind!r}{hint}; known kinds: {', '.join(KINDS)}")
    make, types = KINDS[kind]
    params = {name: value for name, value in spec.items() if name != "kind"}
    for name in params:
        if name not in types:
            raise MaskError(f"{where}: unknown parameter {name!r} for {kind}; it takes {', '.join(types)}")
    signature = inspect.signature(make).parameters
    required = [name for name in types if name == "of" or signature[name].default is inspect.Parameter.empty]
    for name in required:
        if name not in params:
            raise MaskError(f"{where}: {kind} needs parameter {name!r} ({types[name]})")
    args = {name: _check(value, types[name], f"{where}.{name}") for name, value in params.items()}
    try:
        if "of" in args:
            parts = args.pop("of")
            return make(*parts, **args) if kind != "stack" else make(parts, **args)
        return make(**args)
    except MaskError as e:
        raise MaskError(f"{where}: {e}") from None


def _check(value: Any, expected: str, where: str) -> Any:
    """``value`` if it has the JSON type ``expected`` (nested specs built), else a MaskError naming ``where``."""
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    if expected == INT and is_int(value):
        return value
    if expected == BOOL and isinstance(value, bool):
        return value
    if expected == STR and isinstance(value, str):
        return value
    if expected == INTS and isinstance(value, list) and all(is_int(v) for v in value):
        return value
    if expected == SPECS and isinstance(value, list) and value:
        return [from_spec(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise MaskError(f"{where} must be {expected}, got {_json_type(value)} {_short(value)}")


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (bool, int, float, str, list, dict, type(None))) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
