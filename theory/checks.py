"""Numerical checks of the paper's theory, run by ``python -m theory verify``.

Each check compares a result with an *independent* reference (SciPy's matrix exponential,
JAX autodiff of the loss, an augmented ODE) and reports its max error against a tolerance.
All computation is float64 inside ``jax.enable_x64(True)``; x64 is never left switched on.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from theory import figure2, linear


@dataclasses.dataclass
class Check:
    """One numerical check.

    Error checks (the default) pass iff ``error <= tol``. Property checks (``requirement`` set,
    e.g. "in [1.5, 3]") report a measured ``error`` value and pass iff ``ok``.
    """

    name: str
    error: float
    tol: float = 0.0
    note: str = ""
    requirement: str = ""
    ok: bool = True

    @property
    def passed(self) -> bool:
        if not np.isfinite(self.error):
            return False
        return self.ok if self.requirement else self.error <= self.tol

    def record(self) -> dict:
        """The check for ``verify.json``: an error check as ``error`` and ``tol``, a property
        check as the measured ``value`` and its ``requirement`` (storing that value as an
        "error" with tol 0 read as a failure by ``error <= tol``)."""
        measured = ({"value": self.error, "requirement": self.requirement} if self.requirement
                    else {"error": self.error, "tol": self.tol})
        return {"name": self.name, "kind": "property" if self.requirement else "error",
                **measured, "passed": self.passed, "note": self.note}

    @classmethod
    def from_record(cls, record: dict) -> "Check":
        """The check :meth:`record` wrote."""
        if record["kind"] == "property":
            return cls(record["name"], record["value"], note=record["note"],
                       requirement=record["requirement"], ok=record["passed"])
        return cls(record["name"], record["error"], record["tol"], note=record["note"])

    def line(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        if self.requirement:
            measure = f"value   {self.error:9.4g}  (need {self.requirement})"
        else:
            measure = f"max err {self.error:9.2e}  (tol {self.tol:.0e})"
        note = f"  [{self.note}]" if self.note else ""
        return f"{status}  {self.name:<58s} {measure}{note}"


# ------------------------------------------------------------------ random test problems


def random_covariance(m: int, rng: np.random.Generator,
                      lam_range: tuple[float, float] = (0.1, 3.0)) -> np.ndarray:
    """Symmetric PSD ``S = U diag(λ) Uᵀ`` with distinct eigenvalues in ``lam_range``, random U."""
    U, _ = np.linalg.qr(rng.standard_normal((m, m)))
    # Evenly spaced eigenvalues, jittered: distinct by construction (Theorem 1's U is then unique).
    lam = np.linspace(*lam_range, m) + rng.uniform(-0.2, 0.2, m) * (lam_range[1] - lam_range[0]) / m
    return (U * lam) @ U.T


def centred_data(m: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """m × n data with anisotropic columns, exactly zero-mean along each row."""
    X = rng.standard_normal((m, m)) @ rng.standard_normal((m, n))
    return X - X.mean(axis=1, keepdims=True)


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


# ------------------------------------------------------------------ individual checks
# Shapes are kept the same across random draws so each jitted solver compiles once.

M, D, N = 5, 3, 40
TIMES = np.array([0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0])


def check_theorem1_vs_expm(seeds: Sequence[int] = (0, 1, 2)) -> Check:
    """Theorem 1's eigen-form ``W0 U exp(−Λt) Uᵀ`` equals ``W0 expm(−S t)`` (eq. 13, SciPy)."""
    err = 0.0
    for s in seeds:
        rng = np.random.default_rng(s)
        S, W0 = random_covariance(M, rng), rng.standard_normal((D, M))
        closed = linear.theorem1_closed_form(W0, S, TIMES)
        ref = np.stack([W0 @ scipy.linalg.expm(-S * t) for t in TIMES])
        err = max(err, max(_rel(closed[k], ref[k]) for k in range(len(TIMES))))
    return Check("Theorem 1 closed form vs W0·expm(−S t) (scipy)", err, 1e-12,
                 f"{len(seeds)} random S {M}x{M}, {len(TIMES)} times")


def check_theorem1_vs_flow(seeds: Sequence[int] = (0, 1, 2)) -> Check:
    """Theorem 1's closed form vs the diffrax-integrated Lemma-1 flow (relative, per time)."""
    err = 0.0
    for s in seeds:
        rng = np.random.default_rng(100 + s)
        S, W0 = random_covariance(M, rng), rng.standard_normal((D, M))
        flow = linear.solve_lemma1(W0, S, TIMES)
        closed = linear.theorem1_closed_form(W0, S, TIMES)
        err = max(err, max(_rel(flow[k], closed[k]) for k in range(len(TIMES))))
    return Check("Theorem 1 closed form vs integrated Lemma-1 flow", err, 1e-10,
                 f"relative; {len(seeds)} random S, t up to {TIMES[-1]:g}")


def _grad_err(rhs, grads) -> float:
    num = max(float(np.max(np.abs(np.asarray(r) + np.asarray(g)))) for r, g in zip(rhs, grads))
    scale = max(1.0, max(float(np.max(np.abs(np.asarray(g)))) for g in grads))
    return num / scale


def check_lemma1_rhs_vs_grad(seeds: Sequence[int] = (0, 1, 2)) -> Check:
    """Lemma 1: ``−W S`` (S = X Xᵀ/n) equals ``−∇_W L_norm`` (eq. 5) by autodiff; also the S form."""
    err = 0.0
    with jax.enable_x64(True):
        for s in seeds:
            rng = np.random.default_rng(200 + s)
            X, W = centred_data(M, N, rng), rng.standard_normal((D, M))
            S = linear.covariance(X)
            rhs = linear.lemma1_rhs(W, S)
            g_data = jax.grad(linear.lemma1_loss)(jnp.asarray(W), jnp.asarray(X))
            g_cov = jax.grad(linear.lemma1_loss_cov)(jnp.asarray(W), jnp.asarray(S))
            err = max(err, _grad_err([rhs], [g_data]), _grad_err([rhs], [g_cov]))
    return Check("Lemma 1 rhs vs −jax.grad(L_norm)  (eq. 5 / eq. 6)", err, 1e-12,
                 "relative to max|grad|")


THEOREM2_CASES = ((0.0, 1.0), (0.3, 1.0), (1.5, 1.0), (0.3, 0.7), (0.7, 0.3))


def check_theorem2_rhs_vs_grad(seeds: Sequence[int] = (0, 1)) -> Check:
    """Theorem 2: eq. 10 (reconstruction weighted by r) equals ``−∇ L`` of eq. 9 by autodiff."""
    err = 0.0
    with jax.enable_x64(True):
        for s in seeds:
            rng = np.random.default_rng(300 + s)
            X = centred_data(M, N, rng)
            W1, W2 = rng.standard_normal((D, M)), rng.standard_normal((M, D))
            S = linear.covariance(X)
            for beta, r in THEOREM2_CASES:
                rhs = linear.theorem2_rhs(W1, W2, S, beta, rec_weight=r)
                g = jax.grad(linear.theorem2_loss, argnums=(0, 1))(
                    jnp.asarray(W1), jnp.asarray(W2), jnp.asarray(X), beta, r)
                g_cov = jax.grad(linear.theorem2_loss_cov, argnums=(0, 1))(
                    jnp.asarray(W1), jnp.asarray(W2), jnp.asarray(S), beta, r)
                err = max(err, _grad_err(rhs, g), _grad_err(rhs, g_cov))
    return Check("Theorem 2 rhs vs −jax.grad(L)  (eq. 9 / eq. 10)", err, 1e-12,
                 f"(β, r) in {list(THEOREM2_CASES)}, relative")


def _theorem2_trajectory(beta: float, r: float, seed: int = 400):
    rng = np.random.default_rng(seed)
    S = random_covariance(M, rng)
    W1_0, W2_0 = 0.5 * rng.standard_normal((D, M)), 0.5 * rng.standard_normal((M, D))
    ts = np.linspace(0.0, 5.0, 26)
    W1s, W2s = linear.solve_theorem2(W1_0, W2_0, S, beta, ts, rec_weight=r)
    return S, ts, W1s, W2s


IDENTITY_CASES = ((0.3, 1.0), (0.5, 0.5), (0.0, 1.0))


def check_balance_identity_pointwise() -> Check:
    """``d/dt (W1 W1ᵀ − W2ᵀ W2) = −2β W1 S W1ᵀ`` at every state of a Theorem-2 trajectory.

    ``d/dt G`` is computed by forward-mode autodiff of ``G`` along the flow's velocity
    (``jax.jvp``), independently of the hand derivation. Holds for any reconstruction weight r.
    """
    err = 0.0
    with jax.enable_x64(True):
        G = lambda W1, W2: W1 @ W1.T - W2.T @ W2  # noqa: E731
        for beta, r in IDENTITY_CASES:
            S, ts, W1s, W2s = _theorem2_trajectory(beta, r)
            for W1, W2 in zip(W1s, W2s):
                v = linear.theorem2_rhs(W1, W2, S, beta, rec_weight=r)
                _, dG = jax.jvp(G, (jnp.asarray(W1), jnp.asarray(W2)),
                                (jnp.asarray(v[0]), jnp.asarray(v[1])))
                target = -2.0 * beta * W1 @ S @ W1.T
                scale = max(1.0, float(np.max(np.abs(target))))
                err = max(err, float(np.max(np.abs(np.asarray(dG) - target))) / scale)
    return Check("dG/dt = −2β W1 S W1ᵀ along Theorem-2 trajectories", err, 1e-8,
                 f"G = W1W1ᵀ − W2ᵀW2 via jax.jvp; (β, r) in {list(IDENTITY_CASES)}, 26 states each")


def _augmented_vf(t, state, args):
    (W1, W2), _ = state
    S = args[0]
    beta = args[1]
    dW1, dW2 = linear._theorem2_vf(t, (W1, W2), args)
    return (dW1, dW2), -2.0 * beta * W1 @ S @ W1.T


def check_balance_identity_integrated() -> Check:
    """Integrated form: ``G(t) − G(0) = −2β ∫₀ᵗ W1 S W1ᵀ ds`` (augmented ODE carries the integral)."""
    err = 0.0
    with jax.enable_x64(True):
        for beta, r in IDENTITY_CASES:
            S, ts, W1s, W2s = _theorem2_trajectory(beta, r)
            G = linear.balance(W1s, W2s)
            d = W1s.shape[1]
            args = (jnp.asarray(S), jnp.float64(beta), jnp.float64(r))
            y0 = ((jnp.asarray(W1s[0]), jnp.asarray(W2s[0])), jnp.zeros((d, d)))
            _, integral = linear.integrate(_augmented_vf, y0, args, ts)
            scale = max(1.0, float(np.max(np.abs(G))))
            err = max(err, float(np.max(np.abs((G - G[0]) - integral))) / scale)
    return Check("G(t) − G(0) = −2β ∫ W1 S W1ᵀ dt  (augmented ODE)", err, 1e-8,
                 "same trajectories, t in [0, 5]")


def _relative_variation_along_x1(W1, W2, beta, x2_values=(0.5, 1.0, 2.0, -1.5)) -> float:
    x1 = np.linspace(-6.0, 6.0, 241)
    worst = 0.0
    for x2 in x2_values:
        s = figure2.score(W1, W2, beta, np.stack([x1, np.full_like(x1, x2)], axis=1))
        worst = max(worst, float((s.max() - s.min()) / s.mean()))
    return worst


def check_figure2(seed: int = 0) -> List[Check]:
    """Figure 2: β = 0 gives x1-independent bands (PCA); β > 0 closed ellipses ≈ density shape."""
    out = []
    W1, W2 = figure2.fit(0.0, seed=seed)
    pca = np.diag([1.0, 0.0])
    out.append(Check("Fig 2, β=0: W2 W1 = PCA projector e1 e1ᵀ",
                     float(np.max(np.abs(W2 @ W1 - pca))), 1e-5, f"t = {figure2.T_TRAIN:g}"))
    out.append(Check("Fig 2, β=0: score constant along x1 (relative variation)",
                     _relative_variation_along_x1(W1, W2, 0.0), 1e-3, "x1 ∈ [−6, 6] at x2 ∈ {0.5, 1, 2, −1.5}"))

    beta = figure2.DEFAULT_BETA
    W1, W2 = figure2.fit(beta, seed=seed)
    Q = figure2.score_matrix(W1, W2, beta)
    angles = np.linspace(0.0, np.pi, 721)
    circle = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    s = figure2.score(W1, W2, beta, circle)
    # Closed contours ⇔ the quadratic form is positive definite ⇔ min over the unit circle > 0.
    min_ratio = float(s.min() / s.max())
    out.append(Check(f"Fig 2, β={beta:g}: contours closed (min/max score on |x|=1)",
                     min_ratio, requirement="> 0", ok=min_ratio > 1e-6,
                     note=f"eig(Q) = {np.linalg.eigvalsh(Q).round(4).tolist()}"))
    ratio = figure2.half_axis_ratio(W1, W2, beta)
    out.append(Check(f"Fig 2, β={beta:g}: contour half-axis ratio x1 : x2",
                     ratio, requirement="in [1.5, 3]", ok=1.5 <= ratio <= 3.0,
                     note=f"data std ratio {figure2.STD_RATIO:g}, t = {figure2.T_TRAIN:g}"))

    # No finite equilibrium for β > 0: keep training and the encoder shrinks, the decoder grows,
    # G decreases and the contours keep stretching along x1.
    ts = figure2.T_TRAIN * np.array([1.0, 2.0, 4.0, 8.0])
    W1s, W2s = figure2.fit_path(beta, ts, seed=seed)
    n1 = np.linalg.norm(W1s, axis=(1, 2))
    n2 = np.linalg.norm(W2s, axis=(1, 2))
    G = linear.balance(W1s, W2s)[:, 0, 0]
    ratios = np.array([figure2.half_axis_ratio(a, b, beta) for a, b in zip(W1s, W2s)])
    monotone = (np.all(np.diff(n1) < 0) and np.all(np.diff(n2) > 0)
                and np.all(np.diff(G) < 0) and np.all(np.diff(ratios) > 0))
    out.append(Check(f"Fig 2, β={beta:g}: no equilibrium: |W1|↓ |W2|↑ G↓ ratio↑",
                     float(ratios[-1] / ratios[0]), requirement="all monotone; value = ratio(8T)/ratio(T)", ok=bool(monotone),
                     note="t = T, 2T, 4T, 8T: |W1| " + " ".join(f"{v:.3f}" for v in n1)
                     + "; |W2| " + " ".join(f"{v:.2f}" for v in n2)
                     + "; ratio " + " ".join(f"{v:.2f}" for v in ratios)))
    return out


def check_x64_not_leaked(before: np.dtype = np.dtype(np.float32)) -> Check:
    """The theory must not switch the process to 64-bit mode (training code relies on float32):
    JAX's default float type after the checks is ``before``, the one they started with
    (:func:`run_all` passes it; float32 unless the user set ``JAX_ENABLE_X64``, where the
    check used to fail although nothing had leaked)."""
    dtype = jnp.zeros(1).dtype
    bits = np.dtype(before).itemsize * 8
    return Check("x64 not leaked: jnp.zeros(1).dtype after the checks",
                 float(np.dtype(dtype).itemsize * 8),
                 requirement=f"{bits} bits" + ("" if bits == 32 else ", as before the checks"),
                 ok=dtype == before, note=f"dtype {dtype}")


CHECKS: List[Callable] = [
    check_theorem1_vs_expm,
    check_theorem1_vs_flow,
    check_lemma1_rhs_vs_grad,
    check_theorem2_rhs_vs_grad,
    check_balance_identity_pointwise,
    check_balance_identity_integrated,
    check_figure2,
    check_x64_not_leaked,
]


def run_all(printer: Optional[Callable[[str], None]] = print) -> List[Check]:
    """Run every check, printing one PASS/FAIL line per check as it completes."""
    # JAX's default float type now, read without starting a backend (jnp.zeros would)
    before = np.dtype(jax.dtypes.canonicalize_dtype(np.float64))
    results: List[Check] = []
    for fn in CHECKS:
        got = fn(before) if fn is check_x64_not_leaked else fn()
        for c in got if isinstance(got, list) else [got]:
            results.append(c)
            if printer is not None:
                printer(c.line())
    return results
