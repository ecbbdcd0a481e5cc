"""Solve symmetric positive definite systems in float32 by blocked Cholesky, without numpy's float64 copy.

numpy.linalg solves every float32 system in float64: it converts a copy (twice the bytes) and runs LU
(twice the flops of Cholesky, at half the speed of float32). For the A'A of a ResNet stage-4 3x3 conv
(about 3200 unknowns) that is most of the cost of a ridge trial. Here the factorization works in place
on the float32 matrix, by column blocks of `BLOCK`: each block column is updated by one float32 matmul
over everything left of it, and only the small diagonal blocks are factored and inverted by numpy in
float64. Cholesky is backward stable, so the residual of a ridge-regularized least-squares solve is
that of float64 up to float32 rounding of A'A itself.
"""

from __future__ import annotations

import numpy as np

BLOCK = 256  # columns per block: diagonal blocks are factored in float64, the rest is float32 matmuls


def cholesky(a: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """L with a = L L' written over the lower triangle of `a` (float32, symmetric; the upper triangle is
    left as garbage), and the inverses of L's diagonal blocks (float64), which the solves reuse.

    Raises numpy.linalg.LinAlgError when `a` is not (numerically) positive definite.
    """
    n = len(a)
    inverses = []
    for j in range(0, n, BLOCK):
        e = min(j + BLOCK, n)
        if j:
            a[j:, j:e] -= a[j:, :j] @ a[j:e, :j].T  # left-looking: what the columns left of j contribute
        diagonal = np.linalg.cholesky(a[j:e, j:e].astype(np.float64))
        inverse = np.linalg.inv(diagonal)
        a[j:e, j:e] = diagonal
        if e < n:
            a[e:, j:e] = a[e:, j:e] @ inverse.T.astype(np.float32)  # L21 = A21 L11^-T
        inverses.append(inverse)
    return a, inverses


def cholesky_solve(factor: np.ndarray, inverses: list[np.ndarray], rhs: np.ndarray) -> np.ndarray:
    """x with L L' x = rhs, from `cholesky`'s result (float32; the diagonal blocks in float64)."""
    n = len(factor)
    x = np.array(rhs, dtype=np.float32, copy=True).reshape(n, -1)
    starts = list(range(0, n, BLOCK))
    for k, j in enumerate(starts):  # L y = rhs
        e = min(j + BLOCK, n)
        if j:
            x[j:e] -= factor[j:e, :j] @ x[:j]
        x[j:e] = inverses[k] @ x[j:e].astype(np.float64)
    for k, j in reversed(list(enumerate(starts))):  # L' x = y
        e = min(j + BLOCK, n)
        if e < n:
            x[j:e] -= factor[e:, j:e].T @ x[e:]
        x[j:e] = inverses[k].T @ x[j:e].astype(np.float64)
    return x.reshape(rhs.shape)


def spd_solve(a: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """x with a x = rhs for a float32 symmetric positive definite `a`, which is overwritten."""
    return cholesky_solve(*cholesky(a), rhs)
