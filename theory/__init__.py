"""Linear learning-dynamics theory of Toll (paper §3.3 and Appendix A, arXiv:2306.12627).

Everything here is computed in float64 *inside* the public functions (``jax.enable_x64(True)``
as a context manager), so importing or calling :mod:`theory` never switches JAX to 64-bit mode
for the rest of a ``tolljax`` process.

Modules
-------
- :mod:`theory.linear`   Lemma 1 / Theorem 1 / Theorem 2: right-hand sides, closed form, losses,
                          diffrax solvers.
- :mod:`theory.figure2`  Figure 2's 2-D Gaussian, linear 2→1→2 autoencoder, score.
- :mod:`theory.checks`   the numerical checks run by ``python -m theory verify``.
- :mod:`theory.figures`  the figures written by ``python -m theory figures --out DIR``.
"""
from __future__ import annotations


class TheoryInputError(ValueError):
    """Invalid input to a :mod:`theory` function (type, shape, symmetry, sign, finiteness, seed,
    output path), or an ODE solve that needs more than its ``max_steps`` step budget.

    The message is one line naming the argument and the problem; the checks live in
    :mod:`theory._validation`.
    """


from theory.linear import (  # noqa: E402
    covariance,
    lemma1_loss,
    lemma1_loss_cov,
    lemma1_rhs,
    solve_lemma1,
    solve_theorem2,
    theorem1_closed_form,
    theorem2_loss,
    theorem2_loss_cov,
    theorem2_rhs,
)

__all__ = [
    "TheoryInputError",
    "covariance",
    "lemma1_loss",
    "lemma1_loss_cov",
    "lemma1_rhs",
    "solve_lemma1",
    "solve_theorem2",
    "theorem1_closed_form",
    "theorem2_loss",
    "theorem2_loss_cov",
    "theorem2_rhs",
]
