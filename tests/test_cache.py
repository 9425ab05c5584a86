"""The plan cache: hits, misses, entries that are not what their name says, unwritable directories,
concurrent writers."""

from __future__ import annotations

import errno
import hashlib
import os
import struct
import subprocess
import sys
import textwrap
import warnings

import msgpack
import pytest

import maskc
import maskc.cache
from maskc import library
from maskc.cache import BadEntry, CacheWarning, PlanCache, cache_key
from maskc.options import CompileOptions
from maskc.runtime.format import MAGIC, VERSION


def test_hit_returns_the_same_plan(tmp_path, rng):
    mask = rng.random((100, 100)) < 0.5
    cache = PlanCache(tmp_path)
    first, hit1 = cache.compile(mask)
    second, hit2 = cache.compile(mask.copy())
    assert (hit1, hit2) == (False, True)
    assert first.to_bytes() == second.to_bytes() == maskc.compile(mask).to_bytes()
    assert len(cache.entries()) == 1


def test_a_miss_encodes_once_and_a_hit_gives_the_stored_bytes(tmp_path, rng):
    mask = rng.random((100, 100)) < 0.5
    cache = PlanCache(tmp_path)
    options = CompileOptions.of(block=64)
    missed, hit = cache.compile_with(mask, options), cache.compile_with(mask, options)
    (entry,) = cache.entries()
    assert not missed.hit and hit.hit
    assert missed.data == hit.data == entry.path.read_bytes() == maskc.compile(mask, block=64).to_bytes()


def test_key_depends_on_mask_and_options(tmp_path, rng):
    mask = rng.random((100, 100)) < 0.5
    other = mask.copy()
    other[3, 4] = not other[3, 4]
    cache = PlanCache(tmp_path)
    cache.compile(mask)
    cache.compile(other)
    cache.compile(mask, block=(64, 64))
    assert len(cache.entries()) == 3
    assert cache_key("0" * 64, "bits", CompileOptions.of(block=64)) != cache_key("0" * 64, "bits", CompileOptions.of(block=(64, 128)))
    assert cache_key("0" * 64, "bits", CompileOptions.of(block=64)) != cache_key("0" * 64, "intervals", CompileOptions.of(block=64))


def test_a_new_compiler_revision_compiles_afresh(tmp_path, rng, monkeypatch):
    mask = rng.random((100, 100)) < 0.5
    cache = PlanCache(tmp_path)
    assert cache.compile(mask)[1] is False and cache.compile(mask)[1] is True
    monkeypatch.setattr(maskc.cache, "COMPILER_REVISION", maskc.cache.COMPILER_REVISION + 1)
    assert cache.compile(mask)[1] is False
    assert len(cache.entries()) == 2


def only_entry(cache: PlanCache):
    (entry,) = cache.entries()
    return entry


def test_corrupted_entry_is_rebuilt(tmp_path, rng):
    mask = rng.random((64, 64)) < 0.5
    cache = PlanCache(tmp_path)
    cache.compile(mask)
    entry = only_entry(cache)
    entry.path.write_bytes(entry.path.read_bytes()[:-5])
    with pytest.raises(BadEntry, match="checksum"):
        cache.read(entry.key)
    plan, hit = cache.compile(mask)
    assert not hit and plan.to_bytes() == maskc.compile(mask).to_bytes() == entry.path.read_bytes()


@pytest.mark.parametrize("kind", ["random", "spec"])
def test_a_plan_of_another_mask_under_the_key_is_not_served(tmp_path, rng, kind):
    """A valid plan of another mask of the same shape, put in the place of an entry, is dropped;
    for a spec (whose bits are never read) the entry's tiles give it away."""
    if kind == "random":
        mask, other = rng.random((100, 100)) < 0.5, rng.random((100, 100)) < 0.5
    else:
        mask, other = {"kind": "prefix_lm", "n": 300, "prefix": 40}, {"kind": "prefix_lm", "n": 300, "prefix": 41}
    cache = PlanCache(tmp_path)
    cache.compile(mask, block=64, variant="block_sparse")
    entry = only_entry(cache)
    entry.path.write_bytes(maskc.compile(other, block=64, variant="block_sparse").to_bytes())
    plan, hit = cache.compile(mask, block=64, variant="block_sparse")
    assert not hit and plan.to_bytes() == maskc.compile(mask, block=64, variant="block_sparse").to_bytes() == entry.path.read_bytes()


def test_a_plan_of_the_mask_with_other_options_under_the_key_is_not_served(tmp_path):
    mask = library.documents([100, 60, 96])
    cache = PlanCache(tmp_path)
    cache.compile(mask, block=64)
    entry = only_entry(cache)
    for other in (dict(block=32), dict(block=64, schedule="none"), dict(block=64, backward="pieces"), dict(block=64, reorder="rcm")):
        entry.path.write_bytes(maskc.compile(mask, **other).to_bytes())
        assert cache.compile(mask, block=64)[1] is False, other
    assert cache.compile(mask, block=64)[1] is True


def small_plan_that_decodes_huge() -> bytes:
    """A dense plan file of a few hundred bytes whose reader would derive lists for a million slices."""
    data = maskc.compile(library.causal(256), block=128, variant="dense_causal").to_bytes()
    preamble = struct.Struct("<8sI32s")
    body = msgpack.unpackb(data[preamble.size:], raw=False)
    n = 1 << 20
    body["meta"].update(batch=1000, heads=1000, q_len=n, kv_len=n, visible_pairs=10**6 * n * (n + 1) // 2)
    body["arrays"]["intervals"]["shape"] = [0, 4, n]
    payload = msgpack.packb(body, use_bin_type=True)
    return preamble.pack(MAGIC, VERSION, hashlib.sha256(payload).digest()) + payload


@pytest.mark.parametrize("bad", ["garbage", "empty", "bomb", "directory", "device"])
def test_an_entry_that_is_not_a_plan_is_dropped_and_compiled_again(tmp_path, bad):
    mask = library.causal(200)
    cache = PlanCache(tmp_path)
    cache.compile(mask, block=64)
    path = only_entry(cache).path
    path.unlink()
    if bad == "directory":
        path.mkdir()
    elif bad == "device":
        path.symlink_to("/dev/zero")
    else:
        path.write_bytes({"garbage": b"\x00" * 100, "empty": b"", "bomb": small_plan_that_decodes_huge()}[bad])
    with pytest.raises(BadEntry):
        cache.read(only_entry(cache).key)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan, hit = cache.compile(mask, block=64)
    assert not hit and plan.to_bytes() == maskc.compile(mask, block=64).to_bytes()
    if bad == "directory":  # never removed: the plan is not cached, and the compile says so once
        assert path.is_dir() and [str(w.message) for w in caught] == [
            f"plan cache: cannot write {path}: Is a directory; the plan was not cached"]
    else:
        assert caught == [] and path.read_bytes() == plan.to_bytes()


def test_an_unwritable_cache_directory_warns_once_and_compiles(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = PlanCache(blocker / "cache")
    with pytest.warns(CacheWarning, match=f"cannot write {blocker / 'cache'}/[0-9a-f]{{64}}.plan: Not a directory; the plan was not cached") as caught:
        plan, hit = cache.compile(library.causal(100), block=32)
    assert len(caught) == 1 and not hit and plan.to_bytes() == maskc.compile(library.causal(100), block=32).to_bytes()
    assert cache.entries() == []


def test_a_full_disk_names_the_entry(tmp_path, monkeypatch):
    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(maskc.cache, "atomic_write", full)
    cache = PlanCache(tmp_path)
    with pytest.warns(CacheWarning, match="cannot write .*/[0-9a-f]{64}.plan: No space left on device"):
        assert cache.compile(library.causal(100), block=32)[1] is False


def test_clear_leaves_what_it_cannot_remove(tmp_path, rng):
    cache = PlanCache(tmp_path)
    cache.compile(rng.random((40, 40)) < 0.5)
    (tmp_path / f"{'0' * 64}.plan").mkdir()
    assert cache.clear() == 1
    assert [e.key for e in cache.entries()] == ["0" * 64]


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
    entry = only_entry(cache)
    assert cache.read(entry.key)[0].mask_sha256 in hashes
    assert not list(tmp_path.glob(".*tmp"))
