"""The plan cache: the same mask with the same options is compiled once, then read back.

Entries are plan files named by a key over the mask's canonical hash (of its interval vectors when
it fits that form, so a spec and a dense file of the same mask share an entry; of its bits
otherwise), the compile options and the plan format version. Writes go through a temporary file and a rename, so processes that compile
the same mask at once all leave one valid file; an entry that fails to load is dropped and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskc.compiler import Progress, check_variant, compile, fingerprint, parse_block
from maskc.runtime.format import VERSION, Plan, PlanError, load
from maskc.sources import open_mask

SUFFIX = ".plan"


def default_dir() -> Path:
    """``$MASKC_CACHE_DIR``, else ``~/.cache/maskc/plans``."""
    env = os.environ.get("MASKC_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "maskc" / "plans"


def cache_key(mask_hash: str, block: tuple[int, int], variant: str = "auto", hash_of: str = "bits") -> str:
    """The entry name for a mask hash (of its ``hash_of``) and its compile options, under this plan
    format version."""
    blob = json.dumps({"mask": mask_hash, "hash_of": hash_of, "block": list(block), "variant": variant, "format": VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Entry:
    key: str
    path: Path
    bytes: int
    mtime: float


class PlanCache:
    """A directory of compiled plans keyed by :func:`cache_key`."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory).expanduser() if directory is not None else default_dir()

    def path(self, key: str) -> Path:
        return self.directory / f"{key}{SUFFIX}"

    def get(self, key: str) -> Plan | None:
        """The cached plan, or None when absent; a corrupted entry is removed and reported absent."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return load(path)
        except PlanError:
            path.unlink(missing_ok=True)
            return None

    def put(self, key: str, plan: Plan) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        plan.save(path)
        return path

    def compile(self, mask: Any, block: Any = (128, 128), progress: Progress | None = None, variant: str = "auto") -> tuple[Plan, bool]:
        """The plan for ``mask`` and whether it came from the cache; compiled and stored on a miss."""
        source = open_mask(mask)
        bm_bn = parse_block(block)
        variant = check_variant(variant)
        mask_hash, hash_of = fingerprint(source, variant)
        key = cache_key(mask_hash, bm_bn, variant, hash_of)
        plan = self.get(key)
        if plan is not None:
            return plan, True
        plan = compile(source, block=bm_bn, progress=progress, variant=variant)
        self.put(key, plan)
        return plan, False

    def entries(self) -> list[Entry]:
        if not self.directory.is_dir():
            return []
        found = []
        for p in sorted(self.directory.glob(f"*{SUFFIX}")):
            try:
                st = p.stat()
            except FileNotFoundError:  # removed by a concurrent clear
                continue
            found.append(Entry(p.name[: -len(SUFFIX)], p, st.st_size, st.st_mtime))
        return found

    def clear(self) -> int:
        """Remove every entry (and stray temporary files); return how many plans were removed."""
        removed = 0
        for e in self.entries():
            e.path.unlink(missing_ok=True)
            removed += 1
        if self.directory.is_dir():
            for tmp in self.directory.glob(f".*{SUFFIX}.*.tmp"):
                tmp.unlink(missing_ok=True)
        return removed


def compile_cached(
    mask: Any,
    block: Any = (128, 128),
    cache_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    variant: str = "auto",
) -> Plan:
    """Like :func:`maskc.compile`, but served from the plan cache when this mask was compiled before."""
    return PlanCache(cache_dir).compile(mask, block=block, progress=progress, variant=variant)[0]
