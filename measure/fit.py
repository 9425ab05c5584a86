"""Fitting the cost model's constants to measurements: the least-squares fits, and a profile's
entries fitted to the samples they record.

``maskc calibrate`` measures samples on a GPU and fits each profile entry's constants here; the
samples stay in the profile next to the constants, so :func:`refit` (``maskc calibrate --refit``)
fits a changed model again without a GPU. The model the constants belong to (what a sample's time
is predicted to be) is :mod:`maskc.cost`'s; only its fitting lives here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar, nnls

import maskc
from maskc import cost
from maskc.cost import KernelCosts, LinearCost, ListCosts, ListWork, PiecesCost, ProfileError
from maskc.measure.environment import now
from maskc.runtime.format import PlanError


@dataclass(frozen=True)
class KernelSample:
    """One measured pass: the lists each of its launches walked, ``mult``, its time."""

    lists: tuple[ListWork, ...]
    mult: float
    time_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {"lists": [w.as_dict() for w in self.lists], "mult": self.mult, "time_ms": self.time_ms}

    @classmethod
    def from_dict(cls, d: Any) -> "KernelSample":
        try:
            return cls(tuple(ListWork.from_dict(w) for w in d["lists"]), float(d["mult"]), float(d["time_ms"]))
        except (KeyError, TypeError, ValueError, PlanError) as e:
            raise ProfileError(f"a kernel sample must hold lists, mult and time_ms ({e})") from None


@dataclass(frozen=True)
class FitStats:
    """How well a fit reproduces its samples: relative errors ``(predicted - measured) / measured``."""

    samples: int
    rms_rel_error: float
    max_rel_error: float

    def as_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "rms_rel_error": _rounded(self.rms_rel_error), "max_rel_error": _rounded(self.max_rel_error)}


def _rounded(x: float) -> float:
    """Six significant digits, as a profile records its numbers."""
    return float(f"{x:.6g}")


def _stats(predicted: np.ndarray, measured: np.ndarray) -> FitStats:
    rel = (predicted - measured) / measured
    return FitStats(int(measured.size), float(np.sqrt(np.mean(rel**2))), float(np.max(np.abs(rel))))


def _costs(theta: np.ndarray, launches: int, concurrency: float) -> KernelCosts:
    """``theta`` = (launch, then program, full, partial per launch) as KernelCosts."""
    return KernelCosts(float(theta[0]), tuple(ListCosts(*map(float, theta[1 + 3 * i: 4 + 3 * i])) for i in range(launches)), concurrency)


def _design_row(sample: KernelSample, theta: np.ndarray, concurrency: float) -> np.ndarray:
    """The coefficients of (launch, then program, full, partial per launch) in the sample's
    prediction, taking each launch's branch (total or critical path, and which front point) that
    is largest under ``theta``."""
    row = np.zeros(1 + 3 * len(sample.lists))
    row[0] = 1.0
    for i, lists in enumerate(sample.lists):
        own = theta[1 + 3 * i: 4 + 3 * i]
        best = sample.mult * np.array([lists.lists, lists.full, lists.partial], dtype=float)
        for f, p in lists.front:
            critical = concurrency * np.array([1.0, f, p])
            if critical @ own > best @ own:
                best = critical
        row[1 + 3 * i: 4 + 3 * i] = best
    return row


NOISE_FLOOR_MS = {"fwd": 0.0, "bwd": 0.2}
"""Per pass, kernel fits weigh each sample's error relative to its time plus this floor, which
moves the fit's weight from the shortest backward calls to the longer ones. A forward-and-backward
call of a few hundred microseconds was timed 0.40, 0.50 and 0.75 ms in three runs on one H100 (its
forward alone 0.095-0.098 ms: the jitter is in the host's launch path of the backward); forward
times are steady, so the forward has no floor. The value is measured, not derived: refitted with it,
the shipped H100 profile's choices over 22 benchmarked masks (8192 to 131072 tokens, every
candidate timed) are at most 3.4% slower than the fastest candidate (3.4% summed), against 5.2%
(12.8% summed) without; floors from 0.15 to 0.3 ms choose the same plans."""


def _fit_given_concurrency(samples: list[KernelSample], measured: np.ndarray, concurrency: float,
                           floor_ms: float) -> tuple[np.ndarray, float]:
    """Least squares with non-negative constants for one concurrency, each error relative to the
    sample's time plus ``floor_ms``, alternating between fitting and re-taking each sample's largest
    branch until the branches settle."""
    weight = measured + floor_ms
    theta = np.zeros(1 + 3 * len(samples[0].lists))  # all branches tie: start from the total-work branch
    rows = None
    for _ in range(50):
        new_rows = np.stack([_design_row(s, theta, concurrency) for s in samples])
        if rows is not None and np.array_equal(new_rows, rows):
            break
        rows = new_rows
        theta, _ = nnls(rows / weight[:, None], measured / weight)
    costs = _costs(theta, len(samples[0].lists), concurrency)
    predicted = np.array([costs.time(list(s.lists), s.mult) for s in samples])
    return theta, float(np.sum(((predicted - measured) / weight) ** 2))


def fit_kernel(samples: list[KernelSample], floor_ms: float = 0.0, max_concurrency: float = 4096.0) -> tuple[KernelCosts, FitStats]:
    """Fit launch, per-program, per-full-tile and per-partial-tile costs and the concurrency to
    measured launches: a log-spaced search over the concurrency (eighths of an octave from 1 to
    ``max_concurrency``, then tenfold finer around the best, then a bounded scalar minimisation
    between its neighbours), each step a non-negative least-squares fit of the linear constants,
    the errors relative to each time plus ``floor_ms`` (:data:`NOISE_FLOOR_MS` says why)."""
    if len(samples) < 5:
        raise ProfileError(f"a kernel fit needs at least 5 samples, got {len(samples)}")
    if len({len(s.lists) for s in samples}) != 1:
        raise ProfileError("every sample of a kernel fit must have the same number of launches")
    measured = np.array([s.time_ms for s in samples], dtype=float)
    if np.any(measured <= 0):
        raise ProfileError("every measured time must be positive")

    def search(exponents: np.ndarray) -> tuple[float, np.ndarray, float]:
        best = None
        for e in exponents:
            theta, loss = _fit_given_concurrency(samples, measured, float(2.0**e), floor_ms)
            if best is None or loss < best[2] - 1e-15:
                best = (float(2.0**e), theta, loss)
        return best

    top = math.log2(max_concurrency)
    concurrency, theta, loss = search(np.arange(0, top + 1e-9, 1 / 8))
    centre = math.log2(concurrency)
    concurrency, theta, loss = search(np.clip(centre + np.arange(-10, 11) / 80, 0, top))
    centre = math.log2(concurrency)
    refined = minimize_scalar(lambda e: _fit_given_concurrency(samples, measured, float(2.0**e), floor_ms)[1],
                              bounds=(max(0.0, centre - 1 / 80), min(top, centre + 1 / 80)), method="bounded", options={"xatol": 1e-7})
    theta_refined, loss_refined = _fit_given_concurrency(samples, measured, float(2.0**refined.x), floor_ms)
    if loss_refined < loss - 1e-15:
        concurrency, theta = float(2.0**refined.x), theta_refined
    costs = _costs(theta, len(samples[0].lists), concurrency)
    predicted = np.array([costs.time(list(s.lists), s.mult) for s in samples])
    return costs, _stats(predicted, measured)


def fit_pieces(samples: list[list[float]]) -> tuple[PiecesCost, FitStats]:
    """:class:`PiecesCost` fitted to ``[pieces, causal pairs, full pairs, ms]`` measurements (pairs
    over all heads) by relative non-negative least squares."""
    a = np.asarray([x[:3] for x in samples], dtype=float)
    t = np.asarray([x[3] for x in samples], dtype=float)
    if t.size < 3 or np.any(t <= 0):
        raise ProfileError("a dense-pieces fit needs at least 3 positive measurements")
    theta, _ = nnls(a / t[:, None], np.ones_like(t))
    return PiecesCost(*(float(v) for v in theta)), _stats(a @ theta, t)


def fit_linear(units: list[float], times_ms: list[float]) -> tuple[LinearCost, FitStats]:
    """``launch + unit · units`` by relative non-negative least squares."""
    x, t = np.asarray(units, dtype=float), np.asarray(times_ms, dtype=float)
    if x.size < 2 or np.any(t <= 0):
        raise ProfileError("a linear fit needs at least 2 positive measurements")
    a = np.stack([np.ones_like(x), x], axis=1)
    (launch, unit), _ = nnls(a / t[:, None], np.ones_like(t))
    fitted = LinearCost(float(launch), float(unit))
    return fitted, _stats(a @ np.array([launch, unit]), t)


# --- a profile's entries, fitted to their samples ----------------------------------------------


def fit_kernel_entry(entry: dict[str, Any], where: str = "kernel entry") -> dict[str, Any]:
    """A kernel entry's constants and fit statistics, fitted to its ``samples``."""
    samples = [KernelSample.from_dict(x) for x in _samples(entry, where)]
    fitted, stats = fit_kernel(samples, NOISE_FLOOR_MS[entry["pass"]])
    entry.update(fitted.as_dict())
    entry["fit"] = stats.as_dict()
    return entry


def fit_reorder_entry(entry: dict[str, Any], where: str = "reorder entry") -> dict[str, Any]:
    """A reorder entry's factors: per pass, the median over its samples of reordered / plain time."""
    samples = _samples(entry, where)
    factors = {}
    for pass_ in cost.PASSES:
        try:
            ratios = [x[pass_][1] / x[pass_][0] for x in samples]
        except (TypeError, KeyError, IndexError, ZeroDivisionError):
            raise ProfileError(f"{where}: every measurement must hold {pass_!r}: [plain_ms, reordered_ms], plain > 0") from None
        factors[f"{pass_}_factor"] = float(np.median(ratios))
    entry.update(factors)
    return entry


def fit_linear_entry(entry: dict[str, Any], unit_key: str, where: str = "entry") -> dict[str, Any]:
    """An SDPA entry's ``launch + unit · units`` fitted to its ``[units, ms]`` samples."""
    samples = _samples(entry, where)
    if not all(isinstance(x, list) and len(x) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x) for x in samples):
        raise ProfileError(f"{where}: every measurement must be [units, ms]")
    units, times = zip(*samples)
    fitted, stats = fit_linear(list(units), list(times))
    entry.update({"launch_ms": fitted.launch_ms, unit_key: fitted.unit_ms, "fit": stats.as_dict()})
    return entry


def fit_pieces_entry(entry: dict[str, Any], where: str = "pieces entry") -> dict[str, Any]:
    """A dense-pieces entry's constants fitted to its ``[pieces, causal pairs, full pairs, ms]`` samples."""
    samples = _samples(entry, where)
    if not all(isinstance(x, list) and len(x) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x) for x in samples):
        raise ProfileError(f"{where}: every measurement must be [pieces, causal pairs, full pairs, ms]")
    fitted, stats = fit_pieces(samples)
    entry.update({**asdict(fitted), "fit": stats.as_dict()})
    return entry


def describe_kernel_fit(entry: dict[str, Any]) -> str:
    """A fitted kernel entry's constants and error, as one progress line."""
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
    out["kernels"] = [fit_kernel_entry(dict(e), f"kernels[{i}]") for i, e in enumerate(profile["kernels"])]
    out["reorder"] = [fit_reorder_entry(dict(e), f"reorder[{i}]") for i, e in enumerate(profile["reorder"])]
    out["sdpa"] = [fit_linear_entry(dict(e), "pair_ms", f"sdpa[{i}]") for i, e in enumerate(profile["sdpa"])]
    out["pieces"] = [fit_pieces_entry(dict(e), f"pieces[{i}]") for i, e in enumerate(profile.get("pieces", []))]
    out["refits"] = profile.get("refits", []) + [{"date": now(), "maskc": maskc.__version__}]
    cost.parse_profile(out)
    return out


def _samples(entry: dict[str, Any], where: str) -> list:
    samples = entry.get("samples")
    if not isinstance(samples, list) or not samples:
        raise ProfileError(f"{where} records no measurements to fit")
    return samples
