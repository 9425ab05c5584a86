"""The benchmark's output: the JSON file (rewritten after every row) and the plain-text table."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from maskc.measure.timing import FWD_BWD_FLOP_FACTOR, Row
from maskc.runtime.format import atomic_write

COLUMNS = ("mask", "N", "method", "fwd ms", "pred fwd", "fwd TFLOP/s", "fwd+bwd ms", "pred f+b", "fwd+bwd TFLOP/s", "rel err", "notes")


def write_json(result: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``result`` to ``path`` atomically."""
    atomic_write(path, (json.dumps(result, indent=2, default=_json_default) + "\n").encode())


def progress_line(row: Row) -> str:
    """One row as a progress line: its times, rates, error and notes."""
    head = f"{row.mask} N={row.n} {row.method}:"
    parts = []
    if row.fwd_ms is not None:
        parts.append(f"fwd {row.fwd_ms:.3f} ms ({_fmt(row.fwd_tflops, '.1f')} TFLOP/s)")
    if row.fwd_bwd_ms is not None:
        parts.append(f"fwd+bwd {row.fwd_bwd_ms:.3f} ms ({_fmt(row.fwd_bwd_tflops, '.1f')} TFLOP/s)")
    if row.rel_err is not None:
        parts.append(f"err {row.rel_err:.1e}")
    if row.notes:
        parts.append("; ".join(row.notes))
    return " ".join([head, ", ".join(parts)])


def format_table(result: dict[str, Any]) -> str:
    """The results as a plain-text table, one row per mask x N x method, after the mask parameters."""
    lines = []
    env = result["environment"]
    cfg = result["config"]
    lines.append(
        f"maskc bench  {env.get('gpu') or env.get('cpu') or env['device']}  torch {env['torch']}  triton {env.get('triton')}  "
        f"CUDA {env.get('cuda')}  {env['date']}"
    )
    lines.append(
        f"batch {cfg['batch']}, heads {cfg['heads']}{_kv_heads_text(cfg)}, head dim {cfg['head_dim']}, {cfg['dtype']}, block {cfg['block']}, "
        f"profile {env.get('profile')}, "
        f"maskc backend {cfg['backend']}, rel err over up to {cfg['rows_for_error']} query rows; fwd+bwd FLOPs = {FWD_BWD_FLOP_FACTOR} x fwd"
    )
    for case in result["cases"]:
        if "params" in case:
            params = {k: v for k, v in case["params"].items() if k != "lengths"}
            lines.append(f"  {case['mask']} N={case['n']}: {case.get('description', '')}  {json.dumps(params, default=_json_default)}")
    lines.append("")
    table = [COLUMNS]
    for r in result["results"]:
        predicted = r["detail"].get("predicted") or {}
        table.append((
            r["mask"], str(r["n"]), r["method"],
            _fmt(r["fwd_ms"], ".3f"), _fmt(predicted.get("fwd_ms"), ".3f"), _fmt(r["fwd_tflops"], ".1f"),
            _fmt(r["fwd_bwd_ms"], ".3f"), _fmt(predicted.get("fwd_bwd_ms"), ".3f"), _fmt(r["fwd_bwd_tflops"], ".1f"),
            _fmt(r["rel_err"], ".1e"), r["notes"],
        ))
    widths = [max(len(t[i]) for t in table) for i in range(len(COLUMNS) - 1)]
    numeric = {3, 4, 5, 6, 7, 8, 9}
    for j, t in enumerate(table):
        cells = [t[i].rjust(widths[i]) if i in numeric else t[i].ljust(widths[i]) for i in range(len(widths))]
        lines.append("  ".join(cells + [t[-1]]).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths) + "  -----")
    return "\n".join(lines)


def _kv_heads_text(cfg: dict[str, Any]) -> str:
    """`` over N key/value heads`` for a GQA run's header; nothing otherwise (and for older JSON)."""
    kv = cfg.get("kv_heads")
    return f" over {kv} key/value heads" if kv not in (None, cfg["heads"]) else ""


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
