"""theory.linear: Lemma 1, Theorem 1, Theorem 2 (paper §3.3, Appendix A) against independent
references (scipy.linalg.expm, jax.grad of the losses, jax.jvp), plus input validation."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from theory import TheoryInputError, checks, figure2, linear

M, D, N = 5, 3, 40
TIMES = np.array([0.0, 0.1, 0.5, 1.0, 2.0, 3.0])


def _problem(seed: int):
    rng = np.random.default_rng(seed)
    S = checks.random_covariance(M, rng)
    return rng, S


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ---------------------------------------------------------------- Theorem 1 closed form


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_closed_form_matches_scipy_expm(seed):
    rng, S = _problem(seed)
    W0 = rng.standard_normal((D, M))
    closed = linear.theorem1_closed_form(W0, S, TIMES)
    assert closed.shape == (len(TIMES), D, M) and closed.dtype == np.float64
    for k, t in enumerate(TIMES):
        assert _rel(closed[k], W0 @ scipy.linalg.expm(-S * t)) <= 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_closed_form_matches_integrated_lemma1_flow(seed):
    rng, S = _problem(10 + seed)
    # S has distinct eigenvalues by construction; check it, since Theorem 1's U relies on it.
    lam = np.linalg.eigvalsh(S)
    assert np.min(np.diff(lam)) > 1e-3 and lam[0] > 0
    W0 = rng.standard_normal((D, M))
    flow = linear.solve_lemma1(W0, S, TIMES)
    closed = linear.theorem1_closed_form(W0, S, TIMES)
    assert flow.shape == closed.shape == (len(TIMES), D, M)
    errs = [_rel(flow[k], closed[k]) for k in range(len(TIMES))]
    assert max(errs) <= 1e-10, errs


def test_closed_form_scalar_time_and_t0():
    rng, S = _problem(3)
    W0 = rng.standard_normal((2, M))
    W = linear.theorem1_closed_form(W0, S, 0.0)
    assert W.shape == (2, M)
    np.testing.assert_allclose(W, W0, rtol=0, atol=1e-14)
    # Along eigenvector u_i the component decays exactly like exp(−λ_i t) (greedy collapse of
    # high-variance directions first).
    lam, U = np.linalg.eigh(S)
    Wt = linear.theorem1_closed_form(W0, S, 1.7)
    np.testing.assert_allclose(Wt @ U, (W0 @ U) * np.exp(-lam * 1.7), rtol=1e-12, atol=1e-15)


def test_solve_lemma1_scalar_and_unsorted_times():
    rng, S = _problem(4)
    W0 = rng.standard_normal((D, M))
    ts = np.array([2.0, 0.5, 1.0])
    out = linear.solve_lemma1(W0, S, ts)
    for k, t in enumerate(ts):  # results follow the caller's order, not the sorted one
        assert _rel(out[k], linear.theorem1_closed_form(W0, S, t)) <= 1e-10
    single = linear.solve_lemma1(W0, S, 1.0)
    assert single.shape == (D, M)
    np.testing.assert_allclose(linear.solve_lemma1(W0, S, [0.0]), W0[None], atol=0)


# ---------------------------------------------------------------- right-hand sides vs autodiff


def _max_err(rhs, grads):
    num = max(float(np.max(np.abs(np.asarray(r) + np.asarray(g)))) for r, g in zip(rhs, grads))
    return num / max(1.0, max(float(np.max(np.abs(np.asarray(g)))) for g in grads))


@pytest.mark.parametrize("seed", [0, 1])
def test_lemma1_rhs_is_minus_grad_of_norm_loss(seed):
    rng = np.random.default_rng(20 + seed)
    X = checks.centred_data(M, N, rng)
    W = rng.standard_normal((D, M))
    S = linear.covariance(X)
    rhs = linear.lemma1_rhs(W, S)
    np.testing.assert_allclose(rhs, -W @ S, rtol=1e-13, atol=1e-14)
    with jax.enable_x64(True):
        g = jax.grad(linear.lemma1_loss)(jnp.asarray(W), jnp.asarray(X))
        g_cov = jax.grad(linear.lemma1_loss_cov)(jnp.asarray(W), jnp.asarray(S))
        assert g.dtype == jnp.float64
    assert _max_err([rhs], [g]) <= 1e-12
    assert _max_err([rhs], [g_cov]) <= 1e-12


@pytest.mark.parametrize("beta,rec_weight", [(0.0, 1.0), (0.3, 1.0), (2.0, 1.0), (0.3, 0.7),
                                             (0.7, 0.3), (0.5, 0.0)])
def test_theorem2_rhs_is_minus_grad_of_loss(beta, rec_weight):
    rng = np.random.default_rng(30)
    X = checks.centred_data(M, N, rng)
    W1, W2 = rng.standard_normal((D, M)), rng.standard_normal((M, D))
    S = linear.covariance(X)
    rhs = linear.theorem2_rhs(W1, W2, S, beta, rec_weight=rec_weight)
    with jax.enable_x64(True):
        g = jax.grad(linear.theorem2_loss, argnums=(0, 1))(
            jnp.asarray(W1), jnp.asarray(W2), jnp.asarray(X), beta, rec_weight)
        g_cov = jax.grad(linear.theorem2_loss_cov, argnums=(0, 1))(
            jnp.asarray(W1), jnp.asarray(W2), jnp.asarray(S), beta, rec_weight)
    assert _max_err(rhs, g) <= 1e-12
    assert _max_err(rhs, g_cov) <= 1e-12


def test_theorem2_rhs_is_paper_eq10_for_unit_weight():
    rng = np.random.default_rng(31)
    _, S = _problem(31)
    W1, W2 = rng.standard_normal((D, M)), rng.standard_normal((M, D))
    beta = 0.4
    dW1, dW2 = linear.theorem2_rhs(W1, W2, S, beta)
    np.testing.assert_allclose(dW1, (W2.T - W2.T @ W2 @ W1 - beta * W1) @ S, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(dW2, (np.eye(M) - W2 @ W1) @ S @ W1.T, rtol=1e-13, atol=1e-13)


def test_losses_agree_between_data_and_covariance_forms():
    rng = np.random.default_rng(32)
    X = checks.centred_data(M, N, rng)
    S = linear.covariance(X)
    W1, W2 = rng.standard_normal((D, M)), rng.standard_normal((M, D))
    np.testing.assert_allclose(linear.covariance(X), X @ X.T / N, rtol=1e-14)
    assert linear.lemma1_loss(W1, X) == pytest.approx(linear.lemma1_loss_cov(W1, S), rel=1e-12)
    assert linear.theorem2_loss(W1, W2, X, 0.3, 0.6) == pytest.approx(
        linear.theorem2_loss_cov(W1, W2, S, 0.3, 0.6), rel=1e-12)
    assert isinstance(linear.lemma1_loss(W1, X), np.float64)


# ---------------------------------------------------------------- the balance identity


@pytest.mark.parametrize("beta,rec_weight", [(0.3, 1.0), (0.5, 0.5), (1.2, 0.2)])
def test_balance_identity_along_theorem2_trajectory(beta, rec_weight):
    """d/dt (W1 W1ᵀ − W2ᵀ W2) = −2β W1 S W1ᵀ, for any reconstruction weight."""
    rng = np.random.default_rng(40)
    _, S = _problem(40)
    W1_0, W2_0 = 0.5 * rng.standard_normal((D, M)), 0.5 * rng.standard_normal((M, D))
    ts = np.linspace(0.0, 4.0, 21)
    W1s, W2s = linear.solve_theorem2(W1_0, W2_0, S, beta, ts, rec_weight=rec_weight)
    assert W1s.shape == (len(ts), D, M) and W2s.shape == (len(ts), M, D)
    G = lambda a, b: a @ a.T - b.T @ b  # noqa: E731
    with jax.enable_x64(True):
        for W1, W2 in zip(W1s, W2s):
            v = linear.theorem2_rhs(W1, W2, S, beta, rec_weight=rec_weight)
            _, dG = jax.jvp(G, (jnp.asarray(W1), jnp.asarray(W2)),
                            (jnp.asarray(v[0]), jnp.asarray(v[1])))
            target = -2.0 * beta * W1 @ S @ W1.T
            assert np.max(np.abs(np.asarray(dG) - target)) <= 1e-8 * max(1.0, np.abs(target).max())
    # Integrated over the trajectory: G decreases by exactly 2β ∫ W1 S W1ᵀ (trapezoid is only
    # O(h²) accurate, so the tight check is the augmented-ODE one in theory.checks).
    Gs = linear.balance(W1s, W2s)
    eig_drop = np.linalg.eigvalsh(Gs[-1] - Gs[0])
    assert np.all(eig_drop <= 1e-12)  # negative semi-definite: the layers unbalance one way


def test_balance_identity_integrated_check_passes():
    c = checks.check_balance_identity_integrated()
    assert c.passed and c.error <= 1e-8, c.line()


def test_theorem2_beta0_converges_to_pca_projector():
    """Reconstruction only (β = 0): W2 W1 → projector on the top-d principal subspace."""
    rng = np.random.default_rng(41)
    # The encoder's component along u_i (i beyond the bottleneck) decays at a rate ∝ λ_i, so the
    # smallest eigenvalue must not be tiny for convergence within t = 60.
    U, _ = np.linalg.qr(rng.standard_normal((M, M)))
    S = (U * np.array([3.0, 2.2, 1.4, 0.8, 0.5])) @ U.T
    W1_0, W2_0 = 0.1 * rng.standard_normal((2, M)), 0.1 * rng.standard_normal((M, 2))
    W1, W2 = linear.solve_theorem2(W1_0, W2_0, S, 0.0, 60.0)
    lam, U = np.linalg.eigh(S)
    top = U[:, -2:]
    np.testing.assert_allclose(W2 @ W1, top @ top.T, atol=1e-6)


# ---------------------------------------------------------------- float64 without global x64


def test_outputs_are_float64_and_x64_is_not_leaked():
    rng, S = _problem(5)
    W0 = rng.standard_normal((D, M))
    assert linear.solve_lemma1(W0, S, [0.5]).dtype == np.float64
    assert linear.theorem1_closed_form(W0, S, 0.5).dtype == np.float64
    assert linear.lemma1_rhs(W0, S).dtype == np.float64
    assert jnp.zeros(1).dtype == jnp.float32
    assert not jax.config.jax_enable_x64


def test_the_leak_check_compares_with_the_mode_the_checks_started_in(monkeypatch):
    assert checks.check_x64_not_leaked().passed
    monkeypatch.setattr(checks, "CHECKS", [checks.check_x64_not_leaked])
    with jax.enable_x64(True):  # as under a user's JAX_ENABLE_X64=1: nothing leaked
        assert checks.check_x64_not_leaked(np.dtype(np.float64)).passed
        [check] = checks.run_all(printer=None)  # failed, 64 bits against "32 bits"
        assert check.passed and check.requirement == "64 bits, as before the checks"
        assert not checks.check_x64_not_leaked().passed  # expected float32: a leak


def test_verify_checks_all_pass_and_are_written_to_verify_json(tmp_path, capsys):
    import json

    from theory.__main__ import main

    assert main(["verify", "--out", str(tmp_path)]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line[:4] in ("PASS", "FAIL")]
    record = json.loads((tmp_path / "verify.json").read_text())
    assert record["failed"] == 0 and record["passed"] == len(record["checks"]) == len(printed)
    for line, check in zip(printed, record["checks"]):  # every printed line, in the file
        assert line == checks.Check.from_record(check).line()
        assert check["passed"] and line.startswith("PASS")
        # A property check's value is not an error against a tolerance (it was stored as
        # "error": 2.078, "tol": 0.0, which error <= tol reads as a failure).
        if check["kind"] == "property":
            assert "error" not in check and "tol" not in check and check["requirement"]
        else:
            assert check["error"] <= check["tol"] and "value" not in check
    assert {c["kind"] for c in record["checks"]} == {"error", "property"}
    assert jnp.zeros(1).dtype == jnp.float32


# ---------------------------------------------------------------- bad input


def test_bad_covariance_is_rejected():
    W = np.ones((1, 2))
    with pytest.raises(TheoryInputError, match="square"):
        linear.lemma1_rhs(W, np.ones((2, 3)))
    with pytest.raises(TheoryInputError, match="2-D"):
        linear.lemma1_rhs(W, np.ones(4))
    with pytest.raises(TheoryInputError, match="symmetric"):
        linear.lemma1_rhs(W, np.array([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(TheoryInputError, match="positive semi-definite"):
        linear.theorem1_closed_form(W, np.diag([1.0, -1.0]), 1.0)
    with pytest.raises(TheoryInputError, match="NaN"):
        linear.solve_lemma1(W, np.array([[1.0, np.nan], [np.nan, 1.0]]), [1.0])
    assert issubclass(TheoryInputError, ValueError)


def test_covariance_checks_are_relative_to_the_scale_of_S():
    # The tolerances were an absolute 1e-10 below scale 1: an indefinite 1e-11-scale S
    # passed (the closed form then clamped its negative eigenvalue to 0, off from the flow by
    # a factor e), and an asymmetric one was symmetrised silently.
    W = np.ones((1, 2))
    with pytest.raises(TheoryInputError, match="positive semi-definite"):
        linear.theorem1_closed_form(W, np.diag([1e-11, -1e-11]), 1.0)
    with pytest.raises(TheoryInputError, match="symmetric"):
        linear.lemma1_rhs(W, np.array([[1e-11, 5e-11], [0.0, 1e-11]]))
    A = np.random.default_rng(0).normal(size=(2, 5))
    small = 1e-11 * A @ A.T / 5  # a genuine covariance at that scale is still accepted
    np.testing.assert_allclose(linear.lemma1_rhs(W, small), -W @ small, rtol=1e-12)
    np.testing.assert_array_equal(linear.lemma1_rhs(W, np.zeros((2, 2))), np.zeros((1, 2)))


def test_solve_lemma1_error_is_absolute_once_components_have_decayed():
    # the documented accuracy: ~1e-14 absolute while W decays by 18 orders of magnitude
    rng = np.random.default_rng(1)
    U = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    S = U @ np.diag([2.0, 1.0, 0.5]) @ U.T
    W0 = rng.normal(size=(2, 3))
    ts = [5.0, 20.0, 50.0, 80.0]
    flow = linear.solve_lemma1(W0, S, ts)
    exact = np.stack([linear.theorem1_closed_form(W0, S, t) for t in ts])
    assert np.max(np.abs(flow - exact)) <= 1e-13 * np.max(np.abs(W0))
    assert np.linalg.norm(exact[-1]) < 1e-16  # where a relative bound could not hold


def test_shape_mismatches_are_rejected():
    S = np.eye(3)
    with pytest.raises(TheoryInputError, match="shape mismatch"):
        linear.lemma1_rhs(np.ones((2, 2)), S)
    with pytest.raises(TheoryInputError, match="shape mismatch"):
        linear.theorem1_closed_form(np.ones((2, 4)), S, 1.0)
    with pytest.raises(TheoryInputError, match="shape mismatch"):
        linear.theorem2_rhs(np.ones((2, 3)), np.ones((3, 1)), S, 0.1)
    with pytest.raises(TheoryInputError, match="shape mismatch"):
        linear.solve_theorem2(np.ones((2, 3)), np.ones((2, 3)), S, 0.1, [1.0])
    with pytest.raises(TheoryInputError, match="2-D"):
        linear.lemma1_rhs(np.ones(3), S)
    with pytest.raises(TheoryInputError, match="shape mismatch"):
        linear.lemma1_loss(np.ones((2, 2)), np.ones((3, 5)))
    with pytest.raises(TheoryInputError, match="shape mismatch"):
        linear.theorem2_loss_cov(np.ones((2, 3)), np.ones((2, 3)), S, 0.1)


def test_bad_times_and_scalars_are_rejected():
    S, W = np.eye(2), np.ones((1, 2))
    with pytest.raises(TheoryInputError, match=">= 0"):
        linear.theorem1_closed_form(W, S, -1.0)
    with pytest.raises(TheoryInputError, match=">= 0"):
        linear.solve_lemma1(W, S, [0.0, 1.0, -0.5])
    with pytest.raises(TheoryInputError, match=">= 0"):
        linear.solve_theorem2(W, W.T, S, 0.1, [-1.0])
    with pytest.raises(TheoryInputError, match="1-D"):
        linear.solve_lemma1(W, S, np.ones((2, 2)))
    with pytest.raises(TheoryInputError, match="finite"):
        linear.solve_lemma1(W, S, [np.inf])
    with pytest.raises(TheoryInputError, match="at least one"):
        linear.solve_lemma1(W, S, [])
    with pytest.raises(TheoryInputError, match="beta"):
        linear.theorem2_rhs(W, W.T, S, -0.1)
    with pytest.raises(TheoryInputError, match="rec_weight"):
        linear.solve_theorem2(W, W.T, S, 0.1, [1.0], rec_weight=float("nan"))


def test_non_centred_data_is_rejected_by_covariance():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2, 500)) + 3.0
    with pytest.raises(TheoryInputError, match="zero-mean"):
        linear.covariance(X)
    for n in (5, 20, 25):  # were accepted: the old bound could not reject for n <= 25
        with pytest.raises(TheoryInputError, match="zero-mean"):
            linear.covariance(100.0 + rng.standard_normal((2, n)))
    with pytest.raises(TheoryInputError, match="zero-mean"):
        linear.covariance(np.full((2, 4), 0.5))  # a constant non-zero row


def test_zero_mean_data_is_accepted_by_covariance_at_every_size():
    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 5, 20, 200):
        for _ in range(200):  # genuinely zero-mean samples: none is refused
            X = rng.standard_normal((3, n))
            np.testing.assert_allclose(linear.covariance(X), X @ X.T / n, rtol=1e-12)
    centred = rng.standard_normal((2, 7))
    linear.covariance(centred - centred.mean(axis=1, keepdims=True))  # exactly centred
    linear.covariance(np.zeros((2, 4)))
    with pytest.raises(TheoryInputError, match="NaN"):
        linear.covariance(np.array([[1.0, np.nan], [0.0, 1.0]]))


# ---------------------------------------------------------------- bad input to the losses


def _one_line_error(fn, match: str) -> str:
    """Call ``fn``; it must raise TheoryInputError matching ``match`` with a one-line message."""
    with pytest.raises(TheoryInputError, match=match) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_losses_reject_bad_weights_like_the_rhs():
    """β and r are validated as in theorem2_rhs: NaN, negative or non-numeric is an error."""
    rng = np.random.default_rng(50)
    X = checks.centred_data(2, 10, rng)
    S = linear.covariance(X)
    W1, W2 = rng.standard_normal((1, 2)), rng.standard_normal((2, 1))
    _one_line_error(lambda: linear.theorem2_loss(W1, W2, X, np.nan), "beta must be finite")
    _one_line_error(lambda: linear.theorem2_loss(W1, W2, X, -5.0), "beta must be >= 0")
    _one_line_error(lambda: linear.theorem2_loss(W1, W2, X, 0.1, rec_weight=np.nan), "rec_weight")
    _one_line_error(lambda: linear.theorem2_loss(W1, W2, X, beta="1"), "beta must be a real number")
    _one_line_error(lambda: linear.theorem2_loss_cov(W1, W2, S, -5.0), "beta must be >= 0")
    _one_line_error(lambda: linear.theorem2_loss_cov(W1, W2, S, 0.1, -1.0), "rec_weight")
    # Strings are refused even where NumPy would parse them, and so is complex input
    # (casting it to float64 silently drops the imaginary part).
    _one_line_error(lambda: linear.theorem2_rhs(W1, W2, S, "1"), "beta must be a real number")
    _one_line_error(lambda: linear.lemma1_rhs(1j * W1, S), "W must be a real numeric")


def test_losses_reject_bad_matrices():
    W = np.array([[1.0, 0.0]])
    _one_line_error(lambda: linear.lemma1_loss_cov(W, -np.eye(2)), "positive semi-definite")
    _one_line_error(lambda: linear.lemma1_loss_cov(W, [[1.0, 0.5], [0.0, 1.0]]), "symmetric")
    _one_line_error(lambda: linear.theorem2_loss_cov(W, W.T, -np.eye(2), 0.1), "positive semi-definite")
    _one_line_error(lambda: linear.lemma1_loss(W, np.ones((2, 0))), "X must not be empty")
    _one_line_error(lambda: linear.theorem2_loss(W, W.T, np.ones((2, 0)), 0.1), "X must not be empty")
    _one_line_error(lambda: linear.lemma1_loss("abc", np.ones((2, 3))), "W must be a real numeric")
    _one_line_error(lambda: linear.lemma1_loss(W, [[1.0, np.inf]] * 2), "NaN or infinite")
    _one_line_error(lambda: linear.lemma1_loss(W, np.ones(2)), "2-D")


def test_traced_losses_check_shapes():
    """Under jax.jit the values are unknown, but empty data and non-scalar β are shape errors."""
    W = jnp.ones((1, 2))
    with pytest.raises(TheoryInputError, match="X must not be empty"):
        jax.jit(linear.lemma1_loss)(W, jnp.ones((2, 0)))
    with pytest.raises(TheoryInputError, match="beta must be a scalar"):
        jax.jit(linear.theorem2_loss)(W, W.T, jnp.ones((2, 3)), jnp.ones(2))
    with pytest.raises(TheoryInputError, match="square"):
        jax.jit(linear.lemma1_loss_cov)(W, jnp.ones((2, 3)))


def test_balance_rejects_shape_mismatch_instead_of_broadcasting():
    _one_line_error(lambda: linear.balance(np.ones((1, 2)), np.ones((3, 3))), "shape mismatch")
    _one_line_error(lambda: linear.balance(np.ones((2, 1, 2)), np.ones((3, 2, 1))), "stacked alike")
    _one_line_error(lambda: linear.balance(np.ones(2), np.ones((2, 1))), "matrix")
    _one_line_error(lambda: linear.balance(np.ones((1, 2)), [[np.nan], [1.0]]), "NaN")
    G = linear.balance(np.ones((4, 1, 2)), np.ones((4, 2, 1)))
    np.testing.assert_array_equal(G, np.zeros((4, 1, 1)))


# ---------------------------------------------------------------- solver step budget

# A small budget keeps these tests fast (the default 1e6 steps take ~20 s to exhaust); the
# same value in every test reuses one compiled solver per flow.
_SMALL_BUDGET = 200


@pytest.mark.parametrize("solve", [
    lambda kw: linear.solve_lemma1(np.ones((1, 2)), np.eye(2), 1e8, **kw),  # long horizon
    lambda kw: linear.solve_theorem2(np.ones((1, 2)), np.ones((2, 1)), np.eye(2), 1e12, 10.0, **kw),
    lambda kw: linear.solve_theorem2(np.ones((1, 2)), np.ones((2, 1)), np.diag([1e10, 1e-10]),
                                     1.0, 100.0, **kw),  # stiff S
], ids=["lemma1-long-t", "theorem2-huge-beta", "theorem2-stiff-S"])
def test_step_limit_is_a_clear_error(solve):
    message = _one_line_error(lambda: solve({"max_steps": _SMALL_BUDGET}), "max_steps=200")
    assert "shorter time" in message and "too stiff" in message


def test_step_budget_is_validated_and_enough_budget_solves():
    W, S = np.ones((1, 2)), np.eye(2)
    _one_line_error(lambda: linear.solve_lemma1(W, S, 1.0, max_steps=0), "max_steps must be an integer >= 1")
    _one_line_error(lambda: linear.solve_lemma1(W, S, 1.0, max_steps=10.5), "max_steps must be an integer")
    # The same small budget is plenty for an ordinary horizon: the error is about the budget,
    # not a side effect of throw=False.
    W1 = linear.solve_lemma1(W, S, 1.0, max_steps=_SMALL_BUDGET)
    np.testing.assert_allclose(W1, W * np.exp(-1.0), rtol=1e-12)


def test_review_cases_of_bad_input_are_named():
    S, W = np.eye(2), np.ones((1, 2))
    # was an OverflowError from inside JAX
    with pytest.raises(TheoryInputError, match=r"max_steps must be an integer <= 2147483647"):
        linear.solve_lemma1(W, S, [1.0], max_steps=2**70)
    # was taken as β = 1 (integer arguments already refused booleans)
    with pytest.raises(TheoryInputError, match="beta must be a real number, got True"):
        linear.theorem2_rhs(W, W.T, S, True)
    with pytest.raises(TheoryInputError, match=r"beta must be a real number, got \[\[1\], \[2, 3\]\]"):
        linear.theorem2_rhs(W, W.T, S, [[1], [2, 3]])  # ragged: was NumPy's ValueError
    # the message said "(the size of S)"; lemma1_loss takes X
    with pytest.raises(TheoryInputError, match=r"m = 3 \(the number of rows of X\), got \(1, 4\)"):
        linear.lemma1_loss(np.ones((1, 4)), np.random.default_rng(0).standard_normal((3, 5)))


def test_theorem1_closed_form_stays_bounded_for_a_rank_deficient_covariance():
    # eigh gives ~−1e-17 for S's zero eigenvalue, and exp(−λt) grew without bound (2.7 at
    # t = 1e16, inf at 1e19). The limit t → ∞ is W0 projected onto S's null space.
    X = np.random.default_rng(0).standard_normal((3, 2))
    X -= X.mean(axis=1, keepdims=True)
    S, W0 = linear.covariance(X), np.ones((1, 3))
    lam, U = np.linalg.eigh(S)
    null = U[:, np.abs(lam) < 1e-12 * lam.max()]
    limit = W0 @ null @ null.T
    for t in (1e3, 1e16, 1e19):
        np.testing.assert_allclose(linear.theorem1_closed_form(W0, S, t), limit, atol=1e-12)
    # Eigenvalues within the PSD tolerance (−1e-11 here) are treated as 0.
    S = np.diag([1.0, 1.0, -1e-11])
    np.testing.assert_allclose(linear.theorem1_closed_form(W0, S, 1e13), [[0.0, 0.0, 1.0]])


def test_finite_inputs_that_overflow_are_named_not_returned_as_inf():
    cases = [
        (lambda: linear.lemma1_rhs(10 * np.ones((1, 2)), np.diag([1e308, 1e308])), "lemma1_rhs"),
        (lambda: linear.covariance(1e200 * np.array([[1.0, -1.0], [2.0, -2.0]])), "covariance"),
        (lambda: linear.theorem2_rhs(1e120 * np.ones((1, 2)), 1e120 * np.ones((2, 1)),
                                     np.eye(2), 0.5), "theorem2_rhs"),
        (lambda: linear.lemma1_loss_cov(1e200 * np.ones((1, 2)), np.eye(2)), "lemma1_loss_cov"),
        (lambda: linear.balance(1e200 * np.ones((1, 2)), np.ones((2, 1))), "balance"),
        (lambda: figure2.score(np.ones((1, 2)), np.ones((2, 1)), 0.5, [[1e200, 1e200]]), "score"),
    ]
    for fn, name in cases:
        with pytest.raises(TheoryInputError, match=f"{name}('s result)? overflowed float64"):
            fn()
    # The symmetrisation itself no longer overflows (0.5·(S + Sᵀ) gave −inf here).
    np.testing.assert_array_equal(linear.lemma1_rhs(np.ones((1, 2)), np.diag([1e308, 1e308])),
                                  [[-1e308, -1e308]])


def test_boolean_times_and_matrices_are_refused():
    W, S = np.ones((1, 2)), np.eye(2)
    for t in (True, [True, False], np.array([1.0, 2.0]) > 1):
        with pytest.raises(TheoryInputError, match="t must be a real number or 1-D array of times"):
            linear.theorem1_closed_form(W, S, t)
    with pytest.raises(TheoryInputError, match="S must be a real numeric 2-D matrix"):
        linear.lemma1_rhs(W, np.eye(2, dtype=bool))
    with pytest.raises(TheoryInputError, match="t_train must be"):
        figure2.fit(0.5, t_train=True)
    with pytest.raises(TheoryInputError, match="squared must be True or False, got 'no'"):
        figure2.score(W, W.T, 0.5, np.ones((3, 2)), squared="no")


def test_the_verify_checks_fail_when_what_they_check_is_wrong(monkeypatch):
    """Each check compares the implementation with an independent reference; with the
    implementation broken on purpose, the check must report a failure (a check comparing a
    function with itself would pass either way)."""
    good_closed, good_lemma1_rhs = linear.theorem1_closed_form, linear.lemma1_rhs
    good_t2_rhs = linear.theorem2_rhs
    assert checks.check_theorem1_vs_expm(seeds=(0,)).passed
    # Theorem 1 with the eigenvalues' decay twice as fast
    monkeypatch.setattr(linear, "theorem1_closed_form",
                        lambda W0, S, t: good_closed(W0, 2 * np.asarray(S), t))
    assert not checks.check_theorem1_vs_expm(seeds=(0,)).passed
    monkeypatch.setattr(linear, "theorem1_closed_form", good_closed)
    # Lemma 1's right-hand side with the wrong sign
    monkeypatch.setattr(linear, "lemma1_rhs", lambda W, S: -good_lemma1_rhs(W, S))
    assert not checks.check_lemma1_rhs_vs_grad(seeds=(0,)).passed
    monkeypatch.setattr(linear, "lemma1_rhs", good_lemma1_rhs)
    # Theorem 2's right-hand side with a decoder update scaled by 1.1
    monkeypatch.setattr(linear, "theorem2_rhs", lambda *a, **k: (
        good_t2_rhs(*a, **k)[0], 1.1 * good_t2_rhs(*a, **k)[1]))
    assert not checks.check_theorem2_rhs_vs_grad(seeds=(0,)).passed
    assert not checks.check_balance_identity_pointwise().passed


def test_an_error_check_passes_only_within_its_tolerance():
    assert checks.Check("x", 1e-9, 1e-8).passed and checks.Check("x", 1e-8, 1e-8).passed
    assert not checks.Check("x", 1.1e-8, 1e-8).passed
    assert not checks.Check("x", float("nan"), 1e-8).passed
    assert not checks.Check("x", float("nan"), requirement="in [1, 2]", ok=True).passed


def test_one_non_centred_row_is_enough_to_be_rejected_by_covariance():
    # Every existing case offsets all rows; the check must look at each row.
    rng = np.random.default_rng(2)
    X = rng.standard_normal((3, 500))
    X -= X.mean(axis=1, keepdims=True)
    linear.covariance(X)  # centred: accepted
    X[2] += 3.0
    with pytest.raises(TheoryInputError, match="zero-mean"):
        linear.covariance(X)
