"""How one attention method is timed into a result row, and the device chores around it.

Times are medians: ``triton.testing.do_bench(..., return_mode="median")`` on CUDA (CUDA events, L2
flushed between runs), ``time.perf_counter`` medians on CPU. Forward and forward+backward are
timed as closures over the same inputs (which require grad when the backward is timed, so the
forward is the training forward); the backward closure is ``out = attn(q, k, v);
out.backward(grad)`` with q/k/v grads reset through ``grad_to_none``. Before timing, every method
is called once: its first-call time (compilation), its error against the float64 reference, a NaN
check, then one backward. A method that fails records its error; the run goes on.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from maskc.measure.reference import rel_err
from maskc.runtime.dtypes import torch_dtype

if TYPE_CHECKING:  # pragma: no cover
    from maskc.measure.bench import BenchConfig

FWD_FLOPS_PER_PAIR = 4
"""Forward FLOPs per visible (query, key) pair, per head dim and head: ``QKᵀ`` and ``PV``, 2 each."""

FWD_BWD_FLOP_FACTOR = 3.5
"""FLOPs of forward+backward over those of the forward: the backward's five matmuls (recomputed
``QKᵀ``, ``dP = dO Vᵀ``, ``dV``, ``dQ``, ``dK``) count 2.5 forwards, the FlashAttention convention."""

Attn = Callable[[Any, Any, Any], Any]


class ContextLost(RuntimeError):
    """The CUDA context is unusable (e.g. an illegal memory access); nothing more can run in this process."""


@dataclass
class Row:
    """One result: a method on one mask at one ``N``."""

    mask: str
    n: int
    method: str
    fwd_ms: float | None = None
    fwd_tflops: float | None = None
    fwd_bwd_ms: float | None = None
    fwd_bwd_tflops: float | None = None
    rel_err: float | None = None
    notes: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["notes"] = "; ".join(self.notes)
        return d


class Inputs:
    """q, k, v and the upstream gradient of one ``N``, shared by every mask and method."""

    def __init__(self, cfg: BenchConfig, n: int, device):
        dtype = torch_dtype(cfg.dtype)
        gen = torch.Generator(device=device).manual_seed(cfg.seed + n)
        shape = (cfg.batch, cfg.heads, n, cfg.head_dim)
        kv_shape = (cfg.batch, cfg.kv_heads or cfg.heads, n, cfg.head_dim)
        self.q, self.k, self.v, self.grad = (torch.randn(s, generator=gen, device=device, dtype=dtype)
                                             for s in (shape, kv_shape, kv_shape, shape))
        for t in (self.q, self.k, self.v):
            t.requires_grad_(cfg.backward)
        self.scale = 1.0 / math.sqrt(cfg.head_dim)

    def reset_grads(self) -> None:
        for t in (self.q, self.k, self.v):
            t.grad = None


def short_error(e: BaseException, limit: int = 300) -> str:
    """An exception as one line: its type and the first meaningful lines of its message."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    text = " | ".join(lines[:2]) if lines else ""
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def free(device) -> None:
    """Collect garbage and hand cached CUDA blocks back, between methods."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def check_context(device) -> None:
    """Raise :class:`ContextLost` if the CUDA context of ``device`` no longer works."""
    if torch.device(device).type != "cuda":
        return
    try:
        torch.cuda.synchronize(device)
    except Exception as e:  # noqa: BLE001
        raise ContextLost(short_error(e)) from None


def time_ms(fn: Callable[[], Any], device, warmup_ms: float, rep_ms: float, grad_to_none=None) -> float:
    """Median time of ``fn`` in ms: ``triton.testing.do_bench`` on CUDA, ``perf_counter`` on CPU."""
    if torch.device(device).type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=int(max(1, warmup_ms)), rep=int(max(1, rep_ms)), grad_to_none=grad_to_none, return_mode="median"))

    def once() -> float:
        if grad_to_none is not None:
            for x in grad_to_none:
                x.grad = None
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    estimate = max(once(), 1e-3)
    for _ in range(min(10, int(warmup_ms / estimate))):
        once()
    repeats = max(3, min(50, int(rep_ms / estimate)))
    return statistics.median(once() for _ in range(repeats))


def measure(
    row: Row,
    variants: list[tuple[str, Attn]],
    inputs: Inputs,
    cfg: BenchConfig,
    device,
    flops_fwd: float,
    ref=None,
    rows: np.ndarray | None = None,
    pick: str = "first",
) -> None:
    """Time ``variants`` (label, attention callable) into ``row``.

    Each variant is first called once outside the timing (compilation, the error of the query rows
    ``rows`` against ``ref``, a NaN check, then one backward). ``pick="first"``: the first variant
    whose forward and backward both work is timed (else the first whose forward works, forward
    only); the failures of the others go to the notes. ``pick="fastest"``: every working variant
    is timed and the row reports the fastest per phase, naming it.
    """
    probes: dict[str, dict[str, Any]] = {}
    chosen: list[str] = []
    attns = dict(variants)
    for label, attn in variants:
        probes[label] = r = _probe(attn, inputs, cfg, device, ref, rows)
        if pick == "fastest":
            if "error" not in r:
                chosen.append(label)
        elif "error" not in r and "bwd_error" not in r:
            chosen = [label]
            break
    if pick == "first" and not chosen:
        chosen = [label for label, r in probes.items() if "error" not in r][:1]

    for label in chosen:
        _time(probes[label], attns[label], inputs, cfg, device)
    row.detail["variants"] = probes
    _note_failures(row, probes, chosen, pick, len(variants))
    _fill(row, {label: probes[label] for label in chosen}, chosen, pick, len(variants), flops_fwd)


def _time(r: dict[str, Any], attn: Attn, inputs: Inputs, cfg: BenchConfig, device) -> None:
    """The forward and, when asked and it works, the forward+backward of one probed variant, into ``r``."""
    q, k, v, grad = inputs.q, inputs.k, inputs.v, inputs.grad

    def fwd():
        return attn(q, k, v)

    def fwd_bwd():
        attn(q, k, v).backward(grad)

    try:
        r["fwd_ms"] = time_ms(fwd, device, cfg.warmup_ms, cfg.rep_ms)
    except Exception as e:  # noqa: BLE001
        r["fwd_time_error"] = short_error(e)
        _recover(inputs, device)
    if cfg.backward and "bwd_error" not in r:
        try:
            r["fwd_bwd_ms"] = time_ms(fwd_bwd, device, cfg.warmup_ms, cfg.rep_ms, grad_to_none=[q, k, v])
        except Exception as e:  # noqa: BLE001
            r["fwd_bwd_time_error"] = short_error(e)
            _recover(inputs, device)
    inputs.reset_grads()
    free(device)


def _note_failures(row: Row, probes: dict[str, dict[str, Any]], chosen: list[str], pick: str, count: int) -> None:
    for label, r in probes.items():
        prefix = f"{label} " if count > 1 else ""
        if "error" in r:
            row.notes.append(f"{prefix}failed: {r['error']}")
        elif label in chosen or pick == "fastest":
            for key, what in (("bwd_error", "backward"), ("fwd_time_error", "fwd timing"), ("fwd_bwd_time_error", "fwd+bwd timing")):
                if key in r:
                    row.notes.append(f"{prefix}{what} failed: {r[key]}")
        elif "bwd_error" in r:
            row.notes.append(f"{prefix}backward failed: {r['bwd_error']}")


def _fill(row: Row, timed: dict[str, dict[str, Any]], chosen: list[str], pick: str, count: int, flops_fwd: float) -> None:
    """The row's times, rates and error from the fastest timed variant per phase."""
    fwd_best = min((lbl for lbl in timed if "fwd_ms" in timed[lbl]), key=lambda lbl: timed[lbl]["fwd_ms"], default=None)
    fb_best = min((lbl for lbl in timed if "fwd_bwd_ms" in timed[lbl]), key=lambda lbl: timed[lbl]["fwd_bwd_ms"], default=None)
    if fwd_best is not None:
        row.fwd_ms = timed[fwd_best]["fwd_ms"]
        row.fwd_tflops = flops_fwd / (row.fwd_ms * 1e-3) / 1e12
    if fb_best is not None:
        row.fwd_bwd_ms = timed[fb_best]["fwd_bwd_ms"]
        row.fwd_bwd_tflops = FWD_BWD_FLOP_FACTOR * flops_fwd / (row.fwd_bwd_ms * 1e-3) / 1e12
    err_from = fwd_best or (chosen[0] if chosen else None)
    if err_from is None:
        return
    row.rel_err = timed[err_from].get("rel_err")
    if not timed[err_from].get("finite", True):
        row.notes.append("output has NaN/inf")
    if count > 1:
        if pick == "fastest" and len(chosen) > 1:
            best = f"fwd: {fwd_best}" + (f", fwd+bwd: {fb_best}" if fb_best else "")
            row.notes.append(f"{best} (fastest of {'/'.join(chosen)})")
        else:
            row.notes.append(f"backend: {err_from}")
    row.detail["backend"] = {"fwd": fwd_best, "fwd_bwd": fb_best}
    row.detail["first_call_s"] = timed[err_from].get("first_call_s")
    row.detail["first_backward_s"] = timed[err_from].get("first_backward_s")


def _probe(attn: Attn, inputs: Inputs, cfg: BenchConfig, device, ref, rows) -> dict[str, Any]:
    """One untimed forward (error, NaN check, compile time), then one untimed backward."""
    q, k, v = inputs.q, inputs.k, inputs.v
    r: dict[str, Any] = {}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            start = time.perf_counter()
            out = attn(q, k, v)
            sync(device)
        r["first_call_s"] = time.perf_counter() - start
        if ref is not None:
            r["rel_err"] = rel_err(out.detach().index_select(2, torch.as_tensor(rows, device=out.device)), ref)
        r["finite"] = bool(out.detach().isfinite().all().item())
        del out
    except Exception as e:  # noqa: BLE001  one method failing must not stop the run
        r["error"] = short_error(e)
        _recover(inputs, device)
        return r
    finally:
        # e.g. SDPA's reasons for refusing a backend; kept in the JSON, not in the table
        seen = list(dict.fromkeys(str(w.message).strip() for w in caught))
        if seen:
            r["warnings"] = [w[:500] for w in seen[:5]]
    if cfg.backward:
        try:
            start = time.perf_counter()
            attn(q, k, v).backward(inputs.grad)
            sync(device)
            r["first_backward_s"] = time.perf_counter() - start
        except Exception as e:  # noqa: BLE001
            r["bwd_error"] = short_error(e)
            _recover(inputs, device)
        inputs.reset_grads()
    return r


def _recover(inputs: Inputs, device) -> None:
    """After a failure: drop grads and cached blocks, and stop the run if the CUDA context is gone."""
    inputs.reset_grads()
    free(device)
    check_context(device)
