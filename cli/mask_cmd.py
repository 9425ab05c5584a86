"""``maskc mask KIND``: write a built-in library mask to a dense ``.npy`` file.

The file is filled block of rows by block of rows through a memory map, so a mask larger than
memory can be written, and it appears atomically: it is written under a temporary name in the
same directory and renamed into place only once complete.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from maskc import library
from maskc.cli.errors import UserError
from maskc.errors import MaskError
from maskc.sources import MaskSource

BLOCK_BYTES = 32 << 20  # rows written per step: about this many mask bytes

# example values, shown when a kind needs an option that was not given
EXAMPLES = {
    "n": "8192",
    "window": "256",
    "lengths": "300,200,500",
    "prefix": "128",
    "question": "512",
    "answers": "128,96,200",
    "prompt": "1024",
    "tree_nodes": "64",
    "buckets": "8",
    "random_blocks": "3",
}


class _Options:
    """The kind-specific options given on the command line, as one kind's builder reads them.

    It remembers which options the builder read, so an option that the kind does not use is
    reported instead of silently ignored.
    """

    def __init__(self, kind: str, values: dict[str, Any], flags: dict[str, str]):
        self.kind = kind
        self.values = {name: value for name, value in values.items() if value is not None}
        self.flags = flags
        self.used: set[str] = set()

    def get(self, name: str) -> Any:
        self.used.add(name)
        return self.values.get(name)

    def need(self, name: str) -> Any:
        value = self.get(name)
        if value is None:
            flag = self.flags[name]
            raise UserError(f"{self.kind} needs {flag}, e.g. {flag} {EXAMPLES[name]}")
        return value

    def given(self, *names: str) -> dict[str, Any]:
        """The named options that were given, as keyword arguments for the library function."""
        return {name: self.get(name) for name in names if self.get(name) is not None}

    def ints(self, name: str, text: str) -> list[int]:
        try:
            return [int(part) for part in text.split(",")]
        except ValueError:
            raise UserError(f"{self.flags[name]} takes comma-separated integers like {EXAMPLES.get(name, '0,1,2')}, got {text!r}") from None

    def check_all_used(self) -> None:
        unused = [self.flags[name] for name in self.values if name not in self.used]
        if unused:
            used = ", ".join(self.flags[name] for name in self.values if name in self.used) or "nothing"
            raise UserError(f"{unused[0]} does not apply to {self.kind} (which used {used}); remove it")


def _documents(o: _Options) -> MaskSource:
    source = library.documents(o.ints("lengths", o.need("lengths")), **o.given("causal"))
    n = o.get("n")
    if n is not None and n != source.q_len:
        raise UserError(f"-n {n} does not match --lengths, which sum to {source.q_len}; drop -n or fix the lengths")
    return source


def _global_tokens(o: _Options, n: int) -> list[int]:
    """``--global-tokens 0,5,9`` or ``--globals N`` (the first N tokens), not both; none by default."""
    tokens, count = o.get("global_tokens"), o.get("globals")
    if tokens is not None and count is not None:
        raise UserError("give either --global-tokens (a list of indices) or --globals (a count of leading tokens), not both")
    if count is not None:
        if not 0 <= count <= n:
            raise UserError(f"--globals must be between 0 and n ({n}), got {count}")
        return list(range(count))
    return [] if tokens is None else o.ints("global_tokens", tokens)


def _longformer(o: _Options) -> MaskSource:
    n = o.need("n")
    return library.longformer(n, o.need("window"), _global_tokens(o, n), **o.given("causal"))


def _bigbird(o: _Options) -> MaskSource:
    n = o.need("n")
    return library.bigbird(n, o.need("window"), _global_tokens(o, n), o.need("random_blocks"), **o.given("block", "seed"))


def _tree(o: _Options) -> Any:
    """The tree's parent array: from ``--parents`` (a list, ``.npy`` or ``.json``) or generated
    by :func:`library.candidate_tree` from ``--tree-nodes`` (and ``--seed``)."""
    text, nodes = o.get("parents"), o.get("tree_nodes")
    if (text is None) == (nodes is None):
        raise UserError(f"{o.kind} needs exactly one of --parents (e.g. --parents=-1,0,0,1) or --tree-nodes (e.g. --tree-nodes 64)")
    if nodes is not None:
        return library.candidate_tree(nodes, **o.given("seed"))
    if text.lower().endswith((".npy", ".json")):
        return _read_parents(Path(text))
    return o.ints("parents", text)


def _read_parents(path: Path) -> Any:
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        return json.loads(path.read_text())
    except OSError as e:
        raise UserError(f"cannot read the --parents file {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise UserError(f"the --parents file {path} is not a parent array: {e}") from None


BUILDERS: dict[str, Callable[[_Options], MaskSource]] = {
    "causal": lambda o: library.causal(o.need("n")),
    "full": lambda o: library.full(o.need("n"), o.get("kv_len")),
    "sliding-window": lambda o: library.sliding_window(o.need("n"), o.need("window"), **o.given("causal")),
    "documents": _documents,
    "prefix-lm": lambda o: library.prefix_lm(o.need("n"), o.need("prefix")),
    "longformer": _longformer,
    "bigbird": _bigbird,
    "shared-question": lambda o: library.shared_question(o.need("question"), o.ints("answers", o.need("answers"))),
    "token-tree": lambda o: library.token_tree(_tree(o)),
    "medusa": lambda o: library.medusa(o.need("prompt"), _tree(o)),
    "hash-buckets": lambda o: library.hash_buckets(o.need("n"), o.need("buckets"), **o.given("causal", "seed")),
}


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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=bool, shape=_file_shape(source.shape))
        writer = _PagedWriter(out, source.shape)
        source.write_into(writer, max(1, BLOCK_BYTES // source.kv_len))
        out.flush()
        visible = writer.visible
        del out, writer
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return visible


@click.command("mask")
@click.argument("kind", type=click.Choice(list(library.KINDS)), metavar="KIND")
@click.option("-n", "--n", "n", type=int, help="Sequence length (query and key tokens).")
@click.option("--kv-len", type=int, help="full: key length for cross attention (default n).")
@click.option("--window", type=int, help="sliding-window, longformer, bigbird: keys seen on each side, itself included.")
@click.option("--lengths", metavar="L1,L2,...", help="documents: the packed document lengths.")
@click.option("--prefix", type=int, help="prefix-lm: length of the bidirectional prefix.")
@click.option("--global-tokens", metavar="I,J,...", help="longformer, bigbird: indices of the global tokens.")
@click.option("--globals", type=int, help="longformer, bigbird: make the first N tokens global.")
@click.option("--random-blocks", type=int, help="bigbird: random key blocks per query block.")
@click.option("--block", type=int, help="bigbird: block size of the random blocks (default 64).")
@click.option("--seed", type=int, help="bigbird, hash-buckets, --tree-nodes: random seed (default 0).")
@click.option("--question", type=int, help="shared-question: question length.")
@click.option("--answers", metavar="L1,L2,...", help="shared-question: the answer lengths.")
@click.option("--parents", metavar="P0,P1,...|FILE", help="token-tree, medusa: parent array (-1 = root), inline or a .npy/.json file.")
@click.option("--prompt", type=int, help="medusa: prompt length.")
@click.option("--tree-nodes", type=int, help="token-tree, medusa: generate a candidate tree of this many nodes instead of --parents.")
@click.option("--buckets", type=int, help="hash-buckets: number of buckets.")
@click.option("--causal/--bidirectional", default=None, help="sliding-window, documents, longformer, hash-buckets: override the kind's default.")
@click.option("--heads", type=click.IntRange(min=1), default=1, show_default=True, help="Repeat the mask on this many heads ([H, N, N] file).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The .npy file to write.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
@click.pass_context
def mask(ctx: click.Context, kind: str, heads: int, output: Path, quiet: bool, **options: Any) -> None:
    """Write the library mask KIND as a dense boolean .npy file (True = may attend).

    KIND is one of: causal, full, sliding-window, documents, prefix-lm, longformer, bigbird,
    shared-question, token-tree, medusa, hash-buckets.

    Example: maskc mask sliding-window -n 8192 --window 256 -o swa.npy
    """
    if output.suffix.lower() != ".npy":
        raise UserError(f"--output must be a .npy file, got {output}; e.g. -o {output.with_suffix('.npy').name}")
    flags = {p.name: "/".join(p.opts[:1] + p.secondary_opts) for p in ctx.command.params if p.name in options}
    opts = _Options(kind, options, flags)
    try:
        source = BUILDERS[kind](opts)
        opts.check_all_used()
        if heads > 1:
            source = library.stack([source] * heads, dim="heads")
    except MaskError as e:
        raise UserError(str(e)) from None
    visible = _write_npy(source, output)
    if not quiet:
        total = int(np.prod(source.shape))
        click.echo(f"{output}: {source.name}, shape {list(_file_shape(source.shape))}, density {visible / total:.2%} ({visible} of {total} pairs visible)")
