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
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from maskc.errors import MaskError
from maskc.kinds import Param, Sources
from maskc.library import KINDS
from maskc.sources import MaskSource


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
    args = {params[key].name: _value(params[key], value, f"{where}.{key}") for key, value in given.items()}
    try:
        return kind.build(args)
    except MaskError as e:
        raise MaskError(f"{where}: {e}") from None


def _value(param: Param, value: Any, where: str) -> Any:
    """``value`` if it has the parameter's JSON type (nested specs built), else a MaskError naming ``where``."""
    if not param.is_json(value):
        raise MaskError(f"{where} must be {param.json_type}, got {_json_type(value)} {_short(value)}")
    if isinstance(param, Sources):
        return [from_spec(item, f"{where}[{i}]") for i, item in enumerate(value)]
    return value


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (bool, int, float, str, list, dict, type(None))) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
