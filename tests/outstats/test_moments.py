"""Pooled output statistics through their raw moments (bnlab.outstats.moments) against the statistics
computed directly, values and gradients, about no shift and about a shift away from the mean (where
the E1 terms of var = E2 - E1^2 and skew = E3 - 3 E1 E2 + 2 E1^3 do not vanish)."""
from __future__ import annotations

import pytest
import torch

from bnlab.outstats.moments import batch_terms, channel_count, channel_view, finalize

STATS = ("mean", "var", "skew")


def direct(out: torch.Tensor) -> torch.Tensor:
    """(3, C): per-channel mean, population variance, third central moment over examples and positions."""
    v = out.transpose(0, 1).reshape(out.shape[1], -1)
    m = v.mean(1)
    d = v - m[:, None]
    return torch.stack([m, (d ** 2).mean(1), (d ** 3).mean(1)])


def outputs(theta: torch.Tensor) -> list[torch.Tensor]:
    """Two batches (sizes 5 and 2) of (B, C=3, L=4) outputs, smooth in theta (P = 6), skewed, off-centre."""
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(b, 3, 4, dtype=torch.float64, generator=g) for b in (5, 2)]
    return [torch.exp(0.5 * x * theta[:3].view(1, 3, 1)) + theta[3:].view(1, 3, 1) * x + 2.0 for x in xs]


@pytest.mark.parametrize("shift", [None, "off_mean"])
def test_pooled_statistics_and_gradients_equal_the_direct_ones(shift: str | None) -> None:
    theta = torch.tensor([0.8, -0.5, 1.2, 0.3, 0.1, -0.4], dtype=torch.float64)
    whole = lambda t: torch.cat(outputs(t))  # noqa: E731
    want = direct(whole(theta))
    want_grad = torch.autograd.functional.jacobian(lambda t: direct(whole(t)), theta)  # (3, C, P)
    a = None if shift is None else want[0] + 0.7  # a shift the E1 terms see
    n = sum(o.shape[0] for o in outputs(theta))

    def summed_terms(t: torch.Tensor) -> torch.Tensor:
        return sum(batch_terms(o, STATS, "pooled", o.shape[0] / n, shift=a) for o in outputs(t))

    terms = summed_terms(theta)
    grads = torch.autograd.functional.jacobian(summed_terms, theta)  # (T, C, P)
    vals, gs = finalize(terms, grads, STATS, "pooled", shift=a)
    torch.testing.assert_close(vals, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gs, want_grad, rtol=1e-10, atol=1e-12)


def test_per_batch_statistics_one_at_a_time_and_channel_helpers() -> None:
    out = outputs(torch.tensor([0.8, -0.5, 1.2, 0.3, 0.1, -0.4], dtype=torch.float64))[0]
    want = direct(out)
    for i, s in enumerate(STATS):  # each statistic alone (the centred values are needed by var and skew)
        torch.testing.assert_close(batch_terms(out, (s,), "per-batch", 0.5)[0], 0.5 * want[i])
    assert channel_count(out) == 5 * 4
    assert channel_view(torch.arange(5.0)).shape == (5, 1, 1)  # a (B,) output is one channel
    assert channel_count(torch.arange(5.0)) == 5


@pytest.mark.parametrize("stats, orders", [(("mean",), 1), (("mean", "var"), 2), (("skew",), 3), (("var",), 2)])
def test_pooled_terms_hold_only_the_orders_the_statistics_need(stats: tuple[str, ...], orders: int) -> None:
    # every row is a gradient to take (one backward pass per channel and row): none beyond the highest order asked
    out = torch.randn(4, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    terms = batch_terms(out, stats, "pooled", 1.0, shift=torch.zeros(3, dtype=torch.float64))
    assert terms.shape == (orders, 3)


def test_pooled_terms_keep_the_outputs_dtype() -> None:
    # the shift is float64 (from the pre-pass); a float32 model's terms stay float32, as its autograd graph is
    out = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(1))
    shift = torch.full((3,), 0.25, dtype=torch.float64)
    terms = batch_terms(out, ("mean", "var"), "pooled", 1.0, shift=shift)
    assert terms.dtype == torch.float32
    torch.testing.assert_close(terms[0], (out - 0.25).mean(dim=(0, 2)))
