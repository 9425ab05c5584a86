"""The registry of mask kinds: one entry per kind, from which everything that names a kind derives.

A kind is registered where its library function is defined, by decorating the function with its
parameters (:meth:`Registry.kind`)::

    @KINDS.kind(Size("n", "sequence length (query and key tokens)", example=8192))
    def causal(n: int) -> MaskSource:
        ...

From that one entry come the function's argument checks (every call of ``maskc.library.causal``
goes through them, before anything is allocated), the spec reader's kinds, parameters and JSON
types (:mod:`maskc.spec`), and the options, help and examples of ``maskc mask KIND``
(:mod:`maskc.cli.mask_cmd`). A parameter's default is its function's. Kind names are canonical
with underscores, as the functions and the masks' names spell them (``sliding_window``); a dash
(``sliding-window``) is accepted wherever a kind is named.

**Limits.** Every size of a library mask (a length, a window, a count of tokens, the sum of
document lengths) is at most :data:`MAX_TOKENS` = 2^20 tokens: the longest side whose tiles a plan
may list (``MAX_DERIVED_TILES``) in the largest tiles, four times the 262144-token masks of the
long-context examples. A list parameter holds at most that many entries. Seeds are integers in ``[0, 2^63)``.
A stack, union or intersection combines at most :data:`MAX_PARTS` masks.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import reprlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from maskc.errors import MaskError
from maskc.runtime.format import MAX_DERIVED_TILES, TILE_SIZES
from maskc.sources import MaskSource

MAX_TOKENS = max(TILE_SIZES) * math.isqrt(MAX_DERIVED_TILES)
MAX_PARTS = 1024  # masks in one stack, union or intersection
MAX_SEED = (1 << 63) - 1

F = TypeVar("F", bound=Callable[..., Any])


def too_long(kind: str, what: str, tokens: int) -> None:
    """Refuse a mask whose ``what`` (a size computed from several parameters) exceeds MAX_TOKENS."""
    if tokens > MAX_TOKENS:
        raise MaskError(f"{kind}: {what} is {tokens} tokens; a library mask has at most {MAX_TOKENS} (maskc.kinds.MAX_TOKENS)")


# --- parameters ----------------------------------------------------------------------------------


class Param:
    """One parameter of a kind: its name, what it accepts, a line of help and an example value.

    ``key`` is the parameter's name in a spec, where it differs from the function's (``of``).
    """

    json_type = "a value"  # what a spec must give, as JSON spells it

    def __init__(self, name: str, help: str, example: Any = None, key: str | None = None):
        self.name, self.help, self.example = name, help, example
        self.key = key or name

    def is_json(self, value: Any) -> bool:
        """Whether ``value`` (from JSON) has this parameter's JSON type."""
        raise NotImplementedError

    def check(self, value: Any, kind: str) -> Any:
        """``value`` as the library function uses it, or a MaskError naming ``kind`` and the parameter."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


class Int(Param):
    """An integer in ``[minimum, maximum]``."""

    json_type = "an integer"

    def __init__(self, name: str, help: str, example: Any, minimum: int, maximum: int, limit: str):
        super().__init__(name, help, example)
        self.minimum, self.maximum, self.limit = minimum, maximum, limit

    def is_json(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def check(self, value: Any, kind: str) -> int:
        if not _is_int(value):
            raise MaskError(f"{kind}: {self.name} must be an integer, got {value!r}")
        bits = int(value).bit_length()
        shown = value if bits <= 128 else f"an integer of {bits} bits"  # a huge int would not print (Python's digit limit)
        if value < self.minimum:
            what = "positive" if self.minimum == 1 else f">= {self.minimum}"
            raise MaskError(f"{kind}: {self.name} must be {what}, got {shown}")
        if value > self.maximum:
            raise MaskError(f"{kind}: {self.name} must be at most {self.maximum} ({self.limit}), got {shown}")
        return int(value)


class Size(Int):
    """A number of tokens (or of things counted in tokens): at most MAX_TOKENS."""

    def __init__(self, name: str, help: str, example: Any = None, minimum: int = 1):
        super().__init__(name, help, example, minimum, MAX_TOKENS, "maskc.kinds.MAX_TOKENS")


class Seed(Int):
    """A random seed: any integer in ``[0, 2^63)``."""

    def __init__(self, name: str = "seed", help: str = "random seed", example: Any = 0):
        super().__init__(name, help, example, 0, MAX_SEED, "maskc.kinds.MAX_SEED")


class Flag(Param):
    """True or false; ``off`` names the false value where it has a name of its own (``bidirectional``)."""

    json_type = "true or false"

    def __init__(self, name: str, help: str, off: str):
        super().__init__(name, help, example=True)
        self.off = off

    def is_json(self, value: Any) -> bool:
        return isinstance(value, bool)

    def check(self, value: Any, kind: str) -> bool:
        return bool(value)


class Choice(Param):
    """One of a few strings."""

    json_type = "a string"

    def __init__(self, name: str, help: str, choices: Sequence[str]):
        super().__init__(name, help, example=choices[0])
        self.choices = tuple(choices)

    def is_json(self, value: Any) -> bool:
        return isinstance(value, str)

    def check(self, value: Any, kind: str) -> str:
        if value not in self.choices:
            raise MaskError(f"{kind}: {self.name} must be {' or '.join(map(repr, self.choices))}, got {value!r}")
        return value


class Ints(Param):
    """A list of integers (at most MAX_TOKENS of them), as an int64 array; subclasses check the entries."""

    json_type = "a list of integers"
    may_be_empty = False

    def is_json(self, value: Any) -> bool:
        return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)

    def check(self, value: Any, kind: str) -> np.ndarray:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
            raise MaskError(f"{kind}: {self.name} must be a list of integers, got {reprlib.repr(value)}")
        if len(value) > MAX_TOKENS:
            raise MaskError(f"{kind}: {self.name} holds {len(value)} entries; at most {MAX_TOKENS} (maskc.kinds.MAX_TOKENS)")
        array = np.asarray(value)
        if array.ndim != 1 or (array.size == 0 and not self.may_be_empty):
            raise MaskError(f"{kind}: {self.name} must be a non-empty list of integers, got {reprlib.repr(value)}")
        if array.size and array.dtype.kind not in "iu":
            raise MaskError(f"{kind}: {self.name} must hold integers only, got dtype {array.dtype}")
        if array.dtype == np.uint64 and array.size and array.max() > np.iinfo(np.int64).max:
            raise MaskError(f"{kind}: {self.name} holds {array.max()}, beyond the int64 range")
        array = array.astype(np.int64)
        self.check_entries(array, kind)
        return array

    def check_entries(self, array: np.ndarray, kind: str) -> None:
        """Refuse an entry out of this parameter's range (a MaskError naming its index)."""


class Lengths(Ints):
    """Lengths of consecutive segments: positive, summing to at most MAX_TOKENS."""

    def check_entries(self, array: np.ndarray, kind: str) -> None:
        bad = np.flatnonzero(array <= 0)
        if bad.size:
            i = int(bad[0])
            raise MaskError(f"{kind}: {self.name}[{i}] = {array[i]}; every length must be positive")
        long = np.flatnonzero(array > MAX_TOKENS)
        if long.size:
            i = int(long[0])
            too_long(kind, f"{self.name}[{i}]", int(array[i]))
        too_long(kind, f"the sum of {self.name}", int(array.sum()))


class Tokens(Ints):
    """Token indices, possibly none; the kind checks them against its length."""

    may_be_empty = True


class Parents(Ints):
    """A parent array: entry ``i`` is -1 (a root) or the index of an earlier node."""

    def check_entries(self, array: np.ndarray, kind: str) -> None:
        bad = np.flatnonzero((array < -1) | (array >= np.arange(array.size)))
        if bad.size:
            i = int(bad[0])
            allowed = f"-1 (a root) or the index of an earlier node (0..{i - 1})" if i else "-1: the first node is a root"
            raise MaskError(f"{kind}: {self.name}[{i}] = {array[i]}; it must be {allowed}")


class Sources(Param):
    """Mask sources to combine: at least ``minimum`` (1 or 2) of them, at most MAX_PARTS (in a spec,
    nested specs under ``of``)."""

    json_type = "a non-empty list of specs"

    def __init__(self, name: str, help: str, minimum: int):
        super().__init__(name, help, key="of")
        self.minimum = minimum

    def is_json(self, value: Any) -> bool:
        return isinstance(value, list) and len(value) > 0

    def check(self, value: Any, kind: str) -> list[MaskSource]:
        sources = list(value)
        if len(sources) > MAX_PARTS:
            raise MaskError(f"{kind}: {self.name} holds {len(sources)} masks; at most {MAX_PARTS} (maskc.kinds.MAX_PARTS)")
        if len(sources) < self.minimum:
            least = "one mask source" if self.minimum == 1 else "two mask sources"  # the minimums the kinds have
            raise MaskError(f"{kind}: give at least {least}, got {len(sources)}")
        for i, source in enumerate(sources):
            if not isinstance(source, MaskSource):
                raise MaskError(f"{kind}: {self.name}[{i}] is a {type(source).__name__}, not a MaskSource")
        return sources


# --- kinds ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """A registered kind: its canonical name, a one-line summary, its parameters and its function
    (the library's, arguments checked)."""

    name: str
    summary: str
    params: tuple[Param, ...]
    function: Callable[..., MaskSource]
    signature: inspect.Signature

    def default(self, param: Param) -> Any:
        """The parameter's default, or ``inspect.Parameter.empty`` when it has none."""
        return self.signature.parameters[param.name].default

    def required(self, param: Param) -> bool:
        p = self.signature.parameters[param.name]
        return p.kind is p.VAR_POSITIONAL or p.default is inspect.Parameter.empty

    def build(self, args: dict[str, Any]) -> MaskSource:
        """The mask for ``args`` (parameter name -> value), through the checked library function."""
        positional, keywords = _split(self.signature, args)
        return self.function(*positional, **keywords)


def _split(signature: inspect.Signature, args: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """``args`` by name as a call's positional and keyword arguments (``*sources`` spread out)."""
    positional: list[Any] = []
    keywords: dict[str, Any] = {}
    for name, p in signature.parameters.items():
        if name not in args:
            continue
        if p.kind is p.VAR_POSITIONAL:
            positional.extend(args[name])
        else:
            keywords[name] = args[name]
    return positional, keywords


def checked(*params: Param) -> Callable[[F], F]:
    """Decorate a function so that every call checks its arguments with ``params`` (one per
    argument, in signature order) before the function runs; a default of None stays None."""

    def decorate(function: F) -> F:
        signature = inspect.signature(function)
        if [p.name for p in params] != list(signature.parameters):
            raise TypeError(f"{function.__name__}: parameters {[p.name for p in params]} do not match its signature {list(signature.parameters)}")

        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            values = bound.arguments
            for param in params:
                if not (values[param.name] is None and signature.parameters[param.name].default is None):
                    values[param.name] = param.check(values[param.name], function.__name__)
            positional, keywords = _split(signature, values)
            return function(*positional, **keywords)

        return call  # type: ignore[return-value]

    return decorate


class Registry(Mapping[str, Kind]):
    """The kinds by canonical name; ``registry["sliding-window"]`` finds ``sliding_window``."""

    def __init__(self) -> None:
        self._kinds: dict[str, Kind] = {}

    def kind(self, *params: Param) -> Callable[[F], F]:
        """Register the decorated library function as a kind named after it, with ``params``
        (one per argument, in signature order); the function returned checks its arguments."""

        def register(function: F) -> F:
            call = checked(*params)(function)
            summary = (inspect.getdoc(function) or "").split("\n\n")[0].replace("\n", " ")
            self._kinds[function.__name__] = Kind(function.__name__, summary, params, call, inspect.signature(function))
            return call

        return register

    def lookup(self, name: Any, where: str) -> Kind:
        """The kind called ``name`` (dashes or underscores), or a MaskError that lists the known kinds."""
        if name in self:
            return self[name]
        raise MaskError(f"{where}: unknown kind {name!r}; known kinds: {', '.join(self._kinds)}")

    def __getitem__(self, name: str) -> Kind:
        if not isinstance(name, str):
            raise KeyError(name)
        return self._kinds[name.replace("-", "_")]

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)
