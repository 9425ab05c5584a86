"""The plans calibration times: synthetic loads of full and partial tiles, and library masks.

The synthetic masks are built from column intervals — each key column visible on one run of query
rows — so an interval plan needs no row of them, and the block-sparse plan is converted from it
tile by tile: calibration never materialises an ``N × N`` mask.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from maskc.compiler import bitmap_plan
from maskc.compiler import compile as compile_mask
from maskc.measure.masks import build_mask
from maskc.runtime.format import LTE, LTS, UTE, UTS, Plan
from maskc.sources import IntervalSource
from maskc.spec import from_spec


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
        return compile_mask(from_spec(json.loads(e.spec)), block=(bm, bn), variant=kernel)
    if e.layout == "bench":
        spec = json.loads(e.spec)
        return compile_mask(build_mask(spec["name"], spec["n"]).source, block=(bm, bn), variant=kernel, reorder="none")
    vectors, q_len, kv_len = synthetic_intervals(e, bm, bn)
    plan = compile_mask(IntervalSource(vectors, (1, 1, q_len, kv_len), "calibration"), block=(bm, bn), variant="intervals", schedule="none")
    return plan if kernel == "intervals" else bitmap_plan(plan)
