import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tolljax.errors import TollError
from tolljax.losses import latent_norm, parse_norm, reconstruction_error, toll_loss, toll_score

X = np.array([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]], np.float32)
X_HAT = np.array([[1.0, 0.0, 2.0], [3.0, 0.0, 4.0]], np.float32)  # residual norms 2 and 5
Z = np.array([[3.0, -4.0], [-1.0, 0.5]], np.float32)


@pytest.mark.parametrize("norm, z_norms", [(1, [7.0, 1.5]), (2, [5.0, math.sqrt(1.25)]),
                                           ("inf", [4.0, 1.0])])
def test_score_and_loss_by_hand(norm, z_norms):
    beta = 10.0
    expected = np.array([2.0, 5.0]) + beta * np.array(z_norms)
    np.testing.assert_allclose(toll_score(X, X_HAT, Z, beta, norm), expected, rtol=1e-6)
    np.testing.assert_allclose(toll_loss(X, X_HAT, Z, beta, norm), expected.mean(), rtol=1e-6)


def test_norms_not_squared_and_images_flattened():
    x = np.zeros((1, 2, 2, 1), np.float32)
    x_hat = np.full((1, 2, 2, 1), 3.0, np.float32)  # residual norm sqrt(4 * 9) = 6
    np.testing.assert_allclose(reconstruction_error(x, x_hat), [6.0])
    np.testing.assert_allclose(latent_norm(np.array([[[3.0], [4.0]]])), [5.0])


def test_beta_zero_is_reconstruction_only():
    np.testing.assert_allclose(toll_score(X, X_HAT, Z, 0.0), [2.0, 5.0])


def test_gradient_finite_at_perfect_reconstruction_and_zero_code():
    x = jnp.ones((2, 3))
    g = jax.grad(lambda xh, z: toll_loss(x, xh, z, 1.0), argnums=(0, 1))(x, jnp.zeros((2, 4)))
    assert all(np.all(np.isfinite(np.asarray(a))) for a in g)
    # Away from zero the gradient is the usual one: d||v||/dv = v/||v||.
    z = jnp.array([[3.0, 4.0]])
    np.testing.assert_allclose(jax.grad(lambda z: latent_norm(z).sum())(z), [[0.6, 0.8]], rtol=1e-6)


@pytest.mark.parametrize("alias, order", [("1", 1), (2, 2), ("inf", math.inf), (math.inf, math.inf),
                                          ("L2", 2)])
def test_parse_norm_aliases(alias, order):
    assert parse_norm(alias) == order


@pytest.mark.parametrize("bad", ["3", "fro", 0, "-1"])
def test_unknown_norm_is_a_clear_error(bad):
    with pytest.raises(TollError, match="unknown latent norm"):
        parse_norm(bad)


def test_nonfinite_values_propagate():
    x = np.zeros((2, 3), np.float32)
    x_hat = np.array([[np.nan, 0, 0], [np.inf, 0, 0]], np.float32)
    out = np.asarray(toll_score(x, x_hat, np.ones((2, 2), np.float32), 1.0))
    assert np.isnan(out[0]) and np.isinf(out[1])
    assert np.isnan(float(latent_norm(np.array([[np.nan, 1.0]]))[0]))


@pytest.mark.parametrize("fn", [toll_score, toll_loss])
@pytest.mark.parametrize("x, x_hat, z, message", [
    (np.zeros((2, 3)), np.zeros((2, 4)), np.zeros((2, 2)),
     r"x_hat has shape \(2, 4\) but x has \(2, 3\)"),
    (np.zeros((2, 3)), np.zeros((3, 3)), np.zeros((2, 2)), r"x_hat has shape \(3, 3\)"),
    (np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((3, 2)), "z has batch size 3 but x has 2"),
    (np.zeros(()), np.zeros(()), np.zeros((1, 2)), "need a leading batch axis"),
])
def test_mismatched_shapes_are_toll_errors(fn, x, x_hat, z, message):
    for cast in (np.asarray, jnp.asarray):  # NumPy and JAX inputs alike
        with pytest.raises(TollError, match=message):
            fn(cast(x), cast(x_hat), cast(z), 1.0)


def test_shape_checks_work_under_jit():
    # Shapes are static: the check runs at trace time, the jitted function still works.
    loss = jax.jit(lambda x, xh, z: toll_loss(x, xh, z, 2.0))
    assert float(loss(X, X_HAT, Z)) == pytest.approx(float(toll_loss(X, X_HAT, Z, 2.0)))
    with pytest.raises(TollError, match="x_hat has shape"):
        loss(X, X_HAT[:, :2], Z)


@pytest.mark.parametrize("fn", [toll_score, toll_loss])
def test_a_concrete_beta_is_checked(fn):
    # a string was a TypeError from inside the product; -1 and NaN gave meaningless scores
    for beta in ("1", -1.0, float("nan"), np.array(1e39)):
        with pytest.raises(TollError, match=r"beta"):
            fn(X, X_HAT, Z, beta)
    # NumPy/JAX scalars and a per-sample array are numbers; a traced beta is not checked
    expected = np.asarray(fn(X, X_HAT, Z, 2.0))
    for beta in (np.float32(2.0), jnp.asarray(2.0), jnp.full((X.shape[0],), 2.0)):
        np.testing.assert_array_equal(np.asarray(fn(X, X_HAT, Z, beta)), expected)
    at_zero, at_one = np.asarray(fn(X, X_HAT, Z, 0.0)), np.asarray(fn(X, X_HAT, Z, 1.0))
    np.testing.assert_allclose(jax.jit(lambda b: fn(X, X_HAT, Z, b))(-1.0),
                               2 * at_zero - at_one, rtol=1e-5)


def test_empty_batch():
    empty = jnp.zeros((0, 3)), jnp.zeros((0, 3)), jnp.zeros((0, 2))
    assert toll_score(*empty, 1.0).shape == (0,)  # nothing to score: no scores
    with pytest.raises(TollError, match="empty batch"):  # the mean of nothing has no value
        toll_loss(*empty, 1.0)


@pytest.mark.parametrize("alias, order", [
    ("l1", 1), ("L1", 1), ("1.0", 1), (1.0, 1), ("l2", 2), ("2.0", 2), (2.0, 2),
    ("linf", math.inf), ("Linf", math.inf), ("infinity", math.inf), ("INF", math.inf),
    (float("inf"), math.inf),
])
def test_parse_norm_every_documented_alias(alias, order):
    # "L1" was never checked: mapping it to the L2 norm went unnoticed.
    assert parse_norm(alias) == order
    z = np.array([[3.0, -4.0]], np.float32)  # ||z||_1 = 7, ||z||_2 = 5, ||z||_inf = 4
    expected = {1: 7.0, 2: 5.0, math.inf: 4.0}[order]
    np.testing.assert_allclose(latent_norm(z, alias), [expected], rtol=1e-6)


@pytest.mark.parametrize("fn", [toll_score, toll_loss])
def test_a_code_without_a_batch_axis_is_a_toll_error(fn):
    # x and x_hat have a batch axis, z is a scalar: an IndexError from z_shape[0] otherwise.
    with pytest.raises(TollError, match="need a leading batch axis"):
        fn(X, X_HAT, np.float32(1.0), 1.0)
