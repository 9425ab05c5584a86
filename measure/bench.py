"""The benchmark behind ``maskc bench``: maskc against FlexAttention, SDPA and dense causal attention.

For each mask of the benchmark set (:mod:`maskc.measure.masks`) and each sequence length ``N``, in
one process on one device, it measures:

* **maskc**: the plan is compiled once before any timing (the compile time is recorded apart),
  loaded with ``load_plan(plan, device)``, and only ``LoadedPlan.attention`` calls are timed. With
  ``--block auto`` (the default) the cost model chooses the plan for the benchmark's batch, heads,
  head dim and dtype; its prediction is shown next to the measured time. With ``--candidates``,
  every other candidate the model compared is compiled explicitly and timed too
  (``maskc:<candidate>`` rows), so the choice and the predictions can be checked against
  measurements;
* **flex**: FlexAttention with a ``BlockMask`` (:mod:`maskc.measure.adapters`);
* **sdpa-mask**: ``scaled_dot_product_attention`` with the dense boolean mask, under the fastest
  backend that accepts one (cuDNN, then memory-efficient; the one that ran is recorded);
* **dense-causal** (one row per ``N``): SDPA ``is_causal=True`` under cuDNN and under Flash, the
  faster of the two per phase: the fastest dense attention the machine has, as the reference.

How each method is timed is :mod:`maskc.measure.timing`. Every method's forward output is checked
against the float64 reference (:mod:`maskc.measure.reference`) over a slice of evenly spread
query rows. A method that fails (out of memory, unsupported) records its error in ``notes``; the
run goes on.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from maskc import cost, library
from maskc.compiler import compile as compile_mask
from maskc.compiler import parse_block_option
from maskc.errors import MaskError
from maskc.measure import adapters
from maskc.measure.environment import environment
from maskc.measure.masks import DEFAULT_MASKS, build_mask, parse_masks
from maskc.measure.reference import error_rows, reference_rows
from maskc.measure.report import progress_line, write_json
from maskc.measure.timing import FWD_BWD_FLOP_FACTOR, FWD_FLOPS_PER_PAIR, ContextLost, Inputs, Row, free, measure, short_error
from maskc.runtime.format import DTYPES

SCHEMA = "maskc-bench/1"


class BenchError(ValueError):
    """A configuration the benchmark cannot run (no CUDA device, an unknown dtype)."""


@dataclass
class BenchConfig:
    """What to run: ``maskc bench``'s options."""

    masks: list[str] = field(default_factory=lambda: list(DEFAULT_MASKS))
    ns: list[int] = field(default_factory=lambda: [8192, 32768])
    heads: int = 16
    kv_heads: int | None = None  # key/value heads (None: as many as heads; fewer: GQA/MQA)
    head_dim: int = 128
    batch: int = 1
    dtype: str = "bf16"
    block: str = "auto"
    device: str = "cuda"
    backend: str = "auto"  # maskc backend: auto, triton, reference
    flex: bool = True
    sdpa: bool = True
    dense_causal: bool = True
    backward: bool = True
    rows_for_error: int = 256
    warmup_ms: float = 50.0
    rep_ms: float = 200.0
    sdpa_max_mask_gib: float = 8.0
    flex_block: int = 128
    flex_tree: str = "dense"  # dense: trees and medusa through a dense lookup; interval: preorder-interval mask_mod
    seed: int = 0
    window: int | None = None  # sliding_window's window (None: 1024)
    prefix: int | None = None  # prefix_lm's prefix (None: N/4)
    profile: str | None = None  # the cost model's profile (name or path); None: MASKC_PROFILE or the shipped one
    candidates: bool = False  # also time every other candidate the cost model compared


def run_bench(
    cfg: BenchConfig,
    progress: Callable[[str], None] | None = None,
    command: str | None = None,
    json_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Run the benchmark; return (and, with ``json_path``, write after every row) the result dict."""
    say = progress or (lambda _msg: None)
    device = _device(cfg)
    block = parse_block_option(cfg.block)
    profile = cost.resolve_profile(cfg.profile)
    masks = parse_masks(",".join(cfg.masks))
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "environment": {**environment(device, command), "profile": profile.name if profile else None,
                        "profile_sha256": profile.sha256 if profile else None},
        "config": {**dataclasses.asdict(cfg), "masks": masks},
        "conventions": {
            "time": "median ms; CUDA: triton.testing.do_bench(return_mode='median'), CPU: time.perf_counter",
            "fwd_flops": f"{FWD_FLOPS_PER_PAIR} * visible_pairs * head_dim * heads * batch",
            "fwd_bwd_flops": f"{FWD_BWD_FLOP_FACTOR} * fwd_flops (backward = 2.5 forwards)",
            "rel_err": "forward, ||out - ref||_F / ||ref||_F over the error rows; ref = float64 softmax of the same inputs",
            "forward_grad_mode": "inputs require grad when backward is timed (as in training)",
            "predicted": "the cost model's fwd and fwd+bwd ms for this run's batch, heads, head dim and dtype (maskc rows, with a profile)",
        },
        "cases": [],
        "results": [],
    }
    total = len(cfg.ns) * ((1 if cfg.dense_causal else 0) + len(masks) * (1 + cfg.flex + cfg.sdpa))
    done = 0
    lost: str | None = None

    def expect(more: int) -> None:
        nonlocal total
        total += more

    def emit(row: Row) -> None:
        nonlocal done
        done += 1
        result["results"].append(row.as_dict())
        say(f"[{done}/{total}] " + progress_line(row))
        if json_path is not None:
            write_json(result, json_path)

    for n in cfg.ns:
        names = (["causal"] if cfg.dense_causal else []) + masks
        methods = (["dense-causal"] if cfg.dense_causal else []) + ["all"] * len(masks)
        if lost:
            for name, method in zip(names, methods):
                emit(Row(name, n, method, notes=[f"skipped: {lost}"]))
            continue
        try:
            inputs = Inputs(cfg, n, device)
        except Exception as e:  # noqa: BLE001
            note = f"skipped: q/k/v for N={n} failed: {short_error(e)}"
            for name, method in zip(names, methods):
                emit(Row(name, n, method, notes=[note]))
            free(device)
            continue
        rows = error_rows(n, cfg.rows_for_error)
        if cfg.dense_causal:
            row = Row("causal", n, "dense-causal")
            try:
                _dense_causal(row, inputs, cfg, device, rows)
            except ContextLost as e:
                lost = f"CUDA context lost: {e}"
                row.notes.append(lost)
            except Exception as e:  # noqa: BLE001
                row.notes.append(f"failed: {short_error(e)}")
            emit(row)
            free(device)
        for name in masks:
            if lost:
                emit(Row(name, n, "all", notes=[f"skipped: {lost}"]))
                continue
            info: dict[str, Any] = {"mask": name, "n": n}
            result["cases"].append(info)
            try:
                _one_mask(name, n, inputs, cfg, device, block, rows, say, emit, info, profile, expect)
            except ContextLost as e:
                lost = f"CUDA context lost: {e}"
                emit(Row(name, n, "all", notes=[lost]))
            except Exception as e:  # noqa: BLE001
                info["error"] = short_error(e)
                emit(Row(name, n, "all", notes=[f"failed: {info['error']}"]))
            free(device)
        del inputs
        free(device)
    if json_path is not None:
        write_json(result, json_path)
    return result


def _device(cfg: BenchConfig) -> torch.device:
    """The run's device, with the configuration checked against it."""
    device = torch.device(cfg.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BenchError("--device cuda asked for, but torch sees no CUDA device; use --device cpu for a tiny CPU run")
        if device.index is not None:
            torch.cuda.set_device(device.index)
        device = torch.device("cuda", torch.cuda.current_device())
    if cfg.dtype not in DTYPES:
        raise BenchError(f"dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
    if cfg.kv_heads is not None and (cfg.kv_heads < 1 or cfg.heads % cfg.kv_heads):
        raise BenchError(f"--kv-heads must divide --heads={cfg.heads}, got {cfg.kv_heads}")
    return device


def _flops(pairs: int, cfg: BenchConfig) -> float:
    return FWD_FLOPS_PER_PAIR * pairs * cfg.head_dim * cfg.heads * cfg.batch


def _dense_causal(row: Row, inputs: Inputs, cfg: BenchConfig, device, rows: np.ndarray) -> None:
    n = inputs.q.shape[2]
    pairs = n * (n + 1) // 2
    flops = _flops(pairs, cfg)
    row.detail.update({"visible_pairs": pairs, "flops_fwd": flops})
    ref = reference_rows(inputs.q, inputs.k, inputs.v, library.causal(n), rows, inputs.scale)
    variants = adapters.sdpa_variants(device, ("CUDNN_ATTENTION", "FLASH_ATTENTION"), inputs.scale, adapters.gqa(cfg), is_causal=True)
    measure(row, variants, inputs, cfg, device, flops, ref, rows, pick="fastest")
    del ref
    free(device)


def _one_mask(name, n, inputs: Inputs, cfg: BenchConfig, device, block, rows, say, emit, info: dict[str, Any],
              profile: cost.Profile | None = None, expect: Callable[[int], None] = lambda _more: None) -> None:
    """Every method on one mask at one ``N``, each row emitted as soon as it is done: maskc (and,
    with ``cfg.candidates``, every other candidate of the cost model), flex, sdpa-mask."""
    case = build_mask(name, n, cfg.seed, cfg.window, cfg.prefix)
    info.update({"source": case.source.name, "params": case.params, "description": case.description})
    if case.source.shape[:2] != (1, 1):
        raise MaskError(f"{name}: the benchmark takes single [N, N] masks, got shape {list(case.source.shape)}")

    # maskc: compile once, before any timing
    workload = cost.Workload(batch=cfg.batch, heads=cfg.heads, kv_heads=cfg.kv_heads, head_dim=cfg.head_dim, dtype=cfg.dtype)
    start = time.perf_counter()
    plan = compile_mask(case.source, block=block, profile=profile if profile is not None else cost.NO_PROFILE, workload=workload)
    info["compile_s"] = time.perf_counter() - start
    counts = plan.tile_counts()
    pairs = plan.visible_pairs
    flops = _flops(pairs, cfg)
    chosen = cost.plan_candidate(plan).name
    info.update({"visible_pairs": pairs, "density": pairs / (n * n), "tiles": counts, "variant": plan.variant, "candidate": chosen,
                 "reordered": plan.reordered, "plan_bytes": len(plan.to_bytes()), "flops_fwd": flops,
                 "block": [plan.block_m, plan.block_n], "predictions": plan.predictions, "reorder": plan.options.get("reorder")})
    say(f"  {name} N={n}: {case.description}; compiled in {info['compile_s']:.2f} s, density {pairs / (n * n):.2%}, "
        f"{chosen}: {counts['tiles_full']} full + {counts['tiles_partial']} partial of {counts['tiles_total']} tiles")

    ref = reference_rows(inputs.q, inputs.k, inputs.v, case.source, rows, inputs.scale)
    base = {"visible_pairs": pairs, "flops_fwd": flops}
    others = [r for r in cost.recorded(plan) if r.candidate.name != chosen] if cfg.candidates else []
    expect(len(others))
    runs = [("maskc", plan, cost.plan_candidate(plan), cost.work_of(plan))]
    for r in others:
        runs.append((f"maskc:{r.candidate.name}", None, r.candidate, r.work))
    for method, this, candidate, work in runs:
        row = Row(name, n, method, detail={**base, "variant": candidate.variant, "candidate": candidate.name, "backend_requested": cfg.backend,
                                           "predicted": _predicted(profile, candidate, work, workload)})
        _guarded(row, _time_candidate, row, case.source, this, candidate, inputs, cfg, device, flops, ref, rows)
        emit(row)
        free(device)

    dense = None
    dense_bytes = n * n
    too_big = dense_bytes > cfg.sdpa_max_mask_gib * 2**30

    def get_dense():
        nonlocal dense
        if dense is None:
            dense = torch.from_numpy(case.source.to_dense()[0, 0]).to(device)
        return dense

    if cfg.flex:
        row = Row(name, n, "flex", detail=dict(base))
        if device.type not in adapters.FLEX_DEVICES:
            row.notes.append("skipped: FlexAttention is benchmarked on CUDA only (torch.compile'd Triton kernels)")
        elif adapters.flex_needs_dense(case, cfg) and too_big:
            row.notes.append(f"skipped: dense lookup needs the {dense_bytes / 2**30:.1f} GiB mask (> {cfg.sdpa_max_mask_gib} GiB)")
        else:
            try:
                _guarded(row, adapters.run_flex, row, case, inputs, cfg, device, flops, ref, rows, get_dense, info)
            finally:
                torch._dynamo.reset()
        emit(row)
        free(device)

    if cfg.sdpa:
        row = Row(name, n, "sdpa-mask", detail=dict(base))
        if too_big:
            row.notes.append(f"skipped: dense bool mask is {dense_bytes / 2**30:.1f} GiB (> {cfg.sdpa_max_mask_gib} GiB)")
        else:
            _guarded(row, _sdpa_mask, row, get_dense, inputs, cfg, device, flops, ref, rows)
        emit(row)
    del dense, ref, plan
    free(device)


def _guarded(row: Row, run: Callable[..., None], *args: Any) -> None:
    """``run(*args)``, one method timed into ``row``; a failure becomes a note, except a lost CUDA
    context, which ends the run."""
    try:
        run(*args)
    except ContextLost:
        raise
    except Exception as e:  # noqa: BLE001
        row.notes.append(f"failed: {short_error(e)}")


def _sdpa_mask(row: Row, get_dense: Callable[[], torch.Tensor], inputs: Inputs, cfg: BenchConfig, device, flops, ref, rows) -> None:
    """SDPA with the dense boolean mask, under the first backend that runs it (cuDNN, then memory-efficient)."""
    variants = adapters.sdpa_variants(device, ("CUDNN_ATTENTION", "EFFICIENT_ATTENTION"), inputs.scale, adapters.gqa(cfg),
                                      attn_mask=get_dense()[None, None])
    measure(row, variants, inputs, cfg, device, flops, ref, rows, pick="first")


def _time_candidate(row: Row, source, plan, candidate: cost.Candidate, inputs: Inputs, cfg: BenchConfig, device, flops, ref, rows) -> None:
    """Time ``plan``, or where it is None (another candidate of the cost model) the candidate compiled as told, with no model."""
    if plan is None:
        plan = compile_mask(source, block=candidate.block, variant=candidate.variant, reorder="rcm" if candidate.reordered else "none",
                            backward="pieces" if candidate.pieces else "tiles")
    _time_plan(row, plan, inputs, cfg, device, flops, ref, rows)


def _time_plan(row: Row, plan, inputs: Inputs, cfg: BenchConfig, device, flops, ref, rows) -> None:
    """Load ``plan`` and time ``LoadedPlan.attention`` into ``row`` (the prediction, if any, in its notes)."""
    from maskc.runtime import load_plan

    loaded = load_plan(plan, device)
    backend, scale = cfg.backend, inputs.scale
    measure(row, [(f"maskc/{backend}", lambda q, k, v: loaded.attention(q, k, v, scale=scale, backend=backend))], inputs, cfg, device, flops, ref, rows)
    counts = plan.tile_counts()
    row.notes.append(f"backend {backend}, plan {row.detail['candidate']}: {counts['tiles_full']} full + {counts['tiles_partial']} partial tiles")
    predicted = row.detail["predicted"]
    if "fwd_ms" in predicted:
        row.notes.append(f"predicted fwd {predicted['fwd_ms']:.3f} ms, fwd+bwd {predicted['fwd_bwd_ms']:.3f} ms")


def _predicted(profile: cost.Profile | None, candidate: cost.Candidate, work: cost.Work, workload: cost.Workload) -> dict[str, Any]:
    """The cost model's prediction for one candidate at the benchmark's shape, or why there is none."""
    if profile is None:
        return {"note": "no profile"}
    try:
        p = cost.predict(profile, candidate, work, workload)
    except cost.ProfileError as e:
        return {"note": str(e)}
    return {"fwd_ms": p.fwd_ms, "fwd_bwd_ms": p.fwd_bwd_ms, "profile": profile.name}
