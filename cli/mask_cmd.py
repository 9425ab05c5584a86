"""``maskc mask KIND``: write a built-in library mask to a dense ``.npy`` file.

The kinds and their options come from the library's registry (:data:`maskc.library.KINDS`): each
parameter of a kind is an option (``--global-tokens`` for ``global_tokens``) with the registry's
help and example, and a kind's required parameters must be given. The command line adds a few
shorthands of its own: ``--globals N`` (the first N tokens global), ``--tree-nodes N`` (a generated
candidate tree, seeded by ``--seed``) and ``--parents FILE`` (a ``.npy`` or ``.json`` parent array),
and ``-n`` for a kind whose length its other options give (then it must match).

The file is filled block of rows by block of rows through a memory map, so a mask larger than
memory can be written, and it appears atomically: it is written under a temporary name in the
same directory and renamed into place only once complete.
"""

from __future__ import annotations

import inspect
import mmap
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import click
import numpy as np

from maskc import library
from maskc.cli.errors import UserError
from maskc.errors import MaskError
from maskc.kinds import MAX_PARTS, Flag, Ints, Kind, Param, Sources
from maskc.npy import open_npy
from maskc.runtime.format import atomic_path
from maskc.sources import MaskSource
from maskc.spec import read_json

BLOCK_BYTES = 32 << 20  # rows written per step: about this many mask bytes

CLI_KINDS: dict[str, Kind] = {name: kind for name, kind in library.KINDS.items() if not any(isinstance(p, Sources) for p in kind.params)}
"""The kinds a command line can give: all but those that combine other masks (a spec does that)."""


def _text(param: Param, value: Any) -> str:
    """A parameter value as the command line spells it."""
    if isinstance(param, Flag):
        return param.name if value else param.off
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


class _Options:
    """The kind-specific options given on the command line, as one kind's parameters read them.

    It remembers which options were read, so an option that the kind does not use is reported
    instead of silently ignored.
    """

    def __init__(self, kind: Kind, values: dict[str, Any], flags: dict[str, str]):
        self.kind = kind
        self.values = {name: value for name, value in values.items() if value is not None}
        self.flags = flags
        self.used: set[str] = set()

    def get(self, name: str) -> Any:
        self.used.add(name)
        return self.values.get(name)

    def given(self, *names: str) -> dict[str, Any]:
        """The named options that were given, as keyword arguments."""
        return {name: self.get(name) for name in names if self.get(name) is not None}

    def ints(self, param: Param, text: str) -> list[int]:
        try:
            return [int(part) for part in text.split(",")]
        except ValueError:
            raise UserError(f"{self.flags[param.name]} takes comma-separated integers like {_text(param, param.example)}, got {text!r}") from None

    def check_all_used(self) -> None:
        unused = [self.flags[name] for name in self.values if name not in self.used]
        if unused:
            used = ", ".join(self.flags[name] for name in self.values if name in self.used) or "nothing"
            raise UserError(f"{unused[0]} does not apply to {self.kind.name} (which used {used}); remove it")


def _global_tokens(o: _Options, param: Param, args: dict[str, Any]) -> Any:
    """``--global-tokens 0,5,9`` or ``--globals N`` (the first N tokens), not both; None if neither."""
    tokens, count = o.get("global_tokens"), o.get("globals")
    if tokens is not None and count is not None:
        raise UserError("give either --global-tokens (a list of indices) or --globals (a count of leading tokens), not both")
    if count is not None:
        if not 0 <= count <= args["n"]:
            raise UserError(f"--globals must be between 0 and n ({args['n']}), got {count}")
        return range(count)
    return None if tokens is None else o.ints(param, tokens)


def _parents(o: _Options, param: Param, args: dict[str, Any]) -> Any:
    """The tree's parent array: from ``--parents`` (a list, ``.npy`` or ``.json``) or generated
    by :func:`library.candidate_tree` from ``--tree-nodes`` (and ``--seed``)."""
    text, nodes = o.get("parents"), o.get("tree_nodes")
    if (text is None) == (nodes is None):
        example = _text(param, param.example)
        raise UserError(f"{o.kind.name} needs exactly one of --parents (e.g. --parents={example}) or --tree-nodes (e.g. --tree-nodes 64)")
    if nodes is not None:
        return library.candidate_tree(nodes, **o.given("seed"))
    if text.lower().endswith(".npy"):
        return open_npy(text)  # memory-mapped: the library bounds its length before reading it
    if text.lower().endswith(".json"):
        return read_json(Path(text), "the --parents file")
    return o.ints(param, text)


class Shorthand(NamedTuple):
    """A parameter the command line can also give another way: ``value`` reads it from the options
    (None if not given); ``metavar`` spells what the parameter's own option takes."""

    value: Callable[[_Options, Param, dict[str, Any]], Any]
    metavar: str


SHORTHANDS = {"global_tokens": Shorthand(_global_tokens, "I,J,..."), "parents": Shorthand(_parents, "I,J,...|FILE")}


def _build(o: _Options) -> MaskSource:
    """The kind's mask from the options (a required parameter missing is an error with an example)."""
    kind, args = o.kind, {}
    for param in kind.params:
        if param.name in SHORTHANDS:
            value = SHORTHANDS[param.name].value(o, param, args)
        else:
            value = o.get(param.name)
            if value is not None and isinstance(param, Ints):
                value = o.ints(param, value)
        if value is not None:
            args[param.name] = value
        elif kind.required(param):
            flag = o.flags[param.name]
            raise UserError(f"{kind.name} needs {flag}, e.g. {flag} {_text(param, param.example)}")
    source = kind.build(args)
    n = o.get("n")
    if n is not None and n != source.q_len:
        raise UserError(f"-n {n} does not match the {source.q_len} tokens given by the other options of {kind.name}; drop -n or fix them")
    o.check_all_used()
    return source


def _kind_options() -> list[click.Option]:
    """One option per parameter name of the command-line kinds, with the help of every kind using it."""
    uses: dict[str, list[tuple[Kind, Param]]] = {}
    for kind in CLI_KINDS.values():
        for param in kind.params:
            uses.setdefault(param.name, []).append((kind, param))
    return [_option(name, used) for name, used in uses.items()]


def _option(name: str, used: list[tuple[Kind, Param]]) -> click.Option:
    """The option of parameter ``name``: its help says, per kind using it, what it means and its default."""
    param = used[0][1]
    groups: dict[str, list[str]] = {}
    for kind, p in used:
        default = kind.default(p)
        shown = "" if default in (inspect.Parameter.empty, None, ()) else f" (default {_text(p, default)})"
        groups.setdefault(p.help, []).append(kind.name + shown)
    described = "; ".join(f"{', '.join(kinds)}: {text}" for text, kinds in groups.items()) + "."
    flag = "--" + name.replace("_", "-")
    if isinstance(param, Flag):
        return click.Option([f"{flag}/--{param.off}"], default=None, help=described)
    if name == "n":
        return click.Option(["-n", flag], type=int, help=described[:-1] + "; for other kinds, checked against the length their options give.")
    if isinstance(param, Ints):
        return click.Option([flag], metavar=SHORTHANDS[name].metavar if name in SHORTHANDS else "I,J,...", help=described)
    return click.Option([flag], type=int, help=described)


def _kinds_with(name: str) -> str:
    return ", ".join(kind.name for kind in CLI_KINDS.values() if any(p.name == name for p in kind.params))


class _KindName(click.ParamType):
    """A command-line kind, by its name with underscores or dashes."""

    name = "kind"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Kind:
        if isinstance(value, Kind):
            return value
        name = str(value).replace("-", "_")
        if name in library.KINDS and name not in CLI_KINDS:
            self.fail(f"{name} combines other masks; write it as a JSON spec and compile that", param, ctx)
        if name not in CLI_KINDS:
            self.fail(f"{value!r} is not a kind; one of {', '.join(CLI_KINDS)}", param, ctx)
        return CLI_KINDS[name]


def _file_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape written to the file: leading dimensions of 1 dropped, down to ``[Nq, Nk]``."""
    dims = list(shape)
    while len(dims) > 2 and dims[0] == 1:
        dims.pop(0)
    return tuple(dims)


class _PagedWriter:
    """The ``out`` that :meth:`MaskSource.write_into` fills: writes each block of rows into the
    memory-mapped file, counts its visible pairs, and lets this process drop the written pages,
    so the resident size stays one block of rows even for a file larger than memory."""

    def __init__(self, memmap: np.memmap, shape: tuple[int, ...]):
        self.memmap, self.view = memmap, memmap.reshape(shape)
        self.visible = 0

    def __setitem__(self, key: Any, block: np.ndarray) -> None:
        self.view[key] = block
        self.visible += int(np.count_nonzero(block))
        if hasattr(mmap, "MADV_DONTNEED"):
            self.memmap._mmap.madvise(mmap.MADV_DONTNEED)  # shared file pages: written back, not lost


def _write_npy(source: MaskSource, path: Path) -> int:
    """Write ``source`` densely to ``path`` atomically; return its number of visible pairs."""
    try:
        with atomic_path(path) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=bool, shape=_file_shape(source.shape))
            writer = _PagedWriter(out, source.shape)
            source.write_into(writer, max(1, BLOCK_BYTES // source.kv_len))
            out.flush()
            visible = writer.visible
            del out, writer
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    return visible


@click.command(
    "mask",
    params=_kind_options(),
    help=f"""Write the library mask KIND as a dense boolean .npy file (True = may attend).

    KIND is one of: {', '.join(CLI_KINDS)} (a dash works too: sliding-window).

    Example: maskc mask sliding_window -n 8192 --window 256 -o swa.npy""",
)
@click.argument("kind", type=_KindName(), metavar="KIND")
@click.option("--globals", type=int, help=f"{_kinds_with('global_tokens')}: make the first N tokens global (instead of --global-tokens).")
@click.option("--tree-nodes", type=int, help=f"{_kinds_with('parents')}: generate a candidate tree of this many nodes, seeded by --seed (instead of --parents).")
@click.option("--heads", type=click.IntRange(1, MAX_PARTS), default=1, show_default=True, help="Repeat the mask on this many heads ([H, N, N] file).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The .npy file to write.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
@click.pass_context
def mask(ctx: click.Context, kind: Kind, heads: int, output: Path, quiet: bool, **options: Any) -> None:
    if output.suffix.lower() != ".npy":
        raise UserError(f"--output must be a .npy file, got {output}; e.g. -o {output.with_suffix('.npy').name}")
    flags = {p.name: "/".join(p.opts[:1] + p.secondary_opts) for p in ctx.command.params if p.name in options}
    try:
        source = _build(_Options(kind, options, flags))
        if heads > 1:
            source = library.stack([source] * heads, dim="heads")
    except MaskError as e:
        raise UserError(str(e)) from None
    visible = _write_npy(source, output)
    if not quiet:
        total = int(np.prod(source.shape))
        click.echo(f"{output}: {source.name}, shape {list(_file_shape(source.shape))}, density {visible / total:.2%} ({visible} of {total} pairs visible)")
