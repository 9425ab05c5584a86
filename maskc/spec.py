"""Mask specs: a library mask named by its kind and parameters, as a dict or a small JSON file.

    {"kind": "documents", "lengths": [4096, 1000, 8192], "causal": true}
    {"kind": "union", "of": [{"kind": "sliding_window", "n": 8192, "window": 512},
                             {"kind": "prefix_lm", "n": 8192, "prefix": 64}]}

Every kind of the library's registry (:data:`maskc.library.KINDS`) is a spec kind under its name
(``sliding-window`` is read as ``sliding_window``), its parameters under theirs; ``union`` and
``intersection`` combine the specs listed in ``of``, ``stack`` stacks them over ``dim``
(``"heads"`` or ``"batch"``). A spec is checked before anything is built: an unknown kind, a
missing or unknown parameter, or a value of the wrong JSON type is a MaskError that names the field
at fault by its path (``spec.of[1].lengths``). The spec's sources give their interval vectors
directly, so ``maskc compile spec.json`` never produces an ``N × N`` mask.

**Limits**, each a MaskError that names the field and the limit: a spec file is at most
:data:`MAX_SPEC_BYTES`; a JSON object gives each key once; an integer has at most
:data:`MAX_INT_DIGITS` digits; kinds nest at most :data:`MAX_SPEC_DEPTH` deep and one spec holds at
most ``maskc.kinds.MAX_PARTS`` of them, which together span at most :data:`MAX_SPEC_TOKENS` tokens
(each at most ``maskc.kinds.MAX_TOKENS`` on a side). So the work a spec from a stranger can cause
is bounded before it is done.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from maskc.errors import MaskError
from maskc.kinds import MAX_PARTS, Param, Sources
from maskc.library import KINDS
from maskc.sources import MaskSource

MAX_SPEC_BYTES = 64 << 20  # a parent array of 2^20 nodes is under 8 MiB of JSON
MAX_INT_DIGITS = 19  # 2^63 has 19 digits: larger integers only ever fail a parameter's range
MAX_SPEC_DEPTH = 16  # levels of kinds, the outermost one included
MAX_SPEC_TOKENS = 1 << 25  # the sides of a spec's masks, summed: 128 heads of 262144 tokens each


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The JSON value in the file ``path``, read within :data:`MAX_SPEC_BYTES`; ``what`` names the
    file in errors."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SPEC_BYTES + 1)
    except OSError as e:
        raise MaskError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    if len(data) > MAX_SPEC_BYTES:
        raise MaskError(f"{path}: {what} is larger than {MAX_SPEC_BYTES} bytes (maskc.spec.MAX_SPEC_BYTES)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MaskError(f"{path}: {what} is not UTF-8 text (byte {e.start})") from None
    return parse_json(text, str(path))


class _BadJson(Exception):
    """Raised from inside the JSON parser; :func:`parse_json` adds where."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key given twice (JSON would silently keep the last one)."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _BadJson(f"the key {key!r} appears twice in one object; give each key once")
        obj[key] = value
    return obj


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _BadJson(f"an integer of {len(text.lstrip('-'))} digits; at most {MAX_INT_DIGITS} (maskc.spec.MAX_INT_DIGITS)")
    return int(text)


def parse_json(text: str, where: str) -> Any:
    """The JSON value ``text`` holds, or a MaskError naming ``where`` and the fault."""
    try:
        return json.loads(text, object_pairs_hook=_object, parse_int=_integer)
    except json.JSONDecodeError as e:
        raise MaskError(f"{where}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    except _BadJson as e:
        raise MaskError(f"{where}: {e}") from None
    except RecursionError:
        raise MaskError(f"{where}: JSON nested too deeply to read") from None


def load_spec(path: str | os.PathLike) -> MaskSource:
    """The mask source a JSON spec file describes."""
    return from_spec(read_json(path, "the spec"), where=str(path))


def from_spec(spec: Any, where: str = "spec") -> MaskSource:
    """The mask source ``spec`` (a dict as in the module docstring) describes; ``where`` names it in errors."""
    return _SpecReader().read(spec, where, depth=1)


class _SpecReader:
    """Builds one spec, counting its kinds and the tokens its masks span against the limits."""

    def __init__(self) -> None:
        self.parts = self.tokens = 0

    def read(self, spec: Any, where: str, depth: int) -> MaskSource:
        if not isinstance(spec, dict):
            raise MaskError(f"{where} must be a JSON object with a \"kind\", got {_json_type(spec)}")
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise MaskError(f"{where}: a spec holds at most {MAX_PARTS} kinds (maskc.kinds.MAX_PARTS)")
        if "kind" not in spec:
            raise MaskError(f"{where}: missing \"kind\"; one of {', '.join(KINDS)}")
        kind = KINDS.lookup(spec["kind"], f"{where}.kind")
        params = {p.key: p for p in kind.params}
        given = {key: value for key, value in spec.items() if key != "kind"}
        for key in given:
            if key not in params:
                raise MaskError(f"{where}: unknown parameter {key!r} for {kind.name}; it takes {', '.join(params)}")
        for key, param in params.items():
            if key not in given and kind.required(param):
                raise MaskError(f"{where}: {kind.name} needs parameter {key!r} ({param.json_type})")
        args = {params[key].name: self._value(params[key], value, f"{where}.{key}", depth) for key, value in given.items()}
        try:
            source = kind.build(args)
        except MaskError as e:
            raise MaskError(f"{where}: {e}") from None
        if not any(isinstance(p, Sources) for p in kind.params):
            self.tokens += max(source.q_len, source.kv_len)
            if self.tokens > MAX_SPEC_TOKENS:
                raise MaskError(f"{where}: the masks of this spec span more than {MAX_SPEC_TOKENS} tokens in all (maskc.spec.MAX_SPEC_TOKENS)")
        return source

    def _value(self, param: Param, value: Any, where: str, depth: int) -> Any:
        """``value`` if it has the parameter's JSON type (nested specs built), else a MaskError naming ``where``."""
        if not param.is_json(value):
            raise MaskError(f"{where} must be {param.json_type}, got {_json_type(value)} {_short(value)}")
        if not isinstance(param, Sources):
            return value
        if depth >= MAX_SPEC_DEPTH:
            raise MaskError(f"{where}: kinds nest at most {MAX_SPEC_DEPTH} deep in a spec (maskc.spec.MAX_SPEC_DEPTH)")
        return [self.read(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    """``value`` as JSON, cut to 40 characters (a value JSON cannot spell, such as a huge integer, by its type)."""
    try:
        text = json.dumps(value) if isinstance(value, (bool, int, float, str, list, dict, type(None))) else repr(value)
    except (ValueError, TypeError, RecursionError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 40 else text[:37] + "..."
