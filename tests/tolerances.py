"""Float tolerances the tests derive from rounding, not from what one machine happened to print.

A float sum of n terms, added in any order, is off by at most (n - 1) unit roundoffs (eps / 2) times the sum of the
terms' magnitudes: below eps x n x scale, where scale is that sum of magnitudes (the quantity's own size when its
terms do not cancel). A quantity built from nested reductions (a vocabulary sum inside a token mean inside a
minibatch sum) is off by eps x (the sum of their lengths) x scale, to first order. Two computations of one quantity
in different orders (1 or 2 processes, micro-batches) each stay within that bound of the exact value; the bound
with eps rather than eps / 2 covers the difference of both.
"""

from __future__ import annotations

import torch

FP32_EPS = torch.finfo(torch.float32).eps  # 2**-23, about 1.19e-7
FP64_EPS = torch.finfo(torch.float64).eps  # 2**-52, about 2.2e-16


def fp32_tolerance(terms: int, scale: float = 1.0) -> float:
    """The rounding of ``terms`` float32 additions (or other roundings) on numbers of size ``scale``."""
    return FP32_EPS * terms * scale


def fp64_tolerance(terms: int, scale: float = 1.0) -> float:
    """The rounding of ``terms`` float64 operations on numbers of size ``scale`` (Python floats, numpy)."""
    return FP64_EPS * terms * scale


def adam_tolerance(
    expected_steps: list[dict[str, torch.Tensor]],
    actual_steps: list[dict[str, torch.Tensor]],
    weights: dict[str, torch.Tensor],
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> dict[str, torch.Tensor]:
    """Per weight, how far apart (Adam)W's weights may end after the same steps from the same start, given the
    gradients each run's steps were given (``expected_steps``, ``actual_steps``: one dict of gradients per step).

    Adam's update of step t is u = m / (sqrt(v) + eps), with bias-corrected moments m = sum_s a_s g_s and
    v = sum_s b_s g_s^2 over steps s <= t (a_s, b_s >= 0, each summing to 1). Gradients that differ by at most d
    change m and sqrt(v) by at most d each, and |m| / sqrt(v) <= c = sqrt(sum_s a_s^2 / b_s) (Cauchy-Schwarz; c = 1
    at the first step), so the update moves by at most (1 + c) d / (sqrt(v) + eps), the weight by lr times that.
    Where a gradient is far above its float error this is tiny; where it is float noise itself (a gradient that is
    0 in exact arithmetic, as most of a key bias's: softmax cancels it), Adam scales the noise up towards a whole
    step of lr, and so does this bound. Weight decay only shrinks a difference. Each step also rounds the update
    (about ten float32 operations on numbers <= lr) and the new weight (half an ulp of it), in each run.
    """
    beta1, beta2 = betas
    bounds = {}
    for name, weight in weights.items():
        bound, first, second, difference, t = torch.zeros_like(weight), 0.0, 0.0, torch.zeros_like(weight), 0
        for expected, actual in zip(expected_steps, actual_steps, strict=True):
            if name not in expected and name not in actual:  # no gradient in either run: Adam leaves it be
                continue
            t, gradient = t + 1, expected[name]
            difference = torch.maximum(difference, (actual[name] - gradient).abs())
            first = beta1 * first + (1 - beta1) * gradient
            second = beta2 * second + (1 - beta2) * gradient**2
            a = [(1 - beta1) * beta1 ** (t - s) / (1 - beta1**t) for s in range(1, t + 1)]
            b = [(1 - beta2) * beta2 ** (t - s) / (1 - beta2**t) for s in range(1, t + 1)]
            c = sum(a_s**2 / b_s for a_s, b_s in zip(a, b)) ** 0.5
            bound += lr * (1 + c) * difference / ((second / (1 - beta2**t)).sqrt() + eps)
        bounds[name] = bound + fp32_tolerance(t, weight.abs() + 10 * lr)
    return bounds


def assert_within(
    actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], bounds: dict[str, torch.Tensor]
) -> None:
    """Every entry of ``actual`` within its own bound of ``expected``."""
    for name, value in expected.items():
        excess = (actual[name] - value).abs() - bounds[name]
        assert excess.max() <= 0, (
            f"{name}: {int((excess > 0).sum())} entries beyond their bound, the worst by {excess.max().item():.3g}"
        )
