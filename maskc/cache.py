"""The plan cache: the same mask with the same options is compiled once, then read back.

The cache wraps the compiler's stages: the mask is analysed (read once), the entry's key is made of
the analysis' hash of the mask (of its interval vectors when it fits that form, so a spec and a dense
file of the same mask share an entry; of its bits otherwise), the compile options
(:meth:`maskc.options.CompileOptions.cache_fields`: with ``block="auto"`` the SHA-256 of the profile
the cost model decides from, so a new profile compiles afresh), the plan format version and the
compiler's revision. A miss builds the plan from that same analysis.

An entry is a file anyone with access to the directory may have written, so it is trusted by its
contents, never its name: a hit must decode to a valid plan of the mask analysed (its shape, and its
hash or, for a structured source whose bits were never read, its tiles) that is what the compiler's
choice for these options is (:func:`mismatch`). Any other entry is dropped and the mask compiled
again. The cache is an optimisation: when its
directory cannot be read or written, the compile goes on and a :class:`CacheWarning` says why.
Writes go through a temporary file and a rename, so processes that compile the same mask at once
all leave one valid file.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maskc.analysis import Analysis, analyse
from maskc.bitmaps import bitmap_arrays
from maskc.build import build, launch_orders
from maskc.choice import Choice, choose
from maskc.compiler import COMPILER_REVISION
from maskc.options import AUTO, CompileOptions
from maskc.runtime.format import DENSE_VARIANTS, LIST_ARRAYS, PLAN_VERSION, Plan, PlanError, atomic_write, decode, encode
from maskc.scan import Progress, Stages
from maskc.inputs import open_mask
from maskc.work import plan_candidate

SUFFIX = ".plan"


class CacheWarning(UserWarning):
    """The plan cache could not be written; the compile went on without it."""


class BadEntry(Exception):
    """A cache entry that cannot be used, and why."""


def default_dir() -> Path:
    """``$MASKC_CACHE_DIR``, else ``~/.cache/maskc/plans``."""
    env = os.environ.get("MASKC_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "maskc" / "plans"


def cache_key(mask_hash: str, hash_of: str, options: CompileOptions) -> str:
    """The entry name for a mask hash (of its ``hash_of``) compiled with ``options``, under this
    plan format version and compiler revision."""
    blob = json.dumps({"mask": mask_hash, "hash_of": hash_of, "format": PLAN_VERSION, "compiler": COMPILER_REVISION, **options.cache_fields()},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Entry:
    key: str
    path: Path
    bytes: int
    mtime: float


@dataclass(frozen=True)
class Compiled:
    """A compiled plan, its file's bytes (encoded and validated once) and whether it came from the cache."""

    plan: Plan
    data: bytes
    hit: bool


class PlanCache:
    """A directory of compiled plans keyed by :func:`cache_key`."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory).expanduser() if directory is not None else default_dir()

    def path(self, key: str) -> Path:
        return self.directory / f"{key}{SUFFIX}"

    def compile(self, mask: Any, progress: Progress | None = None, **options: Any) -> tuple[Plan, bool]:
        """The plan for ``mask`` and whether it came from the cache; compiled and stored on a miss.
        ``options`` are :func:`maskc.compile`'s keyword arguments."""
        options = CompileOptions.of(**options)
        compiled = self.compile_with(mask, options, progress)
        return compiled.plan, compiled.hit

    def compile_with(self, mask: Any, options: CompileOptions, progress: Progress | None = None) -> Compiled:
        """:meth:`compile` with its options parsed already; the plan comes with its file's bytes."""
        stages = Stages(progress, options.passes)
        analysis = analyse(open_mask(mask), options, stages)
        choice = choose(analysis)
        key = cache_key(*analysis.mask_hash(), options)
        cached = self._hit(key, analysis, choice)
        if cached is None:
            plan = build(analysis, choice, stages.stage(stages.n - 1))
            cached = Compiled(plan, encode(plan), False)
            self._store(key, cached.data)
        stages.finish()
        return cached

    def read(self, key: str) -> tuple[Plan, bytes]:
        """An entry's plan and bytes; BadEntry saying why it cannot be used (FileNotFoundError when
        there is none)."""
        path = self.path(key)
        if not path.exists():
            raise FileNotFoundError(path)
        if not path.is_file():
            raise BadEntry("not a regular file")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise
        except OSError as e:
            raise BadEntry(f"unreadable: {e.strerror or e}") from None
        try:
            return decode(data), data
        except PlanError as e:
            raise BadEntry(str(e)) from None

    def _hit(self, key: str, analysis: Analysis, choice: Choice) -> Compiled | None:
        """The entry under ``key`` if it is the plan of the analysed mask for ``choice``; any other
        entry is dropped."""
        try:
            plan, data = self.read(key)
        except FileNotFoundError:
            return None
        except BadEntry:
            plan = None
        if plan is not None and mismatch(plan, analysis, choice) is None:
            return Compiled(plan, data, True)
        try:
            self.path(key).unlink()
        except OSError:  # a directory, or gone already: the write that follows says so if it matters
            pass
        return None

    def _store(self, key: str, data: bytes) -> None:
        """Write an entry; when the directory cannot take it, warn and go on."""
        path = self.path(key)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data)
        except OSError as e:
            warnings.warn(f"plan cache: cannot write {path}: {e.strerror or e}; the plan was not cached", CacheWarning, stacklevel=3)

    def entries(self) -> list[Entry]:
        if not self.directory.is_dir():
            return []
        found = []
        for p in sorted(self.directory.glob(f"*{SUFFIX}")):
            try:
                st = p.stat()
            except OSError:  # removed by a concurrent clear, or a dangling link
                continue
            found.append(Entry(p.name[: -len(SUFFIX)], p, st.st_size, st.st_mtime))
        return found

    def clear(self) -> int:
        """Remove every entry (and stray temporary files); return how many were removed. What cannot
        be removed (a directory named like an entry) is left."""
        removed = 0
        for e in self.entries():
            try:
                e.path.unlink()
                removed += 1
            except OSError:  # gone already, or a directory
                continue
        if self.directory.is_dir():
            for tmp in self.directory.glob(f".*{SUFFIX}.*.tmp"):
                tmp.unlink(missing_ok=True)
        return removed


def mismatch(plan: Plan, analysis: Analysis, choice: Choice) -> str | None:
    """Why ``plan`` is not the plan :func:`maskc.build.build` makes of the analysed mask for
    ``choice``, or None: its shape, candidate, predictions record and launch orders must be those,
    and its mask the analysed one."""
    shape = (plan.batch, plan.heads, plan.q_len, plan.kv_len)
    if shape != analysis.shape:
        return f"it is a plan of a {list(shape)} mask, not {list(analysis.shape)}"
    if plan_candidate(plan) != choice.candidate:
        return f"it is a {plan_candidate(plan).name} plan, not {choice.candidate.name}"
    if plan.predictions != choice.predictions:
        return "its predictions were made for other options"
    if analysis.options.schedule == "lpt" and plan.variant not in DENSE_VARIANTS:
        orders = launch_orders(plan.arrays, plan.slices, plan.tiles_m, plan.tiles_n)
    else:
        orders = {name: np.zeros(0, dtype="<i4") for name in ("row_order", "col_order")}
    if not all(np.array_equal(plan.arrays[name], order) for name, order in orders.items()):
        return "its launch orders are not the ones asked for"
    if not _same_mask(plan, analysis):
        return "it is a plan of another mask"
    return None


def _same_mask(plan: Plan, analysis: Analysis) -> bool:
    """Whether the plan stands for the analysed mask: by the hash it records, or — a bit-hashed plan
    of a structured source whose bits the analysis never read — by its tiles, which must be those
    the mask's interval vectors make."""
    if plan.hash_of == "intervals":
        return analysis.vectors is not None and plan.mask_sha256 == analysis.intervals_sha256()
    if analysis.bits_sha256 is not None:
        return plan.mask_sha256 == analysis.bits_sha256
    if analysis.vectors is None or plan.variant != "block_sparse" or plan.reordered:
        return False
    lists = analysis.lists((plan.block_m, plan.block_n))
    expected = {**lists, **bitmap_arrays(lists, analysis.vectors, plan.q_len, plan.block_m, plan.block_n)}
    return all(np.array_equal(plan.arrays[name], expected[name]) for name in (*LIST_ARRAYS, "bitmaps"))


def compile_cached(
    mask: Any,
    block: Any = AUTO,
    cache_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> Plan:
    """Like :func:`maskc.compile` (same keyword options), but served from the plan cache when this
    mask was compiled before with the same options."""
    return PlanCache(cache_dir).compile(mask, block=block, progress=progress, **options)[0]
