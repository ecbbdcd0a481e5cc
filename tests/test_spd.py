"""Blocked float32 Cholesky (recover/spd.py) against numpy's float64 solve."""

import numpy as np
import pytest

from onnxprune.recover import spd


@pytest.mark.parametrize("n", [1, 63, 64, 300, 700])
def test_spd_solve_matches_float64(n: int) -> None:
    rng = np.random.default_rng(n)
    b = rng.standard_normal((n, 2 * n + 3))
    a = (b @ b.T / b.shape[1] + 0.1 * np.eye(n)).astype(np.float32)
    rhs = rng.standard_normal((n, 5)).astype(np.float32)
    expected = np.linalg.solve(a.astype(np.float64), rhs.astype(np.float64))
    got = spd.spd_solve(a.copy(), rhs)
    assert got.dtype == np.float32 and got.shape == rhs.shape
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_spd_solve_vector_rhs() -> None:
    a = np.diag(np.arange(1, 301, dtype=np.float32))
    assert np.allclose(spd.spd_solve(a.copy(), np.ones(300, np.float32)), 1 / np.arange(1, 301), rtol=1e-6)


def test_spd_refuses_an_indefinite_matrix() -> None:
    a = np.eye(300, dtype=np.float32)
    a[299, 299] = -1
    with pytest.raises(np.linalg.LinAlgError):
        spd.spd_solve(a, np.ones(300, np.float32))


@pytest.mark.parametrize("n", [100, 300, 700])  # one block; two; three with a short last one
def test_inverse_matches_numpy(n: int) -> None:
    """spd_inverse gives the float64 inverse to float32 accuracy, every block of it (it computes the lower
    block triangle and mirrors it), and an exactly symmetric result."""
    from onnxprune.recover.spd import spd_inverse

    rng = np.random.default_rng(5)
    a = rng.standard_normal((2 * n, n))
    gram = a.T @ a + 1e-2 * np.eye(n)
    expected = np.linalg.inv(gram)
    got = spd_inverse(gram.astype(np.float32))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    assert np.array_equal(got, got.T)
