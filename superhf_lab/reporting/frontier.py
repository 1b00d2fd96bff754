"""The reward-KL frontier of every algorithm, from the over-optimisation paths its runs logged.

Each run's path (``overoptimisation/sqrt_kl``, ``/gold``, ``/proxy``, one point per evaluation, the starting policy
first; best-of-n: one point per n) is read from the store. Then, per algorithm:

- **the frontier** (the DPO paper's Fig. 2, arXiv 2305.18290): gold reward against KL per sequence for every point of
  every run, and its upper envelope: at a KL budget k, the most gold any point within k reached, linear between the
  envelope's corners (a mixture of two policies reaches at least that line: KL is convex in the mixture);
- **gold at matched KL**: each seed's own envelope read at 1, 2, 4 and 8 nats (not reached: no value), then the mean
  and 95% interval over seeds;
- **Gao et al.'s fits** (arXiv 2210.10760): both forms fitted to the pooled gains over the start, the algorithm's
  own form (best-of-n's for best-of-n, RL's for the trainers) giving alpha, beta and the peak d*;
- **the proxy-gold gap at the end**: proxy gain minus gold gain at each run's last point, averaged over runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from superhf_lab.metrics.overoptimisation import FORMS, GaoFit, fit_gao  # noqa: E402
from superhf_lab.metrics.statistics import mean_and_t_interval  # noqa: E402

MATCHED_KL = (1.0, 2.0, 4.0, 8.0)  # nats per sequence


@dataclass
class RunPath:
    """One run's over-optimisation path: d = sqrt(KL per sequence), gold and proxy reward, the start first."""

    algorithm: str  # the frontier's group (an algorithm, or a named variant of one)
    seed: int
    label: str
    sqrt_kl: np.ndarray
    gold: np.ndarray
    proxy: np.ndarray

    @property
    def kl(self) -> np.ndarray:
        return self.sqrt_kl**2

    @property
    def gold_gain(self) -> np.ndarray:
        return self.gold - self.gold[0]

    @property
    def proxy_gain(self) -> np.ndarray:
        return self.proxy - self.proxy[0]


def envelope(kl: np.ndarray, gold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The corners of the upper envelope: each point that reaches more gold than every point of smaller KL."""
    order = np.lexsort((-gold, kl))
    corners_kl, corners_gold = [], []
    for x, y in zip(kl[order], gold[order]):
        if not corners_gold or y > corners_gold[-1]:
            corners_kl.append(x)
            corners_gold.append(y)
    return np.array(corners_kl), np.array(corners_gold)


def gold_within(paths: list[RunPath], budget: float) -> float:
    """The envelope of ``paths`` (gains over the start) at KL ``budget``; NaN beyond its largest KL."""
    kl = np.concatenate([p.kl for p in paths])
    gain = np.concatenate([p.gold_gain for p in paths])
    if budget > kl.max():
        return math.nan
    corners_kl, corners_gain = envelope(kl, gain)
    return float(np.interp(budget, corners_kl, corners_gain))


@dataclass
class AlgorithmFrontier:
    algorithm: str
    paths: list[RunPath]

    @property
    def form(self) -> str:
        return "best_of_n" if self.algorithm.startswith("best-of-n") else "rl"

    @property
    def seeds(self) -> list[int]:
        return sorted({p.seed for p in self.paths})

    def matched(self, budget: float) -> tuple[float, float, int]:
        """Mean and 95% half-width over seeds of the gold gain within ``budget``, and how many seeds reach it."""
        values = [gold_within([p for p in self.paths if p.seed == seed], budget) for seed in self.seeds]
        reached = [v for v in values if math.isfinite(v)]
        mean, width = mean_and_t_interval(reached) if len(reached) == len(values) else (math.nan, math.nan)
        return mean, width, len(reached)

    def fits(self) -> dict[str, GaoFit | None]:
        d = np.concatenate([p.sqrt_kl for p in self.paths])
        gain = np.concatenate([p.gold_gain for p in self.paths])
        fitted = {}
        for form in FORMS:
            try:
                fitted[form] = fit_gao(d, gain, form)
            except ValueError:  # fewer than 2 points past the start
                fitted[form] = None
        return fitted

    def proxy_fit(self) -> GaoFit | None:
        d = np.concatenate([p.sqrt_kl for p in self.paths])
        try:
            return fit_gao(d, np.concatenate([p.proxy_gain for p in self.paths]), self.form)
        except ValueError:
            return None

    @property
    def max_kl(self) -> float:
        return float(max(p.kl.max() for p in self.paths))

    @property
    def end_gap(self) -> float:
        """Proxy gain minus gold gain at each run's last point, averaged over runs."""
        return float(np.mean([p.proxy_gain[-1] - p.gold_gain[-1] for p in self.paths]))


def frontiers(paths: list[RunPath]) -> list[AlgorithmFrontier]:
    groups: dict[str, list[RunPath]] = {}
    for path in paths:
        groups.setdefault(path.algorithm, []).append(path)
    return [AlgorithmFrontier(name, members) for name, members in groups.items()]


def _number(value: float, digits: int = 3) -> str:
    return "—" if not math.isfinite(value) else f"{value:.{digits}f}"


def _interval(mean: float, width: float) -> str:
    if not math.isfinite(mean):
        return "—"
    return f"{mean:+.3f}" if not math.isfinite(width) else f"{mean:+.3f} ± {width:.3f}"


def frontier_table(groups: list[AlgorithmFrontier], stable: dict[str, str] | None = None) -> str:
    """Markdown: per algorithm, gold gain at matched KL, the largest KL reached, its fit and the end gap; with
    ``stable`` (the learning-rate search's stable share per algorithm), that too."""
    head = [
        "algorithm",
        "runs",
        "largest KL (nats)",
        *(f"gold gain at {k:g} nats" for k in MATCHED_KL),
        "form",
        "α",
        "β",
        "d*",
        "gold gain at d*",
        "R² best-of-n form",
        "R² RL form",
        "proxy − gold gain at the end",
        *(["stable share (lr search)"] if stable is not None else []),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group in groups:
        fits, own = group.fits(), group.fits()[group.form]
        matched = [_interval(*group.matched(k)[:2]) for k in MATCHED_KL]
        cells = [
            group.algorithm,
            str(len(group.paths)),
            _number(group.max_kl, 2),
            *matched,
            "best-of-n" if group.form == "best_of_n" else "RL",
            _number(own.alpha) if own else "—",
            _number(own.beta) if own else "—",
            _number(own.peak_sqrt_kl, 2) if own else "—",
            _number(own.peak_gold_gain) if own else "—",
            *(_number(fits[form].r_squared, 2) if fits[form] else "—" for form in FORMS),
            f"{group.end_gap:+.3f}",
            *([stable.get(group.algorithm, "—")] if stable is not None else []),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_frontier(groups: list[AlgorithmFrontier], path) -> None:
    """Gold reward gain against KL per sequence: every evaluated point, and each algorithm's upper envelope."""
    figure, axis = plt.subplots(figsize=(8, 5))
    for index, group in enumerate(groups):
        colour = f"C{index % 10}"
        kl = np.concatenate([p.kl for p in group.paths])
        gain = np.concatenate([p.gold_gain for p in group.paths])
        axis.scatter(kl, gain, s=12, alpha=0.45, color=colour)
        corners_kl, corners_gain = envelope(kl, gain)
        axis.plot(corners_kl, corners_gain, color=colour, label=group.algorithm)
    axis.axhline(0, color="grey", linewidth=0.6)
    axis.set(
        xlabel="KL(policy ‖ starting policy) per sequence (nats; best-of-n: log n − (n−1)/n)",
        ylabel="gold reward gain over the starting policy",
        title="reward–KL frontier: every evaluation of every run, each algorithm's upper envelope",
    )
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_gao(groups: list[AlgorithmFrontier], path) -> None:
    """Gao et al.'s figure: gold and proxy gain against d = sqrt(KL), one panel per algorithm, the fitted forms."""
    columns = min(3, len(groups))
    rows = math.ceil(len(groups) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.6 * rows), squeeze=False)
    for axis, group in zip(axes.flat, groups):
        d = np.concatenate([p.sqrt_kl for p in group.paths])
        axis.scatter(d, np.concatenate([p.gold_gain for p in group.paths]), s=10, color="C0", label="gold")
        axis.scatter(d, np.concatenate([p.proxy_gain for p in group.paths]), s=10, color="C1", label="proxy")
        grid = np.linspace(0, d.max() * 1.05, 100)
        for fit, colour, name in ((group.fits()[group.form], "C0", "gold"), (group.proxy_fit(), "C1", "proxy")):
            if fit is not None:
                axis.plot(grid, fit.gain(grid), color=colour, label=f"{name} fit (R² {fit.r_squared:.2f})")
        axis.axhline(0, color="grey", linewidth=0.6)
        form = "d(α − βd)" if group.form == "best_of_n" else "d(α − β log d)"
        axis.set(title=f"{group.algorithm}: R(d) = {form}", xlabel="d = sqrt(KL per sequence)", ylabel="gain")
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(groups) :]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
