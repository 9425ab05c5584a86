"""The plan cache: hits, misses, corrupted entries, concurrent writers."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np

import maskc
import maskc.cache
from maskc.cache import PlanCache, cache_key


def test_hit_returns_the_same_plan(tmp_path, rng):
    mask = rng.random((100, 100)) < 0.5
    cache = PlanCache(tmp_path)
    first, hit1 = cache.compile(mask)
    second, hit2 = cache.compile(mask.copy())
    assert (hit1, hit2) == (False, True)
    assert first.to_bytes() == second.to_bytes() == maskc.compile(mask).to_bytes()
    assert len(cache.entries()) == 1


def test_key_depends_on_mask_and_options(tmp_path, rng):
    mask = rng.random((100, 100)) < 0.5
    other = mask.copy()
    other[3, 4] = not other[3, 4]
    cache = PlanCache(tmp_path)
    cache.compile(mask)
    cache.compile(other)
    cache.compile(mask, block=(64, 64))
    assert len(cache.entries()) == 3
    assert cache_key("0" * 64, (64, 64)) != cache_key("0" * 64, (64, 128))


def test_a_new_compiler_revision_compiles_afresh(tmp_path, rng, monkeypatch):
    mask = rng.random((100, 100)) < 0.5
    cache = PlanCache(tmp_path)
    assert cache.compile(mask)[1] is False and cache.compile(mask)[1] is True
    monkeypatch.setattr(maskc.cache, "COMPILER_REVISION", maskc.cache.COMPILER_REVISION + 1)
    assert cache.compile(mask)[1] is False
    assert len(cache.entries()) == 2


def test_corrupted_entry_is_rebuilt(tmp_path, rng):
    mask = rng.random((64, 64)) < 0.5
    cache = PlanCache(tmp_path)
    cache.compile(mask)
    (entry,) = cache.entries()
    entry.path.write_bytes(entry.path.read_bytes()[:-5])
    plan, hit = cache.compile(mask)
    assert not hit and plan.to_bytes() == maskc.compile(mask).to_bytes()


def test_environment_variable_and_clear(tmp_path, monkeypatch, rng):
    monkeypatch.setenv("MASKC_CACHE_DIR", str(tmp_path / "c"))
    maskc.compile_cached(rng.random((40, 40)) < 0.5)
    cache = PlanCache()
    assert cache.directory == tmp_path / "c" and len(cache.entries()) == 1
    assert cache.clear() == 1 and cache.entries() == []


def test_concurrent_processes_leave_one_valid_entry(tmp_path):
    script = textwrap.dedent(
        f"""
        import numpy as np, maskc
        mask = np.random.default_rng(7).random((2, 600, 600)) < 0.3
        plan = maskc.compile_cached(mask, cache_dir={str(tmp_path)!r})
        print(plan.mask_sha256)
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(4)]
    hashes = {p.communicate()[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs) and len(hashes) == 1
    cache = PlanCache(tmp_path)
    (entry,) = cache.entries()
    assert cache.get(entry.key) is not None
    assert not list(tmp_path.glob(".*tmp"))
