"""``maskc calibrate``: measure the cost model's constants on a device and write its profile.

For each tile kernel (block-sparse; interval too when the backend runs it), tile size, head dim and
dtype, it times synthetic plans whose every query-tile row (or key-tile column) holds a chosen
number of full and partial tiles, forward and backward apart (the backward alone:
``torch.autograd.grad(out, ..., retain_graph=True)`` on a saved forward), through the same
``LoadedPlan.attention`` a training step calls. The plans vary the tiles per list, the number of
lists and heads, and their balance (one heavy list among light ones, a few heavy lists on an idle
GPU), so a least-squares fit (each error relative to the time plus a noise floor) separates the
launch cost, the per-program cost, the full-tile and partial-tile costs and the concurrency
(:func:`maskc.cost.fit_kernel`). Library masks (causal, windows, documents, prefix-LM, Longformer,
at lengths other than the benchmark's) add the loads of real masks, whose key tiles many query rows
share. Every measurement is kept in the profile next to the constants fitted to it (:func:`refit`
fits them again). It also times reordered plans of scattered masks (hash buckets, a permuted band,
a token tree) against the same lists run without their permutation, whose ratio is the reordering
factor of each pass, SDPA on all-true and causal masks (through dense plans), fitted as ``launch +
unit · pairs``, and the backward of plans that run it through their dense pieces (prefix-LM,
shared-question masks and equal documents), fitted as a cost per piece plus one per causal and per
full pair. ``parts`` measures only some of the four (``--only``; ``--merge`` keeps the rest of a
profile), and ``passes`` only the forward or backward of the tile kernels (``--passes``: after a
change to one of them, the other pass's fits stay as they were measured).

The synthetic masks are built from column intervals — each key column visible on one run of query
rows — so an interval plan needs no row of them, and the block-sparse plan is converted from it
tile by tile: calibration never materialises an ``N × N`` mask.

torch is imported inside the functions only. On a CPU (``--device cpu --quick``) it runs the
reference backend at tiny sizes in seconds: the numbers mean nothing, the pipeline is exercised,
and the profile records ``"kind": "cpu"`` so it is never taken for a GPU's.
"""

from __future__ import annotations

import datetime
import functools
import json
import platform
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

import maskc
from maskc import cost
from maskc.compiler import bitmap_plan
from maskc.compiler import compile as compile_mask
from maskc.errors import MaskError
from maskc.runtime.format import Plan, pieces_take
from maskc.runtime.format import LTE, LTS, UTE, UTS
from maskc.sources import IntervalSource

TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
PARTS = ("kernels", "reorder", "sdpa", "pieces")
REORDER_MASKS = ("hash_buckets", "permuted_band", "token_tree")  # maskc.bench's scattered masks


@dataclass
class CalibrateConfig:
    """What to measure. Defaults are the full GPU run."""

    device: str = "cuda"
    quick: bool = False
    dtypes: tuple[str, ...] = ("bf16", "fp16")
    head_dims: tuple[int, ...] = (64, 128)
    blocks: tuple[int, ...] = (64, 128)
    kernels: tuple[str, ...] | None = None  # None: block_sparse, and intervals where the backend runs it
    backend: str = "auto"
    parts: tuple[str, ...] = PARTS  # what to measure: tile kernels, reordering factors, dense SDPA, dense pieces
    passes: tuple[str, ...] = cost.PASSES  # the tile kernels' passes to measure
    warmup_ms: float = 25.0
    rep_ms: float = 100.0

    @classmethod
    def for_device(cls, device: str, quick: bool) -> "CalibrateConfig":
        """The defaults for a device: the full set on a GPU (``quick``: bf16, head dim 128, shorter
        timings), and a float32, head-dim-32 pipeline check of the reference backend on a CPU."""
        if device.startswith("cpu"):
            return cls(device=device, quick=True, dtypes=("fp32",), head_dims=(32,), backend="reference", warmup_ms=1.0, rep_ms=5.0)
        if quick:
            return cls(device=device, quick=True, dtypes=("bf16",), head_dims=(128,), warmup_ms=10.0, rep_ms=50.0)
        return cls(device=device)


@dataclass(frozen=True)
class Experiment:
    """One plan to time with ``heads`` heads: either synthetic, per list its full and partial tile
    counts, the lists being query-tile rows (``layout="rows"``: each row owns its key tiles) or
    key-tile columns (``layout="cols"``: each key tile is seen by its own run of query-tile rows);
    or a library mask (``layout="mask"``, ``spec`` its JSON spec), whose key tiles are shared by
    many rows as in real masks; or one of ``maskc bench``'s masks (``layout="bench"``, ``spec``
    ``{"name", "n"}``) where its spec would be long (a random token tree's parent array)."""

    heads: int
    full: tuple[int, ...] = ()
    partial: tuple[int, ...] = ()
    layout: str = "rows"
    spec: str | None = None

    @classmethod
    def of_mask(cls, heads: int, **spec: Any) -> "Experiment":
        return cls(heads, layout="mask", spec=json.dumps(spec, sort_keys=True))

    @classmethod
    def of_bench(cls, heads: int, name: str, n: int) -> "Experiment":
        return cls(heads, layout="bench", spec=json.dumps({"name": name, "n": n}, sort_keys=True))


def experiments(quick: bool, cpu: bool) -> list[Experiment]:
    """The plans timed per kernel configuration: balanced loads of full, partial and mixed tiles
    (per-tile costs), the same tiles over more or fewer lists (per-program cost), a few heavy lists
    on an idle device and one heavy list among light ones (concurrency), column-heavy plans (the
    dK/dV pass), a single tile (launch), and library masks at lengths and parameters other than
    the benchmark's, whose key tiles many rows share (causal, windows, documents, prefix-LM,
    Longformer, short bidirectional documents, a token tree)."""
    if cpu:
        rows, heads, k = 2, 1, (1, 2, 4)
        return [
            Experiment(heads, (k[0],) * rows, (0,) * rows), Experiment(heads, (k[2],) * rows, (0,) * rows),
            Experiment(heads, (0,) * rows, (k[1],) * rows), Experiment(heads, (k[1],) * rows, (k[1],) * rows),
            Experiment(1, (1,), (0,)), Experiment(2, (k[2], 1), (0, 0)), Experiment(heads, (1,) * 4, (0,) * 4),
            Experiment(heads, (k[1],) * rows, (0,) * rows, "cols"), Experiment(heads, (0,) * rows, (k[1],) * rows, "cols"),
            Experiment.of_mask(heads, kind="causal", n=256),
        ]
    rows, heads = (16, 8) if quick else (64, 16)
    heavy = 32 if quick else 128
    out = [
        *(Experiment(heads, (f,) * rows, (p,) * rows) for f, p in ((1, 0), (4, 0), (16, 0), (0, 1), (0, 4), (0, 16), (4, 4))),
        Experiment(heads, (1,) * (4 * rows), (0,) * (4 * rows)),  # the tiles of (4, 0) over four times the programs
        Experiment(1, (1,), (0,)),  # launch
        *(Experiment(1, (heavy,) * r, (0,) * r) for r in (1, 4)),  # a few heavy lists on an idle device
        Experiment(1, (0,) * 4, (heavy,) * 4),
        Experiment(heads, (heavy,) + (1,) * (rows - 1), (0,) * rows),  # one heavy list among light ones
        *(Experiment(heads, (k,) * rows, (0,) * rows, "cols") for k in (1, 8)),  # column-heavy: the dK/dV side
        Experiment(heads, (0,) * rows, (8,) * rows, "cols"),
    ]
    if quick:
        return out + [Experiment.of_mask(heads, kind="causal", n=4096), Experiment.of_mask(heads, kind="documents", lengths=_lengths(4096, 300)),
                      Experiment.of_mask(heads, kind="documents", lengths=_lengths(2048, 100), causal=False)]
    return out + [
        Experiment(heads, (64,) * rows, (0,) * rows), Experiment(heads, (0,) * rows, (64,) * rows),
        Experiment(4, (heavy,) * 16, (0,) * 16),
        # library masks: key tiles shared by many rows, the loads of real masks
        *(Experiment.of_mask(heads, kind="causal", n=n) for n in (2048, 4096, 16384)),
        Experiment.of_mask(1, kind="causal", n=16384),  # 128 unbalanced rows on an idle device
        Experiment.of_mask(heads, kind="sliding_window", n=16384, window=2048, causal=True),
        Experiment.of_mask(heads, kind="documents", lengths=_lengths(16384, 512), causal=True),  # tile-aligned: full tiles
        Experiment.of_mask(heads, kind="documents", lengths=_lengths(16384, 300), causal=True),  # mostly partial tiles
        Experiment.of_mask(heads, kind="prefix_lm", n=16384, prefix=5000),
        Experiment.of_mask(heads, kind="longformer", n=16384, window=512, global_tokens=list(range(16)), causal=False),
        Experiment.of_mask(heads, kind="documents", lengths=_lengths(8192, 100), causal=False),  # partial tiles only
        Experiment.of_bench(heads, "token_tree", 16384),  # deep, unbalanced rows of scattered partial tiles
    ]


def _lengths(n: int, length: int) -> list[int]:
    """``n`` tokens in documents of ``length`` (the last one shorter)."""
    return [length] * (n // length) + ([n % length] if n % length else [])


def synthetic_intervals(e: Experiment, bm: int, bn: int) -> tuple[np.ndarray, int, int]:
    """The mask of an experiment as interval vectors ``[1, 4, kv_len]`` and its ``(q_len, kv_len)``.

    ``rows``: query-tile row ``m`` owns ``full[m]`` key tiles visible on its rows only, then
    ``partial[m]`` key tiles of which only the first half of the columns are (also on its rows
    only). ``cols``: key tile ``n`` is seen by ``full[n] + partial[n]`` query-tile rows of its own,
    in full (a full entry) or on the first half of its columns (a partial one); lists with both
    counts get one key tile of each kind.
    """
    if e.layout == "rows":
        owners, kinds = [], []
        for m, (f, p) in enumerate(zip(e.full, e.partial)):
            owners += [m] * (f + p)
            kinds += [1] * f + [2] * p
        q_len, tiles_n = len(e.full) * bm, len(owners)
        first = np.repeat(np.asarray(owners, dtype=np.int64) * bm, bn)
        last = first + bm
    else:
        spans, kinds = [], []
        for f, p in zip(e.full, e.partial):
            spans += [n for n in (f, p) if n]
            kinds += [kind for kind, n in ((1, f), (2, p)) if n]
        q_len, tiles_n = sum(spans) * bm, len(spans)
        starts = np.concatenate([[0], np.cumsum(spans)[:-1]]) * bm
        first = np.repeat(starts, bn)
        last = first + np.repeat(np.asarray(spans) * bm, bn)
    kv_len = tiles_n * bn
    hidden = (np.repeat(np.asarray(kinds) == 2, bn)) & (np.tile(np.arange(bn), tiles_n) >= bn // 2)
    vectors = np.empty((1, 4, kv_len), dtype=np.int64)
    vectors[0, UTS], vectors[0, UTE] = 0, np.where(hidden, q_len, first)
    vectors[0, LTS], vectors[0, LTE] = np.where(hidden, q_len, last), q_len
    return vectors, q_len, kv_len


def synthetic_plan(e: Experiment, kernel: str, bm: int, bn: int) -> Plan:
    """The experiment's plan for the block-sparse or interval kernel (no ``N × N`` mask is built)."""
    if e.layout == "mask":
        from maskc.spec import from_spec

        return compile_mask(from_spec(json.loads(e.spec)), block=(bm, bn), variant=kernel)
    if e.layout == "bench":
        from maskc.bench import build_mask

        spec = json.loads(e.spec)
        return compile_mask(build_mask(spec["name"], spec["n"]).source, block=(bm, bn), variant=kernel, reorder="none")
    vectors, q_len, kv_len = synthetic_intervals(e, bm, bn)
    plan = compile_mask(IntervalSource(vectors, (1, 1, q_len, kv_len), "calibration"), block=(bm, bn), variant="intervals", schedule="none")
    return plan if kernel == "intervals" else bitmap_plan(plan)


# --- measuring ------------------------------------------------------------------------------------


@dataclass
class _Device:
    """The torch side of a run: device, backend, timing."""

    cfg: CalibrateConfig
    torch: Any = None
    device: Any = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(self.cfg.device)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise cost.ProfileError("--device cuda asked for, but torch sees no CUDA device; use --device cpu for a pipeline check")
            if self.device.index is not None:
                torch.cuda.set_device(self.device.index)
            self.device = torch.device("cuda", torch.cuda.current_device())

    def time(self, fn: Callable[[], Any]) -> float:
        from maskc.bench import time_ms

        return time_ms(fn, self.device, self.cfg.warmup_ms, self.cfg.rep_ms)

    def tensors(self, heads: int, n: int, d: int, dtype: str, count: int, grad: bool):
        torch = self.torch
        gen = torch.Generator(device=self.device).manual_seed(0)
        dt = getattr(torch, TORCH_DTYPES[dtype])
        return [torch.randn((1, heads, n, d), generator=gen, device=self.device, dtype=dt).requires_grad_(grad) for _ in range(count)]

    def passes(self, loaded, heads: int, q_len: int, kv_len: int, d: int, dtype: str,
               which: tuple[str, ...] = cost.PASSES) -> dict[str, float]:
        """The times of ``which`` passes of one attention call through ``loaded``: the forward, and
        the backward alone."""
        torch = self.torch
        (q,) = self.tensors(heads, q_len, d, dtype, 1, True)
        k, v = self.tensors(heads, kv_len, d, dtype, 2, True)
        backend = self.cfg.backend
        times = {}
        if "fwd" in which:
            times["fwd"] = self.time(lambda: loaded.attention(q, k, v, backend=backend))
        if "bwd" in which:
            out = loaded.attention(q, k, v, backend=backend)
            grad = torch.randn_like(out)
            times["bwd"] = self.time(lambda: torch.autograd.grad(out, (q, k, v), grad, retain_graph=True))
            del out, grad
        del q, k, v
        self.free()
        return times

    def free(self) -> None:
        import gc

        gc.collect()
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()

    def kernels(self) -> tuple[str, ...]:
        """The tile kernels to measure: as configured, else those the backend runs."""
        if self.cfg.kernels is not None:
            return self.cfg.kernels
        if self._backend_name() == "reference":
            return cost.KERNELS
        from maskc.runtime.kernels import common

        return tuple(k for k in cost.KERNELS if k == "block_sparse" or k in getattr(common, "KERNEL_VARIANTS", ()))

    def _backend_name(self) -> str:
        from maskc.runtime.loaded import _backend

        probe = self.torch.empty(0, device=self.device)
        return "reference" if _backend(self.cfg.backend, probe).__name__.endswith("reference") else "triton"

    def describe(self) -> dict[str, Any]:
        torch = self.torch
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            return {"kind": "cuda", "name": torch.cuda.get_device_name(self.device), "capability": f"{props.major}.{props.minor}",
                    "sm_count": props.multi_processor_count, "memory_gib": round(props.total_memory / 2**30, 1)}
        return {"kind": "cpu", "name": f"CPU {platform.processor() or platform.machine()}", "threads": 1}


def _kernel_samples(dev: _Device, kernel: str, block: int, d: int, dtype: str, say) -> dict[str, list[cost.KernelSample]]:
    from maskc.runtime import load_plan

    samples: dict[str, list[cost.KernelSample]] = {pass_: [] for pass_ in dev.cfg.passes}
    for e in experiments(dev.cfg.quick, dev.device.type == "cpu"):
        try:
            plan = synthetic_plan(e, kernel, block, block)
        except MaskError:  # a mask this kernel does not run (a token tree has no interval form)
            continue
        work = cost.work_of(plan)
        try:
            times = dev.passes(load_plan(plan, dev.device), e.heads, plan.q_len, plan.kv_len, d, dtype, dev.cfg.passes)
        except Exception as err:  # noqa: BLE001  an experiment that does not fit (memory) is skipped, not fatal
            dev.notes.append(f"{kernel} {block}x{block} D={d} {dtype}: skipped {e}: {type(err).__name__}: {str(err)[:200]}")
            dev.free()
            continue
        for pass_, ms in times.items():  # the backward walks the rows (dQ), then the columns (dK/dV)
            samples[pass_].append(cost.KernelSample((work.rows,) if pass_ == "fwd" else (work.rows, work.cols), e.heads, ms))
        what = e.spec if e.layout in ("mask", "bench") else f"{e.layout} lists={len(e.full)}"
        say(f"    {what} heads={e.heads} tiles={work.rows.full}+{work.rows.partial}: "
            + ", ".join(f"{pass_} {ms:.4f} ms" for pass_, ms in times.items()))
    return samples


@functools.lru_cache(maxsize=None)
def _reordered_plan(name: str, n: int, block: int) -> Plan:
    """One RCM plan per mask, length and tile size, whatever dtype and head dim time it."""
    from maskc.bench import build_mask

    return compile_mask(build_mask(name, n).source, block=block, variant="block_sparse", reorder="rcm")


def _reorder_samples(dev: _Device, block: int, d: int, dtype: str, say) -> list[dict[str, Any]]:
    """Each scattered mask's reordered plan timed as it runs (rows read and written through its
    permutation) and as the same lists on already permuted inputs: ``{"mask", "n", "heads",
    "fwd": [plain_ms, reordered_ms], "bwd": [...]}``."""
    import dataclasses

    from maskc.runtime import LoadedPlan

    cpu = dev.device.type == "cpu"
    heads = 1 if cpu else 16
    lengths = (256,) if cpu else (4096, 12288)  # other lengths than the benchmark's
    out = []
    for name in REORDER_MASKS:
        for n in lengths:
            plan = _reordered_plan(name, n, block)
            if not plan.reordered:
                dev.notes.append(f"reorder {name} n={n} {block}x{block}: RCM did not pay off, no sample")
                continue
            plain = dataclasses.replace(plan, arrays={**plan.arrays, "perm": plan.arrays["perm"][:0]})
            before, after = (dev.passes(LoadedPlan(p, dev.device), heads, n, n, d, dtype) for p in (plain, plan))
            sample = {"mask": name, "n": n, "heads": heads, **{pass_: [before[pass_], after[pass_]] for pass_ in cost.PASSES}}
            say(f"    {name} n={n}: fwd {before['fwd']:.4f} -> {after['fwd']:.4f} ms, bwd {before['bwd']:.4f} -> {after['bwd']:.4f} ms")
            out.append(sample)
    return out


def _sdpa_samples(dev: _Device, d: int, dtype: str) -> dict[tuple[str, str], tuple[list[float], list[float]]]:
    """SDPA through dense plans, all-true and causal, forward and backward, at several lengths."""
    from maskc import library
    from maskc.runtime import load_plan

    heads = 2 if dev.device.type == "cpu" else 16
    sizes = (64, 128, 256) if dev.device.type == "cpu" else ((2048, 8192) if dev.cfg.quick else (1024, 4096, 8192, 16384))
    out = {}
    for mask, variant, source in (("full", "dense", library.full), ("causal", "dense_causal", library.causal)):
        units, times = [], {pass_: [] for pass_ in cost.PASSES}
        for n in sizes:
            plan = compile_mask(source(n), block=128, variant=variant)
            for pass_, ms in dev.passes(load_plan(plan, dev.device), heads, n, n, d, dtype).items():
                times[pass_].append(ms)
            units.append(plan.visible_pairs * heads)
        for pass_ in cost.PASSES:
            out[(mask, pass_)] = (units, times[pass_])
    return out


def _pieces_samples(dev: _Device, d: int, dtype: str) -> list[list[float]]:
    """The backward alone of plans whose backward runs through dense pieces, ``[pieces, causal
    pairs, full pairs, ms]`` with pairs over all heads: prefix-LM, shared-question masks and equal
    documents at several lengths (few large pieces to many small ones)."""
    from maskc import library
    from maskc.runtime import load_plan
    from maskc.runtime.format import piece_pairs

    cpu = dev.device.type == "cpu"
    heads = 2 if cpu else 16
    sizes = (256, 512) if cpu else ((4096, 16384) if dev.cfg.quick else (2048, 4096, 8192, 16384))
    out = []
    for n in sizes:
        for source in (library.prefix_lm(n, n // 4), library.shared_question(n // 4, [3 * n // 16] * 4),
                       library.documents([n // 2] * 2), library.documents([n // 16] * 16)):
            plan = compile_mask(source, block=128, backward="pieces")
            pieces = plan.arrays["pieces"]
            pairs = piece_pairs(pieces) * heads
            causal = pieces[:, 4] == 1
            bwd = dev.passes(load_plan(plan, dev.device), heads, n, n, d, dtype, ("bwd",))["bwd"]
            out.append([int(pieces.shape[0]), int(pairs[causal].sum()), int(pairs[~causal].sum()), bwd])
    return out


def calibrate(cfg: CalibrateConfig, progress: Callable[[str], None] | None = None, command: str | None = None) -> dict[str, Any]:
    """Run every measurement of ``cfg`` and return the profile (a dict in the ``maskc-profile/3``
    schema, checked by :func:`maskc.cost.parse_profile`)."""
    dev = _Device(cfg)
    if dev.device.type == "cpu" and not cfg.quick:
        raise cost.ProfileError("a CPU run only checks the pipeline: use --device cpu --quick")
    threads = dev.torch.get_num_threads()
    if dev.device.type == "cpu":
        dev.torch.set_num_threads(1)  # intra-op threads make CPU timings stall unpredictably
    try:
        return _calibrate(dev, cfg, progress or (lambda _line: None), command)
    finally:
        dev.torch.set_num_threads(threads)


def _calibrate(dev: _Device, cfg: CalibrateConfig, say: Callable[[str], None], command: str | None) -> dict[str, Any]:
    torch = dev.torch
    kernels = dev.kernels()
    profile: dict[str, Any] = {
        "schema": cost.SCHEMA,
        "device": dev.describe(),
        "environment": _environment(torch, command, dev._backend_name()),
        "settings": {"quick": cfg.quick, "dtypes": list(cfg.dtypes), "head_dims": list(cfg.head_dims), "blocks": list(cfg.blocks),
                     "kernels": list(kernels), "parts": list(cfg.parts), "passes": list(cfg.passes), "warmup_ms": cfg.warmup_ms, "rep_ms": cfg.rep_ms,
                     "experiments": [e.__dict__ for e in experiments(cfg.quick, dev.device.type == "cpu")]},
        "kernels": [],
        "reorder": [],
        "sdpa": [],
        "pieces": [],
    }
    for dtype in cfg.dtypes:
        for d in cfg.head_dims:
            bucket = cost.head_dim_bucket(d)
            for kernel in kernels if "kernels" in cfg.parts else ():
                for block in cfg.blocks:
                    say(f"{kernel} {block}x{block}, head dim {d}, {dtype}")
                    samples = _kernel_samples(dev, kernel, block, d, dtype, say)
                    for pass_, found in samples.items():
                        if len(found) < 5:
                            dev.notes.append(f"{kernel} {pass_} {block}x{block} D={d} {dtype}: only {len(found)} samples, not fitted")
                            continue
                        entry = {"kernel": kernel, "pass": pass_, "block": [block, block], "head_dim": bucket, "dtype": dtype,
                                 "samples": [x.as_dict() for x in found]}
                        profile["kernels"].append(_fit_kernel_entry(entry))
                        say(_describe_fit(entry))
            for block in cfg.blocks if "reorder" in cfg.parts else ():
                say(f"reordered plans {block}x{block}, head dim {d}, {dtype}")
                found = _reorder_samples(dev, block, d, dtype, say)
                if found:
                    entry = _fit_reorder_entry({"block": [block, block], "head_dim": bucket, "dtype": dtype, "samples": found})
                    profile["reorder"].append(entry)
                    say(f"  factors: fwd {entry['fwd_factor']:.3f}, bwd {entry['bwd_factor']:.3f}")
            if "sdpa" in cfg.parts:
                say(f"sdpa, head dim {d}, {dtype}")
                for (mask, pass_), (units, times) in _sdpa_samples(dev, d, dtype).items():
                    profile["sdpa"].append(_fit_linear_entry({"mask": mask, "pass": pass_, "head_dim": bucket, "dtype": dtype,
                                                              "samples": [list(p) for p in zip(units, times)]}, "pair_ms"))
            if "pieces" in cfg.parts and pieces_take(dtype, d):  # where the runtime runs them (cuDNN)
                say(f"backward through dense pieces, head dim {d}, {dtype}")
                entry = _fit_pieces_entry({"head_dim": bucket, "dtype": dtype, "samples": _pieces_samples(dev, d, dtype)})
                profile["pieces"].append(entry)
                say(f"  per piece {entry['piece_ms']:.4g} ms, per causal pair {entry['causal_pair_ms']:.3g}, "
                    f"per full pair {entry['full_pair_ms']:.3g}; rms error {entry['fit']['rms_rel_error']:.1%}")
    profile["notes"] = dev.notes
    cost.parse_profile(profile)
    return profile


def _fit_kernel_entry(entry: dict[str, Any], where: str = "kernel entry") -> dict[str, Any]:
    """A kernel entry's constants and fit statistics, fitted to its ``samples``."""
    samples = [cost.KernelSample.from_dict(x) for x in _samples(entry, where)]
    fitted, stats = cost.fit_kernel(samples, cost.NOISE_FLOOR_MS[entry["pass"]])
    entry.update(fitted.as_dict())
    entry["fit"] = stats.as_dict()
    return entry


def _fit_reorder_entry(entry: dict[str, Any], where: str = "reorder entry") -> dict[str, Any]:
    """A reorder entry's factors: per pass, the median over its samples of reordered / plain time."""
    samples = _samples(entry, where)
    factors = {}
    for pass_ in cost.PASSES:
        try:
            ratios = [x[pass_][1] / x[pass_][0] for x in samples]
        except (TypeError, KeyError, IndexError, ZeroDivisionError):
            raise cost.ProfileError(f"{where}: every measurement must hold {pass_!r}: [plain_ms, reordered_ms], plain > 0") from None
        factors[f"{pass_}_factor"] = float(np.median(ratios))
    entry.update(factors)
    return entry


def _fit_linear_entry(entry: dict[str, Any], unit_key: str, where: str = "entry") -> dict[str, Any]:
    """An SDPA entry's ``launch + unit · units`` fitted to its ``[units, ms]`` samples."""
    samples = _samples(entry, where)
    if not all(isinstance(x, list) and len(x) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x) for x in samples):
        raise cost.ProfileError(f"{where}: every measurement must be [units, ms]")
    units, times = zip(*samples)
    fitted, stats = cost.fit_linear(list(units), list(times))
    entry.update({"launch_ms": fitted.launch_ms, unit_key: fitted.unit_ms, "fit": stats.as_dict()})
    return entry


def _fit_pieces_entry(entry: dict[str, Any], where: str = "pieces entry") -> dict[str, Any]:
    """A dense-pieces entry's constants fitted to its ``[pieces, causal pairs, full pairs, ms]`` samples."""
    samples = _samples(entry, where)
    if not all(isinstance(x, list) and len(x) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x) for x in samples):
        raise cost.ProfileError(f"{where}: every measurement must be [pieces, causal pairs, full pairs, ms]")
    fitted, stats = cost.fit_pieces(samples)
    entry.update({**asdict(fitted), "fit": stats.as_dict()})
    return entry


def _samples(entry: dict[str, Any], where: str) -> list:
    samples = entry.get("samples")
    if not isinstance(samples, list) or not samples:
        raise cost.ProfileError(f"{where} records no measurements to fit")
    return samples


def _describe_fit(entry: dict[str, Any]) -> str:
    costs = cost.parse_kernel_entry(entry, "")
    lists = ", ".join(f"{name}: program {c.program_ms:.3g}, full tile {c.full_tile_ms:.3g}, partial tile {c.partial_tile_ms:.3g}"
                      for name, c in zip(cost.LAUNCHES[entry["pass"]], costs.lists))
    return (f"  {entry['pass']}: launch {costs.launch_ms:.4g} ms, {lists}, concurrency {costs.concurrency:.3g}; "
            f"rms error {entry['fit']['rms_rel_error']:.1%}")


def refit(profile: dict[str, Any]) -> dict[str, Any]:
    """The profile with every constant fitted again to the samples it records (the fit is the
    model's; the measurements are the GPU's, so a changed model needs no new GPU run)."""
    cost.parse_profile(profile)
    out = dict(profile)
    out["kernels"] = [_fit_kernel_entry(dict(e), f"kernels[{i}]") for i, e in enumerate(profile["kernels"])]
    out["reorder"] = [_fit_reorder_entry(dict(e), f"reorder[{i}]") for i, e in enumerate(profile["reorder"])]
    out["sdpa"] = [_fit_linear_entry(dict(e), "pair_ms", f"sdpa[{i}]") for i, e in enumerate(profile["sdpa"])]
    out["pieces"] = [_fit_pieces_entry(dict(e), f"pieces[{i}]") for i, e in enumerate(profile.get("pieces", []))]
    out["refits"] = profile.get("refits", []) + [{"date": _now(), "maskc": maskc.__version__}]
    cost.parse_profile(out)
    return out


def merge_profiles(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` plus the entries of ``old`` (same device) that it did not measure again: a profile
    can be measured in parts (say one dtype per run) into one file."""
    cost.parse_profile(old)
    if old["device"].get("name") != new["device"]["name"] or old["device"].get("kind") != new["device"]["kind"]:
        raise cost.ProfileError(f"cannot merge a profile of {old['device'].get('name')!r} into one of {new['device']['name']!r}")
    keys = {
        "kernels": lambda e: (e["kernel"], e["pass"], tuple(e["block"]), e["head_dim"], e["dtype"]),
        "reorder": lambda e: (tuple(e["block"]), e["head_dim"], e["dtype"]),
        "sdpa": lambda e: (e["mask"], e["pass"], e["head_dim"], e["dtype"]),
        "pieces": lambda e: (e["head_dim"], e["dtype"]),
    }
    merged = dict(new)
    for section, key in keys.items():
        fresh = {key(e) for e in new.get(section, [])}
        merged[section] = [e for e in old.get(section, []) if key(e) not in fresh] + new.get(section, [])
    merged["merged"] = old.get("merged", []) + [{"environment": old["environment"], "settings": old["settings"]}]
    merged["notes"] = old.get("notes", []) + new["notes"]
    cost.parse_profile(merged)
    return merged


def _environment(torch, command: str | None, backend: str) -> dict[str, Any]:
    env = {
        "date": _now(),
        "command": command if command is not None else " ".join(sys.argv),
        "maskc": maskc.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "backend": backend,
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
