"""``maskc calibrate``: measure the cost model's constants on a device and write its profile.

For each tile kernel (block-sparse and interval), tile size, head dim and dtype, it times the
plans of :mod:`maskc.measure.experiments` — synthetic plans whose every query-tile row (or
key-tile column) holds a chosen number of full and partial tiles, and library masks — forward and
backward apart (the backward alone: ``torch.autograd.grad(out, ..., retain_graph=True)`` on a
saved forward), through the same ``LoadedPlan.attention`` a training step calls. The plans vary the
tiles per list, the number of lists and heads, and their balance (one heavy list among light ones,
a few heavy lists on an idle GPU), so a least-squares fit (each error relative to the time plus a
noise floor) separates the launch cost, the per-program cost, the full-tile and partial-tile
costs and the concurrency (:func:`maskc.measure.fit.fit_kernel`). Library masks (causal, windows,
documents, prefix-LM, Longformer, at lengths other than the benchmark's) add the loads of real
masks, whose key tiles many query rows share. Every measurement is kept in the profile next to the
constants fitted to it (:func:`maskc.measure.fit.refit` fits them again). It also times reordered
plans of scattered masks (hash buckets, a permuted band, a token tree) against the same lists run
without their permutation, whose ratio is the reordering factor of each pass, SDPA on all-true and
causal masks (through dense plans), fitted as ``launch + unit · pairs``, and the backward of plans
that run it through their dense pieces (prefix-LM, shared-question masks and equal documents),
fitted as a cost per piece plus one per causal and per full pair. ``parts`` measures only some of
the four (``--only``; ``--merge`` keeps the rest of a profile), and ``passes`` only the forward or
backward of the tile kernels (``--passes``: after a change to one of them, the other pass's fits
stay as they were measured).

Only the runtime's public surface is used: ``load_plan``, ``LoadedPlan.attention(...,
backend=...)`` and ``resolve_backend``. On a CPU (``--device cpu --quick``) it runs the reference
backend at tiny sizes in seconds: the numbers mean nothing, the pipeline is exercised, and the
profile records ``"kind": "cpu"`` so it is never taken for a GPU's.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import platform
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from maskc import cost, library
from maskc.compiler import compile as compile_mask
from maskc.errors import MaskError
from maskc.measure.environment import versions
from maskc.measure.experiments import experiments, synthetic_plan
from maskc.measure.fit import KernelSample, describe_kernel_fit, fit_kernel_entry, fit_linear_entry, fit_pieces_entry, fit_reorder_entry
from maskc.measure.masks import build_mask
from maskc.measure.timing import time_ms, torch_dtype
from maskc.runtime import LoadedPlan, load_plan
from maskc.runtime.format import Plan, piece_pairs, pieces_take
from maskc.runtime.loaded import resolve_backend

PARTS = ("kernels", "reorder", "sdpa", "pieces")
REORDER_MASKS = ("hash_buckets", "permuted_band", "token_tree")  # the benchmark's scattered masks


@dataclass
class CalibrateConfig:
    """What to measure. Defaults are the full GPU run."""

    device: str = "cuda"
    quick: bool = False
    dtypes: tuple[str, ...] = ("bf16", "fp16")
    head_dims: tuple[int, ...] = (64, 128)
    blocks: tuple[int, ...] = (64, 128)
    kernels: tuple[str, ...] = cost.KERNELS  # both backends run both tile kernels
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


@dataclass
class _Device:
    """The torch side of a run: device, backend, timing."""

    cfg: CalibrateConfig
    device: torch.device = field(init=False)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.device = torch.device(self.cfg.device)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise cost.ProfileError("--device cuda asked for, but torch sees no CUDA device; use --device cpu for a pipeline check")
            if self.device.index is not None:
                torch.cuda.set_device(self.device.index)
            self.device = torch.device("cuda", torch.cuda.current_device())

    @property
    def backend(self) -> str:
        """The backend the runs go through: ``"triton"`` or ``"reference"``."""
        return resolve_backend(self.cfg.backend, self.device.type == "cuda")

    def time(self, fn: Callable[[], Any]) -> float:
        return time_ms(fn, self.device, self.cfg.warmup_ms, self.cfg.rep_ms)

    def tensors(self, heads: int, n: int, d: int, dtype: str, count: int, grad: bool):
        gen = torch.Generator(device=self.device).manual_seed(0)
        dt = torch_dtype(dtype)
        return [torch.randn((1, heads, n, d), generator=gen, device=self.device, dtype=dt).requires_grad_(grad) for _ in range(count)]

    def passes(self, loaded, heads: int, q_len: int, kv_len: int, d: int, dtype: str,
               which: tuple[str, ...] = cost.PASSES) -> dict[str, float]:
        """The times of ``which`` passes of one attention call through ``loaded``: the forward, and
        the backward alone."""
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
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def describe(self) -> dict[str, Any]:
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            return {"kind": "cuda", "name": torch.cuda.get_device_name(self.device), "capability": f"{props.major}.{props.minor}",
                    "sm_count": props.multi_processor_count, "memory_gib": round(props.total_memory / 2**30, 1)}
        return {"kind": "cpu", "name": f"CPU {platform.processor() or platform.machine()}", "threads": 1}


def _kernel_samples(dev: _Device, kernel: str, block: int, d: int, dtype: str, say) -> dict[str, list[KernelSample]]:
    samples: dict[str, list[KernelSample]] = {pass_: [] for pass_ in dev.cfg.passes}
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
            samples[pass_].append(KernelSample((work.rows,) if pass_ == "fwd" else (work.rows, work.cols), e.heads, ms))
        what = e.spec if e.layout in ("mask", "bench") else f"{e.layout} lists={len(e.full)}"
        say(f"    {what} heads={e.heads} tiles={work.rows.full}+{work.rows.partial}: "
            + ", ".join(f"{pass_} {ms:.4f} ms" for pass_, ms in times.items()))
    return samples


@functools.lru_cache(maxsize=None)
def _reordered_plan(name: str, n: int, block: int) -> Plan:
    """One RCM plan per mask, length and tile size, whatever dtype and head dim time it."""
    return compile_mask(build_mask(name, n).source, block=block, variant="block_sparse", reorder="rcm")


def _reorder_samples(dev: _Device, block: int, d: int, dtype: str, say) -> list[dict[str, Any]]:
    """Each scattered mask's reordered plan timed as it runs (rows read and written through its
    permutation) and as the same lists on already permuted inputs: ``{"mask", "n", "heads",
    "fwd": [plain_ms, reordered_ms], "bwd": [...]}``."""
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
    threads = torch.get_num_threads()
    if dev.device.type == "cpu":
        torch.set_num_threads(1)  # intra-op threads make CPU timings stall unpredictably
    try:
        return _calibrate(dev, cfg, progress or (lambda _line: None), command)
    finally:
        torch.set_num_threads(threads)


def _calibrate(dev: _Device, cfg: CalibrateConfig, say: Callable[[str], None], command: str | None) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "schema": cost.SCHEMA,
        "device": dev.describe(),
        "environment": {**versions(command), "backend": dev.backend},
        "settings": {"quick": cfg.quick, "dtypes": list(cfg.dtypes), "head_dims": list(cfg.head_dims), "blocks": list(cfg.blocks),
                     "kernels": list(cfg.kernels), "parts": list(cfg.parts), "passes": list(cfg.passes), "warmup_ms": cfg.warmup_ms, "rep_ms": cfg.rep_ms,
                     "experiments": [e.__dict__ for e in experiments(cfg.quick, dev.device.type == "cpu")]},
        "kernels": [],
        "reorder": [],
        "sdpa": [],
        "pieces": [],
    }
    for dtype in cfg.dtypes:
        for d in cfg.head_dims:
            bucket = cost.head_dim_bucket(d)
            for kernel in cfg.kernels if "kernels" in cfg.parts else ():
                for block in cfg.blocks:
                    say(f"{kernel} {block}x{block}, head dim {d}, {dtype}")
                    samples = _kernel_samples(dev, kernel, block, d, dtype, say)
                    for pass_, found in samples.items():
                        if len(found) < 5:
                            dev.notes.append(f"{kernel} {pass_} {block}x{block} D={d} {dtype}: only {len(found)} samples, not fitted")
                            continue
                        entry = {"kernel": kernel, "pass": pass_, "block": [block, block], "head_dim": bucket, "dtype": dtype,
                                 "samples": [x.as_dict() for x in found]}
                        profile["kernels"].append(fit_kernel_entry(entry))
                        say(describe_kernel_fit(entry))
            for block in cfg.blocks if "reorder" in cfg.parts else ():
                say(f"reordered plans {block}x{block}, head dim {d}, {dtype}")
                found = _reorder_samples(dev, block, d, dtype, say)
                if found:
                    entry = fit_reorder_entry({"block": [block, block], "head_dim": bucket, "dtype": dtype, "samples": found})
                    profile["reorder"].append(entry)
                    say(f"  factors: fwd {entry['fwd_factor']:.3f}, bwd {entry['bwd_factor']:.3f}")
            if "sdpa" in cfg.parts:
                say(f"sdpa, head dim {d}, {dtype}")
                for (mask, pass_), (units, times) in _sdpa_samples(dev, d, dtype).items():
                    profile["sdpa"].append(fit_linear_entry({"mask": mask, "pass": pass_, "head_dim": bucket, "dtype": dtype,
                                                              "samples": [list(p) for p in zip(units, times)]}, "pair_ms"))
            if "pieces" in cfg.parts and pieces_take(dtype, d):  # where the runtime runs them (cuDNN)
                say(f"backward through dense pieces, head dim {d}, {dtype}")
                entry = fit_pieces_entry({"head_dim": bucket, "dtype": dtype, "samples": _pieces_samples(dev, d, dtype)})
                profile["pieces"].append(entry)
                say(f"  per piece {entry['piece_ms']:.4g} ms, per causal pair {entry['causal_pair_ms']:.3g}, "
                    f"per full pair {entry['full_pair_ms']:.3g}; rms error {entry['fit']['rms_rel_error']:.1%}")
    profile["notes"] = dev.notes
    cost.parse_profile(profile)
    return profile


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
