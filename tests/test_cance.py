"""CANCE (tolljax.cance): composite features, covariance loss, noise distribution,
augmentation, NCE loss/objectives, density recovery, decoupled AE training, the runner."""
import functools
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from tolljax import cance
from tolljax.errors import TollError
from tolljax.models import MLPAutoencoder, init_variables
from tolljax.train import create_train_state

# ------------------------------------------------------------------ composite features


def test_reconstruction_features_by_hand():
    x = jnp.array([[1.0, 0.0, 0.0, 0.0], [1.0, 2.0, 0.0, 0.0]])
    x_hat = jnp.array([[0.0, 1.0, 0.0, 0.0], [2.0, 4.0, 0.0, 0.0]])
    np.testing.assert_allclose(cance.squared_error(x, x_hat), [2 / 4, 5 / 4])
    np.testing.assert_allclose(cance.cosine_dissimilarity(x, x_hat), [1.0, 0.0], atol=1e-6)
    # a zero reconstruction has no direction: dissimilarity 1
    assert float(cance.cosine_dissimilarity(x[:1], jnp.zeros((1, 4)))[0]) == 1.0
    # images are flattened: (2, 2, 2, 1) gives the same as (2, 4)
    np.testing.assert_allclose(cance.reconstruction_features(x.reshape(2, 2, 2, 1),
                                                             x_hat.reshape(2, 2, 2, 1)),
                               cance.reconstruction_features(x, x_hat))


def test_cosine_dissimilarity_holds_at_extreme_scales():
    # the direct formula squares the entries: [1e-7, 0] gave 1 (its norm product fell below
    # eps) and [1e20, 0] gave NaN (inf / inf); the cosine does not depend on scale
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 64, 9))
    reference = 1 - np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    for scale in (1e-30, 1e-20, 1e-7, 1.0, 1e19, 1e30, 1e37):
        got = cance.cosine_dissimilarity(jnp.asarray(a * scale, jnp.float32),
                                         jnp.asarray(b * scale, jnp.float32))
        np.testing.assert_allclose(got, reference, atol=2e-6, err_msg=f"scale {scale}")
    tiny, huge = jnp.array([[1e-7, 0.0]]), jnp.array([[1e20, 0.0], [3e38, -3e38]])
    np.testing.assert_allclose(cance.cosine_dissimilarity(tiny, tiny), [0.0], atol=1e-6)
    np.testing.assert_allclose(cance.cosine_dissimilarity(huge, huge), [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(cance.cosine_dissimilarity(huge, -huge), [2.0, 2.0], atol=1e-6)
    assert float(cance.cosine_dissimilarity(tiny, jnp.zeros((1, 2)))[0]) == 1.0
    # ordinary inputs keep the direct formula's bits (the CANCE results do not move)
    x, y = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    direct = 1 - jnp.sum(x * y, -1) / jnp.sqrt(jnp.sum(x * x, -1) * jnp.sum(y * y, -1))
    np.testing.assert_array_equal(cance.cosine_dissimilarity(x, y), direct)


class _ToyAE(nn.Module):
    """x -> z = x[:, :2] * w, x_hat = 0.5 x (one parameter, so apply_fn works)."""

    def setup(self):
        self.w = self.param("w", lambda k: jnp.array(2.0))

    def encode(self, x, train=False):
        return x[:, :2] * self.w

    def decode(self, z, train=False):
        return z

    def __call__(self, x, train=False):
        return 0.5 * x, self.encode(x)


def test_composite_features_of_a_model_and_chunking():
    model = _ToyAE()
    x = jax.random.normal(jax.random.key(0), (5, 3))
    variables = model.init(jax.random.key(1), x)
    f = cance.composite_features(model.apply, variables, x)
    xn = np.asarray(x)
    want = np.concatenate([2 * xn[:, :2], np.mean((0.5 * xn) ** 2, 1, keepdims=True),
                           np.zeros((5, 1))], axis=1)
    np.testing.assert_allclose(f, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cance.composite_features(model.apply, variables, x, chunk=2), f,
                               rtol=1e-6)
    np.testing.assert_array_equal(cance.select_features(f, "latent"), f[:, :2])
    np.testing.assert_array_equal(cance.select_features(f, "recon"), f[:, 2:])
    np.testing.assert_array_equal(cance.error_score(f), f[:, 2])
    with pytest.raises(TollError, match="unknown feature set"):
        cance.select_features(f, "pixels")


# ------------------------------------------------------------------ covariance loss


def test_covariance_loss_by_hand():
    same = jnp.array([[1.0, 1.0], [-1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]])
    assert float(cance.covariance_loss(same)) == pytest.approx(1.0 / (1 + 1e-5) ** 2, rel=1e-6)
    orth = jnp.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert float(cance.covariance_loss(orth)) == pytest.approx(0.0, abs=1e-7)
    # scale-free (it is the correlation), and k(k-1) off-diagonal entries averaged
    z = np.asarray(jax.random.normal(jax.random.key(0), (64, 3))) @ np.array(
        [[1, 0.5, 0], [0, 1, 0.3], [0, 0, 1.0]])
    c = np.corrcoef(z, rowvar=False)
    want = (np.sum(c ** 2) - 3) / 6
    assert float(cance.covariance_loss(jnp.asarray(z))) == pytest.approx(want, rel=1e-3)
    assert float(cance.covariance_loss(jnp.asarray(100 * z))) == pytest.approx(want, rel=1e-3)
    assert float(cance.covariance_loss(jnp.ones((4, 1)))) == 0.0


# ------------------------------------------------------------------ noise distribution


def test_lognormal_mode_matches_scipy():
    s, mu = 0.7, 0.3
    dist = scipy.stats.lognorm(s=s, scale=math.exp(mu))
    mean, var = dist.stats("mv")
    assert float(cance.lognormal_mode(mean, var)) == pytest.approx(math.exp(mu - s * s), rel=1e-5)


def _stats_data(n=400, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) @ np.array([[1.0, 0.4, 0.0], [0.0, 0.8, 0.2], [0.0, 0.0, 0.5]])
    x[:, -1] = np.abs(x[:, -1]) + 0.1  # a positive "reconstruction" feature
    return x.astype(np.float32)


def test_fit_noise_stats_masks_padding_and_matches_numpy():
    x = _stats_data()
    padded = np.concatenate([x, 100 * np.ones((50, 3), np.float32)])
    stats = cance.fit_noise_stats(jnp.asarray(padded), 400, n_recon=1, ridge=0.0)
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.chol @ stats.chol.T, np.cov(x, rowvar=False), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(stats.chol_inv @ stats.chol, np.eye(3), atol=1e-5)
    m, v = x[:, -1].mean(), x[:, -1].var(ddof=1)
    assert float(stats.recon_mode[0]) == pytest.approx(m ** 4 / (m ** 2 + v) ** 1.5, rel=1e-4)


def test_fit_noise_stats_is_bit_identical_whatever_the_padding():
    """The statistics of the valid rows do not depend on how many padding rows follow them
    (the runner pads every class to the largest chosen class): one GEMM over all rows blocked
    its sum by the padded length, changing the last bits."""
    x = np.asarray(jax.random.normal(jax.random.key(3), (300, 18))) * 3 + 1
    fit = jax.jit(lambda a, n: cance.fit_noise_stats(a, n, n_recon=2))
    ref = fit(jnp.asarray(x, jnp.float32), jnp.int32(300))
    for pad in (100, 700):
        padded = np.concatenate([x, np.zeros((pad, 18))]).astype(np.float32)
        got = fit(jnp.asarray(padded), jnp.int32(300))
        for a, b in zip(ref, got):
            np.testing.assert_array_equal(a, b)


def test_noise_density_matches_scipy_and_samples_have_its_covariance():
    stats = cance.fit_noise_stats(jnp.asarray(_stats_data()))
    theta = jnp.array([-1.0, 0.5, 2.0])
    a = np.asarray(cance.noise_scale(theta))
    assert np.all(a >= 1.0)
    m = np.asarray(stats.chol) * a[None, :]
    u = np.asarray(jax.random.normal(jax.random.key(3), (7, 3)))
    want = scipy.stats.multivariate_normal(np.asarray(stats.mean), m @ m.T).logpdf(u)
    np.testing.assert_allclose(cance.noise_log_prob(stats, theta, jnp.asarray(u)), want,
                               rtol=1e-4)
    y = np.asarray(cance.sample_noise(jax.random.key(4), stats, theta, 200_000))
    np.testing.assert_allclose(np.cov(y, rowvar=False), m @ m.T, atol=0.03 * np.abs(m @ m.T).max())
    np.testing.assert_allclose(cance.noise_marginal_std(stats, theta), np.sqrt(np.diag(m @ m.T)),
                               rtol=1e-5)
    np.testing.assert_allclose(cance.noise_scale(cance.init_noise_theta(3, 1.1)), 1.1, rtol=1e-5)
    with pytest.raises(TollError, match="finite number > 1"):
        cance.init_noise_theta(3, 1.0)


def test_init_noise_theta_inverts_softplus_without_overflow():
    # softplus⁻¹ in the form that does not overflow; against float64 log(expm1(y)) where that
    # form is finite, and for y = 999 (log(expm1(999)) raises OverflowError) against y itself.
    for scale in (1.001, 1.1, 1.5, 2.0, 30.0):
        np.testing.assert_allclose(cance.init_noise_theta(2, scale),
                                   np.log(np.expm1(scale - 1.0)), rtol=1e-6)
    np.testing.assert_allclose(cance.noise_scale(cance.init_noise_theta(2, 1000.0)), 1000.0)
    for bad in (float("nan"), float("inf"), "2", True, 10**400):
        with pytest.raises(TollError, match="finite number > 1"):
            cance.init_noise_theta(2, bad)
    with pytest.raises(TollError, match="d must be a positive integer"):
        cance.init_noise_theta(0)


# ------------------------------------------------------------------ augmentation (eq. 8)


def test_augmentation_keeps_latent_bounds_recon_and_satisfies_proposition_1():
    x = jnp.asarray(_stats_data(n=2000))
    stats = cance.fit_noise_stats(x, n_recon=1)
    theta = cance.init_noise_theta(3)
    aug, replaced = cance.augment_recon(jax.random.key(0), x, stats, theta, n_recon=1)
    aug, replaced, xn = np.asarray(aug), np.asarray(replaced), np.asarray(x)
    np.testing.assert_array_equal(aug[:, :2], xn[:, :2])  # latent part untouched
    np.testing.assert_array_equal(aug[~replaced], xn[~replaced])  # kept rows untouched
    assert abs(replaced.mean() - 0.5) < 0.04
    mode = float(stats.recon_mode[0])
    fake = aug[replaced, 2]
    assert fake.min() >= 0.0 and fake.max() <= mode
    mu = float(stats.mean[2])
    sigma = float(cance.noise_marginal_std(stats, theta)[2])
    tn = scipy.stats.truncnorm((0 - mu) / sigma, (mode - mu) / sigma, loc=mu, scale=sigma)
    assert fake.mean() == pytest.approx(tn.mean(), abs=4 * tn.std() / math.sqrt(fake.size))
    # Proposition 1: on [0, m̂] the augmented marginal ≥ ½·TN > noise marginal
    r = np.linspace(0.0, mode, 50)
    assert mode < mu
    assert np.all(0.5 * tn.pdf(r) > scipy.stats.norm(mu, sigma).pdf(r))
    # no reconstruction features: nothing changes
    same, mask = cance.augment_recon(jax.random.key(0), x, stats, theta, n_recon=0)
    assert same is x and not bool(mask.any())


# ------------------------------------------------------------------ NCE losses


def test_nce_loss_by_hand():
    assert float(cance.nce_loss(jnp.zeros(1), jnp.zeros(2), 2)) == pytest.approx(3 * math.log(2))
    g_x, g_y = jnp.array([1.0, -2.0]), jnp.array([0.5, 0.0, -1.0, 3.0])
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    want = -np.mean(np.log(sig(np.array([1.0, -2.0])))) - 2 * np.mean(
        np.log(1 - sig(np.array([0.5, 0.0, -1.0, 3.0]))))
    assert float(cance.nce_loss(g_x, g_y, 2)) == pytest.approx(want, rel=1e-6)


def test_noise_objective_value_and_stop_gradient_semantics():
    x = jnp.asarray(_stats_data(n=64))
    stats = cance.fit_noise_stats(x, n_recon=1)
    net = cance.EstimationNet((8,))
    params = net.init(jax.random.key(0), x[:1])["params"]
    theta0 = jnp.array([-1.0, 0.2, 0.5])
    key = jax.random.key(5)
    obj = functools.partial(cance.noise_objective, net=net, params=params, stats=stats, x=x,
                            eps_key=key, noise_ratio=2)
    # value: the plain NCE loss of G on the data and on the reparameterised noise samples
    y = cance.sample_noise(key, stats, theta0, 128)
    g = lambda u: cance.log_odds(net, params, stats, u)  # noqa: E731
    assert float(jax.jit(obj)(theta0)) == pytest.approx(float(cance.nce_loss(g(x), g(y), 2)),
                                                        rel=1e-5)

    # gradient: that of h(θ) = NCE loss with log-odds G + log q_θ0 − log q_θ (θ0 held fixed)
    def h(theta):
        def gt(u):
            return (g(u) + cance.noise_log_prob(stats, theta0, u)
                    - cance.noise_log_prob(stats, theta, u))
        return cance.nce_loss(gt(x), gt(cance.sample_noise(key, stats, theta, 128)), 2)

    grad = np.asarray(jax.jit(jax.grad(obj))(theta0))
    np.testing.assert_allclose(grad, np.asarray(jax.jit(jax.grad(h))(theta0)), rtol=1e-4,
                               atol=1e-6)
    eps = 1e-2
    shifted = jnp.concatenate([theta0 + eps * jnp.eye(3), theta0 - eps * jnp.eye(3)])
    values = np.asarray(jax.jit(jax.vmap(h))(shifted))
    fd = (values[:3] - values[3:]) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=0.05, atol=1e-3)
    # the data term depends on θ (unlike the naive objective, where only the noise term does)
    data_only = jax.grad(lambda th: -jnp.mean(jax.nn.log_sigmoid(
        g(x) + cance.noise_log_prob(stats, jax.lax.stop_gradient(th), x)
        - cance.noise_log_prob(stats, th, x))))(theta0)
    assert float(jnp.abs(data_only).sum()) > 1e-3


def _gmm(key, n):
    """2-D two-component mixture, with its exact log density."""
    k1, k2 = jax.random.split(key)
    comp = jax.random.bernoulli(k1, 0.5, (n,))
    centres = jnp.where(comp[:, None], jnp.array([1.5, 0.0]), jnp.array([-1.5, 0.0]))
    return centres + jax.random.normal(k2, (n, 2)) * jnp.array([0.5, 0.8])


def _gmm_logpdf(u):
    comps = [scipy.stats.multivariate_normal([c, 0.0], np.diag([0.25, 0.64])).logpdf(u)
             for c in (1.5, -1.5)]
    return np.logaddexp(*comps) + np.log(0.5)


def test_nce_recovers_a_density_and_flags_far_points():
    train = _gmm(jax.random.key(0), 2000)
    test = _gmm(jax.random.key(1), 300)
    far = jnp.array([[0.0, 3.5], [5.0, 0.0], [-4.0, -3.0]])
    val_x = jnp.concatenate([test[:100], far])
    val_y = jnp.concatenate([jnp.zeros(100, jnp.int32), jnp.ones(3, jnp.int32)])
    cfg = cance.NCEConfig(features="composite", hidden=(32, 32), steps=600, batch_size=200,
                          eval_every=200, lr=3e-3, select="last", metric="auroc")
    out = jax.jit(functools.partial(cance.fit_nce, config=cfg))(
        jax.random.key(2), train, 2000, val_x, val_y, val_x, val_y)
    assert int(out["best_step"]) == 600 and out["val_curve"].shape == (3,)
    assert not bool(out["nonfinite"])
    assert float(out["test_metric"]) == 1.0  # the far points score highest
    est = -np.asarray(out["test_scores"][:100])  # log p estimates of held-out data
    true = _gmm_logpdf(np.asarray(test[:100]))
    assert scipy.stats.spearmanr(est, true)[0] > 0.9
    assert np.median(np.abs(est - true)) < 0.35  # NCE is (approximately) self-normalised


def test_fit_nce_selection_vmap_and_variants():
    train = _gmm(jax.random.key(0), 300)
    feats = jnp.concatenate([train, jnp.abs(train[:, :1]) + 0.1], axis=1)  # 1 "recon" column
    feats = jnp.concatenate([feats, jnp.abs(train[:, 1:]) + 0.1], axis=1)  # 2 recon columns
    y = (jnp.arange(300) % 10 == 0).astype(jnp.int32)
    cfg = cance.variant_nce_config("cance", cance.NCEConfig(hidden=(16,), steps=100,
                                                            batch_size=64, eval_every=50,
                                                            select="metric", metric="auroc"))
    assert cfg.augment and cfg.features == "composite" and cfg.n_recon == 2
    fit = jax.jit(jax.vmap(functools.partial(cance.fit_nce, config=cfg),
                           in_axes=(0, None, None, None, None, None, None)))
    keys = jnp.stack([jax.random.key(0), jax.random.key(1)])
    out = fit(keys, feats, 300, feats, y, feats, y)
    assert out["test_scores"].shape == (2, 300)
    assert set(np.asarray(out["best_step"]).tolist()) <= {50, 100}
    assert np.all(np.asarray(out["noise_scale"]) >= 1.0)
    lat = cance.variant_nce_config("latent", cfg)
    assert lat.features == "latent" and not lat.augment and lat.n_recon == 0
    assert cance.variant_nce_config("recon", cfg) is None
    assert cance.parse_variants("cance, recon") == ["cance", "recon"]
    with pytest.raises(TollError, match="unknown variant"):
        cance.parse_variants("cance,dagmm")
    for bad in (3, ["recon", 3], None):
        with pytest.raises(TollError, match="comma-separated string or a list of names"):
            cance.parse_variants(bad)


@pytest.mark.parametrize("kwargs, message", [
    ({"features": "latent", "augment": True}, "augmentation replaces"),
    ({"features": "recon"}, "NCE features must be"),
    ({"steps": 30, "eval_every": 20}, "not a multiple"),
    ({"select": "best"}, "unknown selection"),
    ({"noise_ratio": 0}, "noise-ratio must be a positive"),
    # these were accepted and failed (or trained to NaN) inside JAX
    ({"noise_ratio": 2.5}, "noise-ratio must be a positive integer, got 2.5"),
    ({"weight_decay": float("nan")}, "weight decay must be a finite number >= 0"),
    ({"hidden": (0,)}, "hidden widths must be positive integers"),
    ({"lr": 1e-50}, "learning rate=1e-50 is 0 in the float32 arithmetic"),
    # a NumPy TypeError from np.isfinite, or (the noise scale) an error only inside fit_nce
    ({"lr": "1"}, "learning rate must be a finite number > 0, got '1'"),
    ({"noise_lr": "0.1"}, "noise learning rate must be a finite number > 0, got '0.1'"),
    ({"weight_decay": "a"}, "weight decay must be a finite number >= 0, got 'a'"),
    ({"initial_noise_scale": 1.0}, "initial noise scale must be a finite number > 1, got 1.0"),
])
def test_nce_config_errors(kwargs, message):
    with pytest.raises(TollError, match=message):
        cance.NCEConfig(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"loss": "toll", "beta": float("nan")}, "beta must be a finite number >= 0"),
    ({"loss": "toll", "beta": -1.0}, "beta must be a finite number >= 0"),
    ({"batch_size": 2.5}, "batch-size must be a positive integer, got 2.5"),
    ({"lr": "1"}, "learning rate must be a finite number > 0, got '1'"),
    ({"cov_weight": "a"}, "--cov-weight must be a finite number >= 0, got 'a'"),
    ({"cov_weight": -1.0}, "--cov-weight must be a finite number >= 0, got -1.0"),
    # 2.0 was accepted and a later error named --steps
    ({"decoder_steps": 20.0}, "--decoder-steps 20.0 must be an integer >= 0"),
    ({"decoder_steps": -20}, "--decoder-steps -20 must be an integer >= 0"),
])
def test_ae_config_refuses_a_bad_toll_beta_and_fractional_counts(kwargs, message):
    with pytest.raises(TollError, match=message):
        cance.AEConfig(**kwargs)


def test_fit_nce_without_a_selected_checkpoint_reports_no_metric():
    # lr 1e30 diverges at once: no checkpoint has a finite validation value. The untrained
    # network's AUROC used to be reported as the test metric.
    x = jnp.asarray(np.random.default_rng(0).standard_normal((200, 3)), jnp.float32)
    y = (jnp.arange(200) % 10 == 0).astype(jnp.int32)
    cfg = cance.NCEConfig(features="latent", hidden=(8,), steps=20, batch_size=32, eval_every=10,
                          lr=1e30, select="metric", metric="auroc")
    out = jax.jit(functools.partial(cance.fit_nce, config=cfg))(jax.random.key(0), x, 200, x, y,
                                                                x, y)
    assert int(out["best_step"]) == 0 and bool(out["nonfinite"])
    assert np.isnan(float(out["test_metric"]))


# ------------------------------------------------------------------ decoupled AE training


def _tiny_ae():
    return MLPAutoencoder(features=6, z_dim=2, hidden=(8,))


def test_decoder_step_freezes_encoder_parameters_and_statistics():
    model = _tiny_ae()
    x = jax.random.normal(jax.random.key(0), (16, 6))
    v = init_variables(model, jax.random.key(1), (6,))
    state = create_train_state(model, jax.random.key(1), (6,), cance.decoder_optimizer(
        v["params"], 1e-2))
    step = jax.jit(cance.decoder_step)
    for _ in range(3):
        new, m = step(state, x)
        assert np.isfinite(float(m["loss"]))
        state = new
    v0 = init_variables(model, jax.random.key(1), (6,))
    same = jax.tree_util.tree_map(lambda a, b: bool(jnp.all(a == b)),
                                  state.params["encoder"], v0["params"]["encoder"])
    assert all(jax.tree_util.tree_leaves(same))
    stats_same = jax.tree_util.tree_map(lambda a, b: bool(jnp.all(a == b)),
                                        state.batch_stats["encoder"], v0["batch_stats"]["encoder"])
    assert all(jax.tree_util.tree_leaves(stats_same))
    changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)),
                                     state.params["decoder"], v0["params"]["decoder"])
    assert all(jax.tree_util.tree_leaves(changed))
    with pytest.raises(TollError, match="'encoder' and 'decoder'"):
        cance.decoder_optimizer({"dense": {}}, 1e-3)


@pytest.mark.parametrize("loss", ["cance", "toll"])
def test_fit_autoencoder_two_stages(loss):
    model = _tiny_ae()
    rng = np.random.default_rng(0)
    train = jnp.asarray(rng.normal(size=(40, 6)), jnp.float32)
    val_x = jnp.asarray(np.concatenate([rng.normal(size=(20, 6)), 4 + rng.normal(size=(5, 6))]),
                        jnp.float32)
    val_y = jnp.asarray([0] * 20 + [1] * 5)
    cfg = cance.AEConfig(steps=20, decoder_steps=10, batch_size=16, eval_every=10, loss=loss,
                         select="loss", beta=1.0)
    out = jax.jit(functools.partial(cance.fit_autoencoder, model=model, config=cfg))(
        jax.random.key(0), {"train": train, "val_x": val_x, "val_y": val_y})
    assert out["val_curve"].shape == (3,) and out["loss_curve"].shape == (3,)
    assert int(out["best_step"]) in (10, 20) and int(out["best_decoder_step"]) in (0, 10)
    assert not bool(out["nonfinite"])
    # the criterion is minus the normal validation MSE of the selected model
    f = cance.composite_features(model.apply, out["variables"], val_x)
    assert float(out["best_val"]) == pytest.approx(-float(jnp.mean(f[:20, -2])), rel=1e-4)


def test_fit_functions_accept_numpy_arrays_outside_jit():
    # Were a TracerArrayConversionError from inside the scan (the traced batch indices cannot
    # index a NumPy array); the results are those of device arrays, bit for bit.
    rng = np.random.default_rng(0)
    train = rng.normal(size=(40, 6)).astype(np.float32)
    val_x = np.concatenate([rng.normal(size=(20, 6)), 4 + rng.normal(size=(5, 6))]).astype(np.float32)
    val_y = np.array([0] * 20 + [1] * 5, np.int32)
    model = _tiny_ae()
    cfg = cance.AEConfig(steps=4, decoder_steps=0, batch_size=16, eval_every=2)
    host = {"train": train, "val_x": val_x, "val_y": val_y}
    a = cance.fit_autoencoder(jax.random.key(0), host, model=model, config=cfg)
    b = cance.fit_autoencoder(jax.random.key(0), {k: jnp.asarray(v) for k, v in host.items()},
                              model=model, config=cfg)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, a, b))
    ncfg = cance.NCEConfig(features="composite", steps=4, eval_every=2, batch_size=16, hidden=(8,))
    args = (train, 40, val_x, val_y, val_x, val_y)
    a = cance.fit_nce(jax.random.key(1), *args, config=ncfg)
    b = cance.fit_nce(jax.random.key(1), *map(jnp.asarray, args), config=ncfg)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(
        lambda x, y: np.array_equal(x, y, equal_nan=True), a, b))


def test_small_mnist_autoencoder_trains_without_xla_convolutions_on_cpu():
    """The budget AE's convolutions are tolljax.ops.Conv: GEMMs on CPU (XLA:CPU's own
    convolution gradients inside the scanned training loop made a 2-seed budget run take
    over 15 minutes instead of about one), and its shapes are the documented ones."""
    from experiments.cance import small_mnist_autoencoder

    model = small_mnist_autoencoder(16)
    x = jnp.zeros((4, 28, 28, 1), jnp.float32)
    variables = init_variables(model, jax.random.key(0), (28, 28, 1))
    (x_hat, z), _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert x_hat.shape == x.shape and z.shape == (4, 16)
    n_params = sum(a.size for a in jax.tree_util.tree_leaves(variables["params"]))
    # convs 320 + 18,496 + 18,464 + 289; Dense 50,192 + 53,312; BatchNorm 2·(32 + 64 + 3136 + 32)
    assert n_params == 147_601

    def loss(params):
        out, _ = model.apply({**variables, "params": params}, x, train=True,
                             mutable=["batch_stats"])
        return jnp.sum((out[0] - x) ** 2)

    hlo = jax.jit(jax.grad(loss)).lower(variables["params"]).as_text()
    if jax.default_backend() == "cpu":
        assert "convolution" not in hlo


def test_ae_config_errors():
    with pytest.raises(TollError, match="unknown autoencoder loss"):
        cance.AEConfig(loss="mse")
    with pytest.raises(TollError, match="decoder-steps"):
        cance.AEConfig(decoder_steps=15, eval_every=10, steps=10)


# ------------------------------------------------------------------ the experiment runner


def test_stratified_subset():
    from experiments.cance import stratified_subset

    y = np.array([0] * 90 + [1] * 10)
    idx = stratified_subset(y, 20, seed=0)
    assert idx.size == 20 and np.all(np.diff(idx) > 0) and y[idx].sum() == 2
    np.testing.assert_array_equal(idx, stratified_subset(y, 20, seed=0))
    np.testing.assert_array_equal(stratified_subset(y, None, 0), np.arange(100))


@pytest.mark.parametrize("argv, label", [
    # method flags used to be missing from the label: the run looked like the paper's protocol
    (["--select", "last"], ["select=last"]),
    (["--ae-loss", "toll"], ["ae_loss=toll"]),
    (["--ae-loss", "toll", "--beta", "3"], ["ae_loss=toll", "beta=3.0"]),
    (["--fixed-noise"], ["fixed_noise=True"]),
    (["--noise-ratio", "1"], ["noise_ratio=1"]),
    (["--nce-lr", "0.01"], ["nce_lr=0.01"]),
    (["--noise-lr", "0.01"], ["noise_lr=0.01"]),
    (["--nce-hidden", "8"], ["nce_hidden=[8]"]),
    (["--standardize", "none"], ["standardize=none"]),
    (["--cov-weight", "0"], ["cov_weight=0.0"]),
    (["--val-limit", "50", "--subset-seed", "4"], ["validation subset 50", "subset_seed=4"]),
    (["--ae-steps", "40", "--ae-eval-every", "20"], ["ae_steps=40"]),
    # defaults given explicitly, and flags that change no number, are not a change
    (["--select", "loss", "--nce-hidden", "128, 128", "--cov-weight", "1", "--noise-ratio", "4",
      "--standardize", "train", "--ae-eval-every", "20", "--seeds", "3", "--seed-offset", "7",
      "--variants", "latent,cnce", "--out", "x", "--quiet", "--compile-cache", "c"], []),
    (["--val-limit", "50", "--subset-seed", "0"], ["validation subset 50"]),  # 0: the default
    (["--ae-loss", "toll", "--beta", "10"], ["ae_loss=toll"]),  # 10: Toll's Arrhythmia β
])
def test_every_changed_result_flag_is_labelled_not_the_paper_protocol(argv, label):
    from experiments.cance import build_parser, resolve_config

    assert resolve_config(build_parser().parse_args(argv))["budget"] == label


def test_changed_method_flag_is_in_the_results_md_label():
    from experiments.cance import build_parser, markdown_table, resolve_config

    cfg = resolve_config(build_parser().parse_args(["--select", "last", "--variants", "recon"]))
    entry = {"label": "Error", "test_metric": [70.0], "mean": 70.0, "std": 0.0, "paper": None,
             "failed_seeds": []}
    results = {"metric": "f1", "summary": {"recon": entry},
               "runs": [{"normal_class": None, "seeds": [0], "variants": {"recon": entry},
                         "ae": {"failed_seeds": []}}]}
    md = markdown_table(cfg, results)
    assert "**Not the paper's protocol** (CPU budget or changed defaults): select=last" in md


def test_runner_end_to_end_on_arrhythmia(tmp_path, capsys):
    from experiments.cance import main

    out = tmp_path / "cance"
    # Two of the four variants keep the test fast; all four share the code path of "cance".
    argv = ["--seeds", "2", "--ae-steps", "20", "--decoder-steps", "20", "--ae-eval-every", "20",
            "--nce-steps", "40", "--nce-eval-every", "20", "--nce-hidden", "16",
            "--variants", "recon,cance", "--out", str(out)]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["dataset"] == "arrhythmia" and res["metric"] == "f1"
    run = res["runs"][0]
    assert run["n_train"] == 232 and run["n_test"] == 90 and run["seeds"] == [0, 1]
    assert list(run["variants"]) == ["recon", "cance"]
    for v in run["variants"].values():
        assert len(v["test_metric"]) == 2 and all(0 <= t <= 100 for t in v["test_metric"])
        assert v["mean"] == pytest.approx(np.mean(v["test_metric"]))
        assert v["paper"] is None  # the paper text lost its table cells
    assert {"ae_s", "compile_s", "cance_s", "total_s"} <= set(res["timings"])
    md = (out / "results.md").read_text()
    assert "Not the paper's protocol" in md and "| CANCE |" in md and "| Error |" in md
    assert main(["--variants", "cance,dagmm", "--out", str(out)]) == 2
    assert "unknown variant" in capsys.readouterr().err
    # The Toll plots name CANCE results as such (was: "lacks runs[].best_step, ...; it was not
    # written by python -m experiments.run").
    from experiments.plots import main as plots_main

    assert plots_main([str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds CANCE results" in err and len(err.strip().splitlines()) == 1


def test_a_limit_at_least_the_set_size_is_no_budget(tmp_path, capsys):
    from experiments.cance import main

    out = tmp_path / "cance"
    assert main(["--seeds", "1", "--ae-steps", "20", "--decoder-steps", "20",
                 "--ae-eval-every", "20", "--variants", "recon", "--val-limit", "90",
                 "--test-limit", "500", "--subset-seed", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "--val-limit 90 is at least the validation set's size (90)" in printed
    assert "--test-limit 500 is at least the test set's size (90)" in printed
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["val_limit"] is None and res["config"]["test_limit"] is None
    assert res["runs"][0]["n_val"] == 90 and res["runs"][0]["n_test"] == 90
    # Left: the short training; gone: the subsets and the seed that would have drawn them.
    assert res["config"]["budget"] == ["ae_steps=20", "decoder_steps=20"]


def test_runner_on_mnist_format_files_with_the_small_conv_autoencoder(tmp_path, random_mnist_dir):
    """The MNIST budget path end to end (small conv AE, scanned and seed-vmapped), on
    official-size MNIST-format files of random pixels written here."""
    from experiments.cance import main
    folder = random_mnist_dir
    out = tmp_path / "out"
    argv = ["--dataset", "mnist", "--data-dir", str(folder), "--classes", "3", "--seeds", "2",
            "--ae-steps", "4", "--decoder-steps", "2", "--ae-eval-every", "2", "--ae-batch", "8",
            "--nce-steps", "20", "--nce-eval-every", "10", "--nce-batch", "16",
            "--nce-hidden", "8", "--val-limit", "50", "--test-limit", "60",
            "--variants", "recon,cnce", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    run = res["runs"][0]
    assert res["metric"] == "auroc" and run["normal_class"] == 3 and run["seeds"] == [0, 1]
    assert run["n_val"] == 50 and run["n_test"] == 60
    assert len(run["ae"]["loss_curve"][0]) == 3  # 2 stage-1 + 1 stage-2 checkpoints
    for v in run["variants"].values():
        assert len(v["test_metric"]) == 2 and all(0 <= t <= 100 for t in v["test_metric"])
    assert "small budget conv AE" in (out / "results.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--ae-loss", "toll", "--beta", "-1"], "--beta must be a finite number >= 0"),
    (["--ae-loss", "toll", "--beta", "nan"], "--beta must be a finite number >= 0"),
    (["--beta", "5"], "--beta is the weight of Toll's loss; it needs --ae-loss toll"),
    (["--ae-loss", "toll", "--cov-weight", "2"], "--cov-weight weighs the covariance term"),
    (["--cov-weight", "inf"], "--cov-weight must be a finite number >= 0"),
    (["--ae-lr", "0"], "--ae-lr must be a finite number > 0"),
    (["--nce-lr", "nan"], "--nce-lr must be a finite number > 0"),
    (["--noise-lr", "-1"], "--noise-lr must be a finite number > 0"),
    (["--nce-lr", "1e-50"], "--nce-lr=1e-50 is 0 in the float32 arithmetic"),
    (["--ae-loss", "toll", "--beta", "1e39"], "--beta=1e+39 is beyond the float32 range"),
    (["--nce-hidden", "0,5"], "--nce-hidden widths must be at least 1"),
    (["--nce-hidden", ","], "--nce-hidden needs at least one width, got ','"),
    (["--nce-hidden=-4"], "--nce-hidden widths must be at least 1"),
    (["--nce-hidden", "a"], "--nce-hidden takes comma-separated widths"),
    (["--val-limit", "20", "--subset-seed", "-1"], "--subset-seed must be >= 0"),
    # was accepted and changed nothing
    (["--subset-seed", "4"], "--subset-seed draws the --val-limit/--test-limit subsets"),
    (["--test-limit", "1"], "--test-limit must be at least 2"),
    (["--z-dim", "0"], "--z-dim must be at least 1"),
    (["--nce-batch", "0"], "--nce-batch must be at least 1"),
    (["--ae-steps", "30"], "--ae-steps 30 must be a multiple of --ae-eval-every 20"),
    (["--decoder-steps", "-20"], "--decoder-steps must be >= 0"),
    (["--noise-ratio", "0"], "--noise-ratio must be at least 1"),
    (["--ae-batch", "100000"], "only 232 normal training samples but --ae-batch 100000"),
    (["--out", "/proc/nope"], "--out /proc/nope: cannot create the folder"),
    (["--out", "FILE"], "is a file, not a folder"),
    (["--dataset", "mnist"], "--dataset mnist needs --data-dir"),
    (["--variants", "recon,recon"], "variants 'recon,recon' name a variant twice"),
    # were ignored without a word
    (["--fixed-noise", "--noise-lr", "0.01"], "--noise-lr trains the noise distribution"),
    (["--variants", "recon", "--nce-steps", "40"],
     "--nce-steps configures the NCE stage, which --variants recon does not run"),
    # ran with key(2**32) == key(0): seed 0's numbers recorded as seed 4294967296's
    (["--seed-offset", "4294967296"],
     "--seed-offset 4294967296 with --seeds 1: seeds must be integers in 0..2**32-1, "
     "got [4294967296]"),
    # -1 was accepted here (as key(2**32 - 1)) and refused by TollDetector
    (["--seed-offset", "-1"], "--seed-offset -1 with --seeds 1: seeds must be integers in "
                              "0..2**32-1, got [-1]"),
])
def test_runner_rejects_bad_flags_in_one_line(tmp_path, capsys, argv, message):
    """Bad flags fail before training, as one `error:` line naming the flag (exit 2)."""
    from experiments.cance import main

    (tmp_path / "file").write_text("")
    argv = [str(tmp_path / "file") if a == "FILE" else a for a in argv]
    out = [] if "--out" in argv else ["--out", str(tmp_path / "out")]
    assert main(["--seeds", "1", "--ae-steps", "20", "--ae-eval-every", "20", *out, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_runner_out_of_memory_is_one_line_with_its_own_flags(tmp_path, capsys, monkeypatch):
    import experiments.cance as cli

    def exhausted(*args, **kwargs):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 44783208096 bytes.")

    monkeypatch.setattr(cli, "run", exhausted)  # was a traceback with exit status 1
    assert cli.main(["--out", str(tmp_path)]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: out of device memory") and len(err.splitlines()) == 1
    assert "lower --ae-batch, --nce-batch or --noise-ratio" in err and "--vmap-width" not in err


def test_runner_reports_a_diverged_autoencoder_as_failed(tmp_path, capsys):
    """An autoencoder whose loss went non-finite gives no metric for its seed (null, FAILED,
    a warning), and a run where every seed failed exits 1, as experiments.run does for Toll."""
    from experiments.cance import main

    out = tmp_path / "cance"
    argv = ["--seeds", "1", "--ae-steps", "20", "--ae-eval-every", "20", "--decoder-steps", "0",
            "--variants", "recon", "--ae-lr", "1e8", "--out", str(out), "--quiet"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "the autoencoder diverged" in captured.out and "every run of Error failed" in captured.err
    res = json.loads((out / "results.json").read_text())
    run = res["runs"][0]
    assert run["ae"]["nonfinite"] == [True] and run["ae"]["failed_seeds"] == [0]
    recon = run["variants"]["recon"]
    assert recon["test_metric"] == [None] and recon["mean"] is None
    assert recon["failed_seeds"] == [0] and recon["test_auroc"] == [None]
    assert res["summary"]["recon"]["mean"] is None
    assert "| Error | n/a ± n/a | FAILED |" in (out / "results.md").read_text()


def test_runner_per_class_numbers_do_not_depend_on_the_other_classes(tmp_path, monkeypatch):
    """A class's results are bit-identical run alone or beside a larger class (whose size
    sets the padded training size of both)."""
    import tolljax.data
    from experiments.cance import main
    from tolljax.data import AnomalySplit

    def fake_load(name, *, data_dir=None, normal_class=None, offer_tfds=True, **kw):
        rng = np.random.default_rng(normal_class)
        n_train = {3: 300, 5: 400}[normal_class]
        img = lambda n: rng.random((n, 28, 28, 1)).astype(np.float32)  # noqa: E731
        y = np.array([0, 1] * 20)
        return AnomalySplit("tiny", img(n_train), img(40), y, img(40), y)

    monkeypatch.setattr(tolljax.data, "load_dataset", fake_load)
    argv = ["--dataset", "mnist", "--data-dir", str(tmp_path), "--seeds", "2",
            "--ae-steps", "2", "--decoder-steps", "0", "--ae-eval-every", "2", "--ae-batch", "8",
            "--nce-steps", "10", "--nce-eval-every", "5", "--nce-batch", "16", "--nce-hidden", "8",
            "--variants", "latent", "--quiet"]
    runs = {}
    for classes in ("3", "3,5"):
        out = tmp_path / classes
        assert main([*argv, "--classes", classes, "--out", str(out)]) == 0
        res = json.loads((out / "results.json").read_text())
        runs[classes] = {r["normal_class"]: r for r in res["runs"]}
    assert runs["3,5"][5]["n_train"] == 400
    assert runs["3"][3] == runs["3,5"][3]  # every number, to the last bit (JSON floats)
