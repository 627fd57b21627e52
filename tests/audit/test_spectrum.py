"""Oracle tests for the factored spectrum against a dense SVD of B·A."""

from __future__ import annotations

import numpy as np
import pytest

from gradience.audit import spectrum as S
from gradience.audit.metrics import energy_rank, module_metrics

from ._helpers import assert_sigma_close, dense_sigma


def _with_spectrum(rng: np.random.Generator, m: int, r: int, sv: np.ndarray) -> np.ndarray:
    u, _ = np.linalg.qr(rng.standard_normal((m, r)))
    v, _ = np.linalg.qr(rng.standard_normal((r, r)))
    return (u * sv) @ v.T


@pytest.mark.parametrize("seed", range(4))
def test_random_factors_match_dense_svd(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((5, 8, 70))
    b = rng.standard_normal((5, 50, 8))
    got = S.singular_values(a, b)
    for i in range(5):
        assert_sigma_close(got[i], dense_sigma(a[i], b[i]))


@pytest.mark.parametrize("kappa_exp", [2, 4, 5, 6, 9])
def test_ill_conditioned_b_takes_the_accurate_path(kappa_exp: int) -> None:
    """κ(B) from 1e2 to 1e9 exercises the fast, refined (Cholesky-QR2) and Householder paths."""
    rng = np.random.default_rng(kappa_exp)
    r = 12
    a = rng.standard_normal((r, 300)) / 17
    b = _with_spectrum(rng, 400, r, np.logspace(0, -kappa_exp, r))
    got = S.singular_values(a[None], b[None])[0]
    assert_sigma_close(got, dense_sigma(a, b))


def test_tiny_and_huge_scales() -> None:
    rng = np.random.default_rng(7)
    a = rng.standard_normal((6, 40))
    b = rng.standard_normal((30, 6))
    for c in (1e-30, 1e-8, 1e8, 1e30):
        got = S.singular_values((a * c)[None], b[None])[0]
        assert_sigma_close(got, dense_sigma(a * c, b))


def test_rank_deficient_and_zero() -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((8, 60))
    b = rng.standard_normal((40, 3)) @ rng.standard_normal((3, 8))  # rank 3
    got = S.singular_values(a[None], b[None])[0]
    ref = dense_sigma(a, b)
    assert_sigma_close(got, ref)
    assert np.all(got[3:] <= 1e-12 * got[0])
    zero = S.singular_values(a[None], np.zeros((1, 40, 8)))[0]
    assert np.array_equal(zero, np.zeros(8))


def test_nonfinite_module_is_isolated_in_its_batch() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4, 20))
    b = rng.standard_normal((3, 10, 4))
    a[1, 2, 3] = np.nan
    b[2, 0, 0] = np.inf
    got = S.singular_values(a, b)
    assert np.isnan(got[1]).all() and np.isnan(got[2]).all()
    assert_sigma_close(got[0], dense_sigma(a[0], b[0]))


@pytest.mark.parametrize("kappa_exp", [1, 5, 12])
def test_factored_svd_reconstructs_product(kappa_exp: int) -> None:
    rng = np.random.default_rng(kappa_exp)
    a = rng.standard_normal((2, 6, 33))
    b = np.stack([_with_spectrum(rng, 25, 6, np.logspace(0, -kappa_exp, 6)) for _ in range(2)])
    f = S.factored_svd(a, b)
    recon = (f.left * f.sigma[:, None, :]) @ f.right.transpose(0, 2, 1)
    assert np.linalg.norm(recon - b @ a) <= 1e-12 * np.linalg.norm(b @ a)
    for i in range(2):
        np.testing.assert_allclose(f.left[i].T @ f.left[i], np.eye(6), atol=1e-9)
        np.testing.assert_allclose(f.right[i].T @ f.right[i], np.eye(6), atol=1e-9)


def test_energy_rank_is_exact_at_boundaries() -> None:
    # energies 0.81, 0.09, 0.06, 0.04 of 1 -> 90% reached at exactly k=2, 95% at 3, 99% at 4
    s = np.sqrt(np.array([0.81, 0.09, 0.06, 0.04]))
    assert [energy_rank(s, lv) for lv in (0.90, 0.95, 0.99)] == [2, 3, 4]
    assert energy_rank(np.zeros(4), 0.9) == 0


def test_module_metrics_definitions() -> None:
    s = np.array([4.0, 2.0, 1.0, 0.0])
    m = module_metrics(s, r=4, scale=-0.5, top_k=2)
    assert m["stable_rank"] == pytest.approx(21 / 16)
    assert m["utilization"] == pytest.approx(21 / 64)
    p = np.array([4, 2, 1]) / 7
    assert m["effective_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    assert m["delta_sigma_max"] == pytest.approx(2.0)
    assert m["delta_fro_norm"] == pytest.approx(0.5 * np.sqrt(21))
    assert m["top_singular_values"] == [4.0, 2.0]
    assert (m["energy_rank_90"], m["energy_rank_95"], m["energy_rank_99"]) == (2, 2, 3)  # cumulative 16/21, 20/21, 21/21


def test_fast_path_certificate_only_passes_well_conditioned_batches() -> None:
    rng = np.random.default_rng(7)
    def gram(kappa: float) -> np.ndarray:
        x = _with_spectrum(rng, 300, 16, np.geomspace(1.0, 1.0 / kappa, 16))
        return x.T @ x

    assert S._certified_fast(np.stack([gram(10.0), gram(1e3)]))
    # The certificate is conservative by at most √r in κ; a factor past the fast-path limit
    # must never be certified, and one bad module sends the whole batch to eigvalsh.
    assert not S._certified_fast(np.stack([gram(10.0), gram(S._KAPPA_FAST * 1.5)]))
    assert not S._certified_fast(np.stack([gram(10.0), np.zeros((16, 16))]))
    assert not S._certified_fast(np.stack([gram(10.0), np.full((16, 16), np.nan)]))
    # Either way the spectrum is the same: streamed Gram + certificate vs a dense SVD.
    a = np.stack([_with_spectrum(rng, 90, 16, np.geomspace(1, 1e-2, 16)).T for _ in range(3)])
    b = np.stack([_with_spectrum(rng, 70, 16, np.geomspace(1, 1e-3, 16)) for _ in range(3)])
    ga = np.stack([S.streamed_gram([x[:, :40], x[:, 40:]], 16, tall=False) for x in a])
    gb = np.stack([S.streamed_gram([x[:25], x[25:]], 16, tall=True) for x in b])
    assert S._certified_fast(ga.copy()) and S._certified_fast(gb.copy())
    got = S.singular_values_from_grams(ga, gb, lambda idx: a[idx], lambda idx: b[idx])
    for i in range(3):
        assert_sigma_close(got[i], dense_sigma(a[i], b[i]))
