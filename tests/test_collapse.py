"""collapse_loss: values by hand, target options, weights/mask, gradients (closed form and
finite differences) and errors."""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tolljax.errors import TollError
from tolljax.losses import collapse_loss, latent_norm

F = jnp.array([[1.0, 0.0], [0.0, 2.0], [2.0, 4.0]])  # batch mean (1, 2)


@pytest.mark.parametrize("norm, expected", [
    # differences from the mean: (0, −2), (−1, 0), (1, 2)
    (2, (2.0 + 1.0 + math.sqrt(5.0)) / 3),
    (1, (2.0 + 1.0 + 3.0) / 3),
    ("inf", (2.0 + 1.0 + 2.0) / 3),
])
def test_batch_mean_target_by_hand(norm, expected):
    assert float(collapse_loss(F, "batch_mean", norm)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("norm, expected", [
    (2, (1.0 + 2.0 + math.sqrt(20.0)) / 3), (1, (1.0 + 2.0 + 6.0) / 3), ("inf", (1 + 2 + 4) / 3),
])
def test_origin_target_is_tolls_latent_term(norm, expected):
    assert float(collapse_loss(F, jnp.zeros(2), norm)) == pytest.approx(expected, rel=1e-6)
    assert float(collapse_loss(F, 0.0, norm)) == pytest.approx(expected, rel=1e-6)
    # same as the β-term of Toll's loss: mean over the batch of ||z||_p
    assert float(collapse_loss(F, jnp.zeros(2), norm)) == pytest.approx(
        float(jnp.mean(latent_norm(F, norm))), rel=1e-6)


def test_array_targets_per_sample_and_image_shaped():
    per_sample = jnp.array([[1.0, 0.0], [0.0, 0.0], [2.0, 1.0]])  # distances 0, 2, 3
    assert float(collapse_loss(F, per_sample)) == pytest.approx(5.0 / 3)
    imgs = jnp.arange(8.0).reshape(2, 2, 2)  # two 2x2 "images"
    centre = jnp.ones((2, 2))
    want = np.mean([np.linalg.norm(np.arange(4.0) - 1), np.linalg.norm(np.arange(4.0, 8) - 1)])
    assert float(collapse_loss(imgs, centre)) == pytest.approx(want, rel=1e-6)
    assert float(collapse_loss(imgs, "batch_mean")) == pytest.approx(
        np.linalg.norm(np.full(4, 2.0)), rel=1e-6)  # each pixel is ±2 from the mean


def test_weights_mask_and_fractional_weights():
    # mask: only the first two samples collapse; mean (0.5, 1); both at distance √1.25
    mask = jnp.array([1.0, 1.0, 0.0])
    assert float(collapse_loss(F, weights=mask)) == pytest.approx(math.sqrt(1.25), rel=1e-6)
    # weights (2, 1, 1): weighted mean (1, 1.5); distances 1.5, √1.25, √7.25
    w = jnp.array([2.0, 1.0, 1.0])
    want = (2 * 1.5 + math.sqrt(1.25) + math.sqrt(7.25)) / 4
    assert float(collapse_loss(F, weights=w)) == pytest.approx(want, rel=1e-6)
    # no normal sample in the batch: zero loss, zero (finite) gradient
    zero = jnp.zeros(3)
    assert float(collapse_loss(F, weights=zero)) == 0.0
    g = jax.grad(lambda f: collapse_loss(f, weights=zero))(F)
    assert np.all(np.asarray(g) == 0.0)


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_gradient_closed_form_fixed_and_stopped_batch_mean():
    f = np.asarray(F)
    t = np.array([0.5, -1.0])
    g = np.asarray(jax.grad(lambda x: collapse_loss(x, jnp.asarray(t)))(F))
    np.testing.assert_allclose(g, _unit(f - t) / 3, rtol=1e-5)
    # stop-gradient batch mean: the same as a fixed target at the mean
    g = np.asarray(jax.grad(lambda x: collapse_loss(x, "batch_mean"))(F))
    np.testing.assert_allclose(g, _unit(f - f.mean(0)) / 3, rtol=1e-5, atol=1e-7)


def test_gradient_through_the_mean_closed_form_and_finite_differences():
    f = np.asarray(F)
    u = _unit(f - f.mean(0))
    want = (u - u.mean(0)) / 3  # d/df_k mean_b ||f_b − mean(f)||
    fn = lambda x: collapse_loss(x, "batch_mean", stop_gradient_target=False)  # noqa: E731
    g = np.asarray(jax.grad(fn)(F))
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)
    eps = 1e-3
    fd = np.zeros_like(f)
    for i in range(f.shape[0]):
        for j in range(f.shape[1]):
            e = np.zeros_like(f)
            e[i, j] = eps
            fd[i, j] = (float(fn(jnp.asarray(f + e))) - float(fn(jnp.asarray(f - e)))) / (2 * eps)
    np.testing.assert_allclose(fd, want, atol=2e-3)


@pytest.mark.parametrize("norm", [1, "inf"])
def test_gradient_l1_and_linf(norm):
    t = jnp.array([0.5, -1.0])
    d = np.asarray(F) - np.asarray(t)  # (0.5, 1), (−0.5, 3), (1.5, 5)
    g = np.asarray(jax.grad(lambda x: collapse_loss(x, t, norm))(F))
    if norm == 1:
        want = np.sign(d) / 3
    else:  # only the largest |d| of each row
        want = np.zeros_like(d)
        idx = np.argmax(np.abs(d), axis=1)
        want[np.arange(3), idx] = np.sign(d[np.arange(3), idx]) / 3
    np.testing.assert_allclose(g, want, rtol=1e-6)


def test_zero_difference_has_finite_zero_gradient_and_jits():
    f = jnp.ones((4, 3))
    g = jax.jit(jax.grad(lambda x: collapse_loss(x, jnp.ones(3))))(f)
    assert np.all(np.asarray(g) == 0.0)
    assert float(jax.jit(collapse_loss, static_argnums=(1, 2))(f, "batch_mean", 2)) == 0.0


def test_gradient_reaches_encoder_parameters():
    import flax.linen as nn

    enc = nn.Dense(3)
    x = jax.random.normal(jax.random.key(0), (8, 5))
    params = enc.init(jax.random.key(1), x)
    g = jax.grad(lambda p: collapse_loss(enc.apply(p, x), weights=(jnp.arange(8) < 5)))(params)
    leaves = jax.tree_util.tree_leaves(g)
    assert all(np.all(np.isfinite(leaf)) for leaf in leaves)
    assert sum(float(jnp.abs(leaf).sum()) for leaf in leaves) > 0


@pytest.mark.parametrize("kwargs, message", [
    ({"target": "origin"}, "unknown target 'origin'"),
    ({"target": jnp.zeros(3)}, "target shape (3,)"),
    ({"norm": 3}, "unknown latent norm 3"),
    ({"weights": jnp.ones(2)}, "weights must have shape (3,)"),
    # a NaN weight made the total NaN and the loss a silent 0.0; negative ones were unchecked
    ({"weights": jnp.array([1.0, jnp.nan, 0.0])}, "weights must be finite and >= 0 in float32; those at positions [1]"),
    ({"weights": jnp.array([1.0, -1.0, 0.0])}, "weights must be finite and >= 0 in float32; those at positions [1]"),
    # finite on the host, inf after the cast to the features' float32: the loss was NaN
    ({"weights": [1.0, 1.0, 1e39]}, "weights must be finite and >= 0 in float32; those at positions [2]"),
    ({"weights": [3e38, 3e38, 0.0]}, "the weights sum to 6e+38, beyond float32; rescale them"),
])
def test_errors(kwargs, message):
    with pytest.raises(TollError, match=re.escape(message)):
        collapse_loss(F, **kwargs)


def test_traced_invalid_weights_give_nan_and_valid_ones_the_host_value():
    loss = jax.jit(lambda w: collapse_loss(F, weights=w))
    assert np.isnan(float(loss(jnp.array([1.0, -1.0, 0.0]))))
    w = jnp.array([1.0, 0.0, 1.0])
    assert float(loss(w)) == float(collapse_loss(F, weights=w))
