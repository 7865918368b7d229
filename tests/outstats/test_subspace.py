"""The span helpers of bnlab.outstats.subspace on rows whose span is known by construction."""
from __future__ import annotations

import torch

from bnlab.outstats.subspace import orthonormal_basis, overlaps, random_overlaps
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


def test_random_overlaps_are_computed_on_the_basis_device() -> None:
    # PyTorch's meta device stands in for a GPU (devices and shapes, no values): vectors left on the CPU would
    # pull the basis back there
    basis = orthonormal_basis(torch.eye(10, dtype=torch.float64)[:3])[0].to("meta")
    got = random_overlaps(basis, 20, seed=1)
    assert got.device.type == "meta" and got.shape == (20,) and got.dtype == torch.float64


@requires_cuda
def test_random_overlaps_on_the_basis_device() -> None:
    basis, _ = orthonormal_basis(torch.eye(10, dtype=torch.float64)[:3])
    got = random_overlaps(basis.cuda(), 200, seed=1)
    assert got.device.type == "cuda" and got.dtype == torch.float64
    torch.testing.assert_close(got.cpu(), random_overlaps(basis, 200, seed=1))  # the same baseline on any device


def test_no_span_is_an_empty_basis_of_the_rows_length() -> None:
    basis, kept = orthonormal_basis(torch.zeros(3, 7, dtype=torch.float64))
    assert basis.shape == (7, 0) and basis.dtype == torch.float64 and kept == []
    assert torch.equal(overlaps(basis, torch.ones(7, 2, dtype=torch.float64)), torch.zeros(2, dtype=torch.float64))


def test_an_exactly_dependent_row_is_dropped_even_at_rtol_zero() -> None:
    e = torch.eye(4, dtype=torch.float64)
    basis, kept = orthonormal_basis(torch.stack([e[0], 3 * e[0], e[1]]), rtol=0.0)  # remainder exactly 0
    assert kept == [0, 2] and torch.isfinite(basis).all()


def test_overlaps_take_a_basis_of_any_dtype() -> None:
    basis = orthonormal_basis(torch.eye(5)[:2])[0].float()  # e.g. read back from a float32 file
    got = overlaps(basis, torch.tensor([[3.0], [0.0], [4.0], [0.0], [0.0]], dtype=torch.float64))
    torch.testing.assert_close(got, torch.tensor([9 / 25], dtype=torch.float64))


def test_random_overlaps_are_those_of_float64_normal_vectors_from_the_seed() -> None:
    basis, _ = orthonormal_basis(torch.eye(6, dtype=torch.float64)[:2])
    v = torch.randn(6, 20, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(random_overlaps(basis, 20, seed=3), overlaps(basis, v))
