"""nc_core.etf: simplex ETF, closed-form nearest ETF vs scipy Procrustes, distances, differentiable polar."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metrics_reference import _procrustes_nearest
from nc_core.etf import (etf_distance, etf_gram, etf_pair_distance, helmert_basis, nearest_etf, polar,
                         simplex_etf)


@pytest.mark.parametrize("K,d", [(2, 1), (5, 4), (5, 5), (10, 512)])
def test_simplex_etf_structure(K, d):
    E = simplex_etf(K, d)
    assert E.shape == (d, K) and E.dtype == torch.float64
    assert torch.allclose(E.sum(1), torch.zeros(d, dtype=torch.float64), atol=1e-15)
    assert torch.allclose(E.T @ E, etf_gram(K) / math.sqrt(K - 1), atol=1e-15)
    assert float(torch.linalg.norm(E)) == pytest.approx(1.0, abs=1e-15)
    U = simplex_etf(K, d, unit_columns=True)
    G = U.T @ U
    assert torch.allclose(torch.diag(G), torch.ones(K, dtype=torch.float64), atol=1e-14)
    off = G[~torch.eye(K, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, -1 / (K - 1)), atol=1e-14)


def test_helmert_basis_and_bad_sizes():
    Q = helmert_basis(7)
    assert torch.allclose(Q.T @ Q, torch.eye(6, dtype=torch.float64), atol=1e-15)
    assert torch.allclose(Q @ Q.T, torch.eye(7, dtype=torch.float64) - 1 / 7, atol=1e-15)
    with pytest.raises(ValueError, match=r"needs d >= K-1 = 4, got d=3"):
        simplex_etf(5, 3)
    with pytest.raises(ValueError, match=r"expected an integer K >= 2, got 1"):
        etf_gram(1)


@pytest.mark.parametrize("d,K", [(12, 5), (4, 5), (5, 5)])
def test_nearest_etf_matches_scipy_procrustes(d, K):
    rng = np.random.default_rng(d + K)
    Y = rng.normal(size=(d, K))
    Y /= np.linalg.norm(Y)
    E = nearest_etf(torch.from_numpy(Y)).numpy()
    E_ref = _procrustes_nearest(Y)
    np.testing.assert_allclose(E, E_ref, atol=1e-13)
    dist = float(etf_distance(torch.from_numpy(Y)))
    assert dist == pytest.approx(np.sum((Y - E_ref) ** 2), rel=1e-12)
    Mt = etf_gram(K).numpy()
    nuc = np.linalg.svd(Y @ Mt, compute_uv=False).sum()
    assert dist == pytest.approx(2 - 2 * nuc, rel=1e-12)  # closed form 2 − 2‖Y M̃‖_*
    assert np.allclose(E.T @ E, Mt / math.sqrt(K - 1), atol=1e-13)  # the answer is an ETF


def test_closed_form_beats_random_stiefel_points():
    rng = np.random.default_rng(0)
    d, K = 7, 4
    Y = torch.from_numpy(rng.normal(size=(d, K)))
    best = float(etf_distance(Y))
    Mt = etf_gram(K)
    for _ in range(300):
        P, _ = torch.linalg.qr(torch.from_numpy(rng.normal(size=(d, K))))
        assert float(((Y - P @ Mt) ** 2).sum()) >= best - 1e-12


def test_etf_is_its_own_nearest_and_pair_distance():
    K, d = 6, 9
    Q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    E = Q @ simplex_etf(K, d)
    assert float(etf_distance(E)) < 1e-28
    assert torch.allclose(nearest_etf(E), E, atol=1e-14)
    Y = torch.randn(d, K, dtype=torch.float64)
    assert float(etf_pair_distance(Y, Y)) == 0.0
    assert float(etf_pair_distance(Y, E)) == pytest.approx(float(etf_pair_distance(E, Y)), rel=1e-14)
    with pytest.raises(ValueError, match=r"shapes differ"):
        etf_pair_distance(Y, Y[:, :3])


def test_polar_forward_properties():
    A = torch.randn(3, 9, 5, dtype=torch.float64)  # batched, tall
    Q = polar(A)
    assert torch.allclose(Q.mT @ Q, torch.eye(5, dtype=torch.float64).expand(3, 5, 5), atol=1e-13)
    H = Q.mT @ A  # symmetric positive definite factor
    assert torch.allclose(H, H.mT, atol=1e-12)
    assert bool((torch.linalg.eigvalsh(H) > 0).all())
    Wd = torch.randn(4, 7, dtype=torch.float64)  # wide
    Qw = polar(Wd)
    assert torch.allclose(Qw @ Qw.T, torch.eye(4, dtype=torch.float64), atol=1e-13)


def test_polar_gradient_matches_finite_differences():
    A = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(polar, (A,))
    S = torch.randn(5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(polar, (S,))
    Wd = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(polar, (Wd,))


def test_polar_gradient_stable_at_repeated_singular_values():
    """At an exact (scaled) Stiefel point all singular values coincide: the generic SVD backward
    divides by zero, the polar rule does not."""
    gen = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(8, 4, dtype=torch.float64, generator=gen))
    A = (2.0 * Q).requires_grad_(True)
    G = torch.randn(8, 4, dtype=torch.float64, generator=gen)
    (polar(A) * G).sum().backward()
    assert bool(torch.isfinite(A.grad).all())
    assert torch.autograd.gradcheck(polar, (A.detach().clone().requires_grad_(True),))
    B = (2.0 * Q).requires_grad_(True)
    U, _, Vh = torch.linalg.svd(B, full_matrices=False)
    (U @ Vh * G).sum().backward()
    # why the custom rule exists: σ_i² − σ_j² is 0 (or rounding noise), so the generic gradient blows up
    assert not bool(torch.isfinite(B.grad).all()) or float(B.grad.abs().max()) > 1e6 * float(A.grad.abs().max())


def test_polar_matches_generic_autograd_when_singular_values_distinct():
    A = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    G = torch.randn(6, 3, dtype=torch.float64)
    (polar(A) * G).sum().backward()
    ours = A.grad.clone()
    A.grad = None
    U, _, Vh = torch.linalg.svd(A, full_matrices=False)
    (U @ Vh * G).sum().backward()
    assert torch.allclose(ours, A.grad, atol=1e-10)
