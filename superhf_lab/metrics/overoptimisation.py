"""Reward over-optimisation as Gao et al. 2022 (arXiv 2210.10760) measure it: gold reward against
d = sqrt(KL(policy || starting policy)), best-of-n as a whole curve from one pool of samples, and the functional
forms fitted to it.

- :func:`best_of_n_curve`: for n = 1, 2, 4, ..., N, the expected proxy and gold reward of the proxy's favourite among
  n completions drawn without replacement from a pool of N, exactly: over all C(N, n) subsets, the completion ranked
  i-th by the proxy (0 = best) is a subset's favourite in C(N - 1 - i, n - 1) of them. No re-sampling loop.
- :func:`fit_gao`: Gao et al.'s forms for the gold reward gain R(d) over the starting policy, best-of-n
  R(d) = d (alpha - beta d) and RL R(d) = d (alpha - beta log d); both are linear in alpha and beta once divided by
  d, so a least-squares line gives them; with the peak d* and R(d*), and the fit's R^2 on R(d).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln

FORMS = ("best_of_n", "rl")


def best_of_n_kl(n: int) -> float:
    """The KL of best-of-n to the policy it samples, ``log n - (n - 1) / n`` nats (Stiennon et al. 2020): an upper
    bound (Beirami et al. 2024, arXiv 2401.01879), which Gao et al. use as its KL."""
    return math.log(n) - (n - 1) / n


def favourite_weights(pool: int, n: int) -> np.ndarray:
    """For each rank i = 0 (the proxy's best) .. pool - 1, the probability that it is the best of n drawn without
    replacement: C(pool - 1 - i, n - 1) / C(pool, n), in log space (exact to float rounding for any pool)."""
    if not 1 <= n <= pool:
        raise ValueError(f"n={n} must be between 1 and the pool's {pool} completions")
    ranks = np.arange(pool)
    others = pool - 1 - ranks  # completions ranked below rank i
    weights = np.zeros(pool)
    possible = others >= n - 1
    log_choose = gammaln(others[possible] + 1) - gammaln(n) - gammaln(others[possible] - n + 2)
    log_total = gammaln(pool + 1) - gammaln(n + 1) - gammaln(pool - n + 1)
    weights[possible] = np.exp(log_choose - log_total)
    return weights


def best_of_n_expectation(proxy: np.ndarray, gold: np.ndarray, n: int) -> tuple[float, float]:
    """Expected (proxy, gold) reward of the proxy's favourite among n of one prompt's pool drawn without replacement.
    Ties in the proxy are broken uniformly at random: tied completions share their ranks' weights equally."""
    proxy, gold = np.asarray(proxy, dtype=float), np.asarray(gold, dtype=float)
    order = np.argsort(-proxy, kind="stable")
    proxy, gold = proxy[order], gold[order]
    weights = favourite_weights(len(proxy), n)
    _, first, counts = np.unique(-proxy, return_index=True, return_counts=True)
    for start, count in zip(first, counts):  # a tie group spreads its total weight evenly over its members
        if count > 1:
            weights[start : start + count] = weights[start : start + count].mean()
    return float(weights @ proxy), float(weights @ gold)


def best_of_n_curve(pools: list[tuple[np.ndarray, np.ndarray]]) -> list[dict[str, float]]:
    """One point per n = 1, 2, 4, ... up to the smallest pool: the mean over prompts (each a (proxy, gold) pool) of
    the favourite's expected proxy and gold reward, at KL ``log n - (n - 1) / n`` and d = sqrt(KL)."""
    smallest = min(len(proxy) for proxy, _ in pools)
    points = []
    n = 1
    while n <= smallest:
        expectations = np.array([best_of_n_expectation(proxy, gold, n) for proxy, gold in pools])
        kl = best_of_n_kl(n)
        points.append(
            {
                "n": n,
                "kl": kl,
                "sqrt_kl": math.sqrt(kl),
                "proxy": expectations[:, 0].mean(),
                "gold": expectations[:, 1].mean(),
            }
        )
        n *= 2
    return points


@dataclass
class GaoFit:
    """Gao et al.'s form fitted to gold reward gains R at d = sqrt(KL)."""

    form: str
    alpha: float
    beta: float
    r_squared: float  # of R(d) itself, not of R / d
    points: int

    def gain(self, d: np.ndarray | float) -> np.ndarray | float:
        d = np.asarray(d, dtype=float)
        if self.form == "best_of_n":
            return d * (self.alpha - self.beta * d)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(d > 0, d * (self.alpha - self.beta * np.log(np.where(d > 0, d, 1.0))), 0.0)

    @property
    def peak_sqrt_kl(self) -> float:
        """d* where R(d) is largest (inf when beta <= 0: the gold gain never turns down within the form)."""
        if self.beta <= 0:
            return math.inf
        if self.form == "best_of_n":
            return self.alpha / (2 * self.beta)
        return math.exp(self.alpha / self.beta - 1)  # R'(d) = alpha - beta log d - beta = 0

    @property
    def peak_gold_gain(self) -> float:
        d = self.peak_sqrt_kl
        return math.inf if math.isinf(d) else float(self.gain(d))


def fit_gao(sqrt_kl: np.ndarray, gain: np.ndarray, form: str) -> GaoFit:
    """alpha and beta by least squares over the points with d > 0. R / d = alpha - beta f(d) (f(d) = d for best-of-n,
    log d for RL) is linear in them; fitted as R = alpha d - beta d f(d), i.e. that line weighted by d^2, so that the
    residuals minimised are those of the gold gain R itself."""
    if form not in FORMS:
        raise ValueError(f"form={form!r}: use one of {FORMS}")
    d, gain = np.asarray(sqrt_kl, dtype=float), np.asarray(gain, dtype=float)
    used = (d > 0) & np.isfinite(d) & np.isfinite(gain)
    d, gain = d[used], gain[used]
    if len(d) < 2:
        raise ValueError(f"fitting {form} needs at least 2 points with KL > 0, got {len(d)}")
    feature = d if form == "best_of_n" else np.log(d)
    # R = alpha d - beta d f(d): linear in (alpha, beta) directly
    design = np.stack([d, -d * feature], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(design, gain, rcond=None)
    fitted = design @ np.array([alpha, beta])
    total = float(((gain - gain.mean()) ** 2).sum())
    r_squared = 1 - float(((gain - fitted) ** 2).sum()) / total if total > 0 else math.nan
    return GaoFit(form, float(alpha), float(beta), r_squared, len(d))


# The path a run traces: one point per evaluation (the starting policy first, at step 0), under one name for every
# algorithm, so one MLflow chart puts every run's gold reward against sqrt(KL).
SQRT_KL, GOLD, PROXY = "overoptimisation/sqrt_kl", "overoptimisation/gold", "overoptimisation/proxy"
PATH_NAMES = (SQRT_KL, GOLD, PROXY)
# Gao et al.'s form fitted to the run's own path, logged at its last point once it has 2 points past the start.
FIT_NAMES = tuple(
    f"overoptimisation/{name}" for name in ("alpha", "beta", "r_squared", "r_squared_best_of_n", "r_squared_rl")
)
# Where the fitted gold gain peaks, and the proxy's fitted gain there: logged only when the fit turns down (beta > 0).
PEAK_NAMES = tuple(f"overoptimisation/{name}" for name in ("peak_sqrt_kl", "peak_gold_gain", "proxy_gain_at_peak"))


def path_point(sequence_kl: float, gold: float, proxy: float) -> dict[str, float]:
    """One point of a run's path: d = sqrt of the mean KL per sequence, the mean gold and proxy rewards."""
    return {SQRT_KL: math.sqrt(max(sequence_kl, 0.0)), GOLD: gold, PROXY: proxy}


def path_fit(history: dict[str, list[float]], form: str) -> dict[str, float]:
    """Gao et al.'s ``form`` fitted to a run's path (``history``: each path name's values in step order, the
    starting policy's first): alpha, beta and R^2 of the gold gain over the start, R^2 of both forms, and the peak
    when the fit turns down, with the proxy's gain there (the same form fitted to the proxy). Empty when the path
    does not start at KL 0, has fewer than 2 later points, or has no gold reward."""
    if any(not history.get(name) for name in PATH_NAMES):
        return {}
    d, gold, proxy = (np.asarray(history[name], dtype=float) for name in PATH_NAMES)
    if d[0] != 0 or (d > 0).sum() < 2 or not np.isfinite(gold).all():
        return {}
    fits = {name: fit_gao(d, gold - gold[0], name) for name in FORMS}
    fit = fits[form]
    metrics = dict(zip(FIT_NAMES, (fit.alpha, fit.beta, fit.r_squared, *(fits[f].r_squared for f in FORMS))))
    if math.isfinite(fit.peak_sqrt_kl):
        proxy_fit = fit_gao(d, proxy - proxy[0], form)
        values = (fit.peak_sqrt_kl, fit.peak_gold_gain, float(proxy_fit.gain(fit.peak_sqrt_kl)))
        metrics.update(zip(PEAK_NAMES, values))
    return {name: value for name, value in metrics.items() if math.isfinite(value)}
