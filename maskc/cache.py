"""The plan cache: the same mask with the same options is compiled once, then read back.

Entries are plan files named by a key over the mask's canonical hash (of its interval vectors when
it fits that form, so a spec and a dense file of the same mask share an entry; of its bits
otherwise), the compile options, the plan format version and — when the cost model decides
(``block="auto"``) — the SHA-256 of the profile it decides from, so a new profile compiles afresh;
and the compiler's revision, so a compiler that builds plans differently does too.
Writes go through a temporary file and a rename, so processes that compile the same mask at once
all leave one valid file; an entry that fails to load is dropped and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskc import cost
from maskc.compiler import COMPILER_REVISION, compile
from maskc.options import AUTO, BACKWARDS, REORDERS, SCHEDULES, check_option, check_variant, parse_block_option
from maskc.scan import Progress, fingerprint
from maskc.runtime.format import VERSION, Plan, PlanError, load
from maskc.sources import open_mask

SUFFIX = ".plan"


def default_dir() -> Path:
    """``$MASKC_CACHE_DIR``, else ``~/.cache/maskc/plans``."""
    env = os.environ.get("MASKC_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "maskc" / "plans"


def cache_key(
    mask_hash: str, block: tuple[int, int] | str, variant: str = "auto", hash_of: str = "bits", options: dict[str, Any] | None = None
) -> str:
    """The entry name for a mask hash (of its ``hash_of``) and its compile options (``block``,
    ``variant`` and any others, e.g. reorder, schedule, profile hash, workload), under this plan
    format version and compiler revision."""
    blob = json.dumps(
        {"mask": mask_hash, "hash_of": hash_of, "block": block if isinstance(block, str) else list(block), "variant": variant,
         "format": VERSION, "compiler": COMPILER_REVISION, **(options or {})},
        sort_keys=True,
    )
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

    def compile(
        self,
        mask: Any,
        block: Any = AUTO,
        progress: Progress | None = None,
        variant: str = "auto",
        reorder: str = "auto",
        schedule: str = "lpt",
        profile: Any = None,
        workload: cost.Workload | None = None,
        objective: str = "fwd_bwd",
        backward: str = "auto",
    ) -> tuple[Plan, bool]:
        """The plan for ``mask`` and whether it came from the cache; compiled and stored on a miss.
        The arguments are :func:`maskc.compile`'s."""
        source = open_mask(mask)
        block = parse_block_option(block)
        variant = check_variant(variant)
        options: dict[str, Any] = {"reorder": check_option(reorder, REORDERS, "reorder"), "schedule": check_option(schedule, SCHEDULES, "schedule"),
                                   "backward": check_option(backward, BACKWARDS, "backward")}
        if block == AUTO:
            model = cost.resolve_profile(profile)
            workload = workload or cost.Workload()
            options.update(profile=model.sha256 if model else None, workload=workload.as_dict(), objective=objective)
            profile = model if model is not None else cost.NO_PROFILE
        mask_hash, hash_of = fingerprint(source, variant)
        key = cache_key(mask_hash, block, variant, hash_of, options)
        plan = self.get(key)
        if plan is not None:
            return plan, True
        plan = compile(source, block=block, progress=progress, variant=variant, reorder=reorder, schedule=schedule,
                       profile=profile, workload=workload, objective=objective, backward=backward)
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
    block: Any = AUTO,
    cache_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> Plan:
    """Like :func:`maskc.compile` (same keyword options), but served from the plan cache when this
    mask was compiled before with the same options."""
    return PlanCache(cache_dir).compile(mask, block=block, progress=progress, **options)[0]
