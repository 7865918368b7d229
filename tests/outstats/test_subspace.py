"""The span helpers of bnlab.outstats.subspace on rows whose span is known by construction."""
from __future__ import annotations

import torch

from bnlab.outstats.subspace import orthonormal_basis, random_overlaps
from conftest import requires_cuda


def test_basis_drops_zero_and_dependent_rows_wherever_they_are_and_keeps_small_ones() -> None:
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(7, dtype=torch.float64, generator=g) for _ in range(3))
    rows = torch.stack([torch.zeros(7), 1e3 * a, 2 * a - 1e3 * a, b, 1e-6 * c])  # zero, a, in span(a), b, tiny c
    basis, kept = orthonormal_basis(rows)
    assert kept == [1, 3, 4]  # the zero and the dependent rows dropped, rows after them still considered
    torch.testing.assert_close(basis.T @ basis, torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-12)
    for row in (a, b, c):  # the span is exactly that of a, b, c
        torch.testing.assert_close(basis @ (basis.T @ row), row, rtol=1e-10, atol=1e-12)
    # a remainder below rtol x the row's own norm is dependent, whatever the row's scale
    big = torch.stack([1e4 * a, 1e4 * (a + 1e-10 * b)])
    assert orthonormal_basis(big)[1] == [0]


def test_random_overlaps_are_seeded_and_float64() -> None:
    basis, _ = orthonormal_basis(torch.eye(10, dtype=torch.float64)[:3])
    one, again, other = random_overlaps(basis, 50, seed=1), random_overlaps(basis, 50, seed=1), random_overlaps(
        basis, 50, seed=2)
    assert one.dtype == torch.float64 and one.shape == (50,)
    assert torch.equal(one, again) and not torch.equal(one, other)
    assert torch.equal(random_overlaps(basis, 50), random_overlaps(basis, 50, seed=0))  # the default seed
    assert abs(float(one.mean()) - 0.3) < 0.1  # r / P in expectation


@requires_cuda
def test_random_overlaps_on_the_basis_device() -> None:
    basis, _ = orthonormal_basis(torch.eye(10, dtype=torch.float64, device="cuda")[:3])
    got = random_overlaps(basis, 200, seed=1)
    assert got.device.type == "cuda" and got.dtype == torch.float64
    assert abs(float(got.mean()) - 0.3) < 0.05
