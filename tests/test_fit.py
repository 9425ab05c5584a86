"""Fitting the cost model's constants: each fit recovers the constants that made its data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from maskc import cost
from maskc.measure import fit
from maskc.measure.experiments import experiments, synthetic_plan


@pytest.fixture(scope="module")
def calibration_work():
    """The work of every GPU calibration experiment at 128x128 tiles (built from intervals, no rows)."""
    return [(e, cost.work_of(synthetic_plan(e, "block_sparse" if e.layout == "bench" else "intervals", 128, 128)))
            for e in experiments(quick=False, cpu=False)]  # a bench mask (a token tree) has no interval form


@pytest.mark.parametrize("floor_ms", [0.0, 0.2])
@pytest.mark.parametrize("pass_", ["fwd", "bwd"])
@pytest.mark.parametrize("concurrency", [128.0, 100.0])
def test_kernel_fit_recovers_the_constants_that_made_its_data(calibration_work, pass_, concurrency, floor_ms):
    rows, cols = cost.ListCosts(0.0008, 0.0021, 0.0034), cost.ListCosts(0.0013, 0.0026, 0.0031)
    true = cost.KernelCosts(0.012, (rows,) if pass_ == "fwd" else (rows, cols), concurrency)
    samples = []
    for e, work in calibration_work:
        lists = (work.rows,) if pass_ == "fwd" else (work.rows, work.cols)
        samples.append(fit.KernelSample(lists, e.heads, true.time(list(lists), e.heads)))
    fitted, stats = fit.fit_kernel(samples, floor_ms)
    tolerance = 1e-9 if concurrency == 128.0 else 1e-4  # 128 lies on the search grid, 100 between its points
    assert fitted.launch_ms == pytest.approx(true.launch_ms, rel=tolerance)
    assert fitted.concurrency == pytest.approx(true.concurrency, rel=tolerance)
    for got, want in zip(fitted.lists, true.lists, strict=True):
        for name in ("program_ms", "full_tile_ms", "partial_tile_ms"):
            assert getattr(got, name) == pytest.approx(getattr(want, name), rel=tolerance), name
    assert stats.samples == len(samples) and stats.max_rel_error < tolerance


def test_kernel_fit_with_noise_stays_close(calibration_work):
    true = cost.KernelCosts(0.012, (cost.ListCosts(0.0008, 0.0021, 0.0034),), 128.0)
    noise = np.random.default_rng(0).normal(0, 0.02, len(calibration_work))
    samples = [fit.KernelSample((w.rows,), e.heads, true.time([w.rows], e.heads) * (1 + z)) for (e, w), z in zip(calibration_work, noise)]
    fitted, stats = fit.fit_kernel(samples)
    (rows,) = fitted.lists
    assert rows.full_tile_ms == pytest.approx(0.0021, rel=0.05) and rows.partial_tile_ms == pytest.approx(0.0034, rel=0.05)
    assert fitted.concurrency == pytest.approx(128, rel=0.1) and stats.rms_rel_error < 0.03


def test_linear_fit_recovers_launch_and_unit_cost():
    units = [1e5, 4e5, 1.6e6, 6.4e6]
    fitted, stats = fit.fit_linear(units, [0.02 + 3e-7 * u for u in units])
    assert fitted.launch_ms == pytest.approx(0.02) and fitted.unit_ms == pytest.approx(3e-7) and stats.max_rel_error < 1e-9
    with pytest.raises(cost.ProfileError, match="at least 2"):
        fit.fit_linear([1.0], [1.0])


def test_pieces_fit_recovers_its_costs():
    true = cost.PiecesCost(piece_ms=0.1, causal_pair_ms=1e-4, full_pair_ms=2e-5)
    counts = [(1, 1000, 0), (2, 0, 1000), (4, 4000, 4000), (1, 0, 9000)]
    fitted, stats = fit.fit_pieces([[n, c, f, n * true.piece_ms + c * true.causal_pair_ms + f * true.full_pair_ms] for n, c, f in counts])
    assert stats.rms_rel_error < 1e-6 and fitted.piece_ms == pytest.approx(0.1) and fitted.full_pair_ms == pytest.approx(2e-5)
    assert dataclasses.asdict(fitted).keys() == {"piece_ms", "causal_pair_ms", "full_pair_ms"}
    with pytest.raises(cost.ProfileError, match="at least 3 positive"):
        fit.fit_pieces([[1, 1000, 0, 0.2], [2, 0, 1000, 0.3]])


def test_a_kernel_fit_refuses_too_few_or_mixed_samples(calibration_work):
    (e, work), *_ = calibration_work
    one = fit.KernelSample((work.rows,), e.heads, 1.0)
    with pytest.raises(cost.ProfileError, match="at least 5 samples"):
        fit.fit_kernel([one] * 4)
    with pytest.raises(cost.ProfileError, match="same number of launches"):
        fit.fit_kernel([one] * 4 + [fit.KernelSample((work.rows, work.cols), e.heads, 1.0)])
    with pytest.raises(cost.ProfileError, match="a kernel sample must hold lists, mult and time_ms"):
        fit.KernelSample.from_dict({"lists": [], "mult": 1})
