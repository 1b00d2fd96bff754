"""Gao et al.'s over-optimisation measures: the best-of-n estimator against brute force over every subset, and the
functional forms' fits recovering known coefficients from noisy points."""

import itertools
import math

import numpy as np
import pytest

from superhf_lab.metrics.overoptimisation import best_of_n_curve, best_of_n_expectation, best_of_n_kl, fit_gao


def _brute_force(proxy: list[float], gold: list[float], n: int) -> tuple[float, float]:
    """The mean over every n-subset of the proxy's favourite's rewards, ties broken uniformly (their mean)."""
    proxies, golds = [], []
    for subset in itertools.combinations(range(len(proxy)), n):
        best = max(proxy[i] for i in subset)
        tied = [i for i in subset if proxy[i] == best]
        proxies.append(best)
        golds.append(sum(gold[i] for i in tied) / len(tied))
    return sum(proxies) / len(proxies), sum(golds) / len(golds)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_the_best_of_n_estimator_equals_enumerating_every_subset(n):
    rng = np.random.default_rng(n)
    proxy = [0.3, 1.2, -0.4, 1.2, 0.9, -1.0, 0.3, 2.0]  # ties at 1.2 and 0.3
    gold = rng.normal(size=8).tolist()
    expected = _brute_force(proxy, gold, n)
    assert best_of_n_expectation(np.array(proxy), np.array(gold), n) == pytest.approx(expected, abs=1e-12)


def test_the_curve_runs_n_in_powers_of_two_at_gaos_kl_with_best_of_1_the_pool_mean():
    rng = np.random.default_rng(0)
    pools = [(rng.normal(size=16), rng.normal(size=16)) for _ in range(3)]
    curve = best_of_n_curve(pools)
    assert [point["n"] for point in curve] == [1, 2, 4, 8, 16]
    assert curve[0]["kl"] == 0 and curve[-1]["kl"] == pytest.approx(math.log(16) - 15 / 16)
    assert curve[0]["gold"] == pytest.approx(np.mean([gold.mean() for _, gold in pools]))
    assert curve[-1]["proxy"] == pytest.approx(np.mean([proxy.max() for proxy, _ in pools]))
    assert all(a["proxy"] <= b["proxy"] for a, b in zip(curve, curve[1:])), "more samples, a better favourite"
    assert best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)


@pytest.mark.parametrize(("form", "alpha", "beta"), [("best_of_n", 1.5, 0.4), ("rl", 0.8, 0.3)])
def test_gaos_forms_are_recovered_from_noisy_points(form, alpha, beta):
    rng = np.random.default_rng(1)
    d = np.linspace(0.1, 4.0, 40)
    clean = d * (alpha - beta * (d if form == "best_of_n" else np.log(d)))
    fit = fit_gao(d, clean + rng.normal(scale=0.02, size=d.shape), form)
    assert fit.alpha == pytest.approx(alpha, abs=0.03) and fit.beta == pytest.approx(beta, abs=0.03)
    assert fit.r_squared > 0.99 and fit.points == 40
    peak = alpha / (2 * beta) if form == "best_of_n" else math.exp(alpha / beta - 1)
    assert fit.peak_sqrt_kl == pytest.approx(peak, rel=0.1)
    assert fit.peak_gold_gain == pytest.approx(float(np.max(fit.gain(np.linspace(0.01, 20, 20_000)))), rel=1e-3)


def test_a_fit_needs_two_points_away_from_the_start():
    with pytest.raises(ValueError, match="at least 2 points with KL > 0"):
        fit_gao(np.array([0.0, 1.0]), np.array([0.0, 0.5]), "rl")
