"""theory.figure2: the paper's Figure 2 claims, checked on the fitted linear autoencoder."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import brentq

from theory import TheoryInputError, figure2, linear


def _line(x1, x2):
    return np.stack([x1, np.full_like(x1, x2)], axis=1)


def test_fit_shapes_dtype_and_determinism():
    W1, W2 = figure2.fit(figure2.DEFAULT_BETA, seed=0)
    assert W1.shape == (1, 2) and W2.shape == (2, 1)
    assert W1.dtype == W2.dtype == np.float64
    W1b, W2b = figure2.fit(figure2.DEFAULT_BETA, seed=0)
    np.testing.assert_array_equal(W1, W1b)
    np.testing.assert_array_equal(W2, W2b)
    assert jnp.zeros(1).dtype == jnp.float32  # float64 was used locally, not switched on


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beta0_score_does_not_depend_on_x1(seed):
    """Unregularised: the score is the distance to the x1 axis (bands), paper Figure 2(a)."""
    W1, W2 = figure2.fit(0.0, seed=seed)
    x1 = np.linspace(-6.0, 6.0, 241)
    for x2 in (0.5, 1.0, 2.0, -1.5):
        s = figure2.score(W1, W2, 0.0, _line(x1, x2))
        assert (s.max() - s.min()) / s.mean() < 1e-3, (x2, s.min(), s.max())
    # ... and it is the PCA solution: reconstruct x1, drop x2.
    np.testing.assert_allclose(W2 @ W1, np.diag([1.0, 0.0]), atol=1e-5)


def _half_axis(W1, W2, beta, level, direction):
    """Where the level set crosses the ray along ``direction``, by root finding on the score."""
    f = lambda r: figure2.score(W1, W2, beta, np.array([r * direction]))[0] - level  # noqa: E731
    return brentq(f, 1e-9, 1e3, xtol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_default_beta_contours_are_closed_with_data_like_aspect(seed):
    beta = figure2.DEFAULT_BETA
    assert 0 < beta < 1
    W1, W2 = figure2.fit(beta, seed=seed)
    # Closed: the score grows in every direction (positive on the whole unit circle).
    ang = np.linspace(0, 2 * np.pi, 1441)
    circle = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    s = figure2.score(W1, W2, beta, circle)
    assert s.min() > 0.05 * s.max()
    # A level-set's half-axes along x1 and x2 (found by root finding, level through (0, 2)).
    level = figure2.score(W1, W2, beta, np.array([[0.0, 2.0]]))[0]
    a1 = _half_axis(W1, W2, beta, level, np.array([1.0, 0.0]))
    a2 = _half_axis(W1, W2, beta, level, np.array([0.0, 1.0]))
    assert a2 == pytest.approx(2.0, rel=1e-9)
    assert 1.5 <= a1 / a2 <= 3.0, a1 / a2
    assert a1 / a2 == pytest.approx(figure2.half_axis_ratio(W1, W2, beta), rel=1e-8)
    # ... and the contour is bounded: far along x1 the score exceeds the level.
    assert figure2.score(W1, W2, beta, np.array([[3 * a1, 0.0]]))[0] > level


def test_beta_positive_has_no_equilibrium_contours_keep_stretching():
    beta = figure2.DEFAULT_BETA
    ts = figure2.T_TRAIN * np.array([0.5, 1.0, 2.0, 4.0])
    W1s, W2s = figure2.fit_path(beta, ts)
    n1 = np.linalg.norm(W1s, axis=(1, 2))
    n2 = np.linalg.norm(W2s, axis=(1, 2))
    ratios = [figure2.half_axis_ratio(a, b, beta) for a, b in zip(W1s, W2s)]
    G = linear.balance(W1s, W2s)[:, 0, 0]
    assert np.all(np.diff(n1) < 0) and np.all(np.diff(n2) > 0)
    assert np.all(np.diff(G) < 0)
    assert np.all(np.diff(ratios) > 0)
    W1, W2 = figure2.fit(beta)
    np.testing.assert_allclose(W1, W1s[1], rtol=1e-12)


def test_score_formula_and_quadratic_form():
    rng = np.random.default_rng(0)
    W1, W2 = rng.standard_normal((1, 2)), rng.standard_normal((2, 1))
    x = rng.standard_normal((7, 2))
    beta = 0.3
    expected = np.array([(1 - beta) * np.sum((W2 @ W1 @ p - p) ** 2) + beta * np.sum((W1 @ p) ** 2)
                         for p in x])
    np.testing.assert_allclose(figure2.score(W1, W2, beta, x), expected, rtol=1e-13)
    Q = figure2.score_matrix(W1, W2, beta)
    np.testing.assert_allclose(np.einsum("ni,ij,nj->n", x, Q, x), expected, rtol=1e-12)
    norm_version = figure2.score(W1, W2, beta, x, squared=False)
    expected_norm = np.array([(1 - beta) * np.linalg.norm(W2 @ W1 @ p - p)
                              + beta * np.linalg.norm(W1 @ p) for p in x])
    np.testing.assert_allclose(norm_version, expected_norm, rtol=1e-13)


def test_population_loss_decreases_along_the_fit():
    beta = figure2.DEFAULT_BETA
    W1s, W2s = figure2.fit_path(beta, np.array([0.0, 1.0, 5.0, 20.0]))
    losses = [linear.theorem2_loss_cov(a, b, figure2.COV, beta, 1 - beta) for a, b in zip(W1s, W2s)]
    assert np.all(np.diff(losses) < 0)


def test_bad_input_is_rejected():
    W1, W2 = np.ones((1, 2)), np.ones((2, 1))
    with pytest.raises(TheoryInputError, match="N × 2"):
        figure2.score(W1, W2, 0.5, np.ones((4, 3)))
    with pytest.raises(TheoryInputError, match="shape mismatch"):
        figure2.score(np.ones((2, 2)), W2, 0.5, np.ones((4, 2)))
    with pytest.raises(TheoryInputError, match="beta"):
        figure2.score(W1, W2, 1.5, np.ones((4, 2)))
    with pytest.raises(TheoryInputError, match="beta"):
        figure2.fit(-0.1)
    with pytest.raises(TheoryInputError, match=">= 0"):
        figure2.fit(0.5, t_train=-1.0)
    with pytest.raises(TheoryInputError, match="single time"):
        figure2.fit(0.5, t_train=[1.0, 2.0])
    with pytest.raises(TheoryInputError, match="NaN"):
        figure2.score(W1, W2, 0.5, np.array([[np.nan, 0.0]]))


@pytest.mark.slow
def test_figures_cli_writes_png_and_pdf(tmp_path):
    from theory.__main__ import main

    import json

    assert main(["figures", "--out", str(tmp_path)]) == 0
    for name in ("figure2_contours", "learning_dynamics", "figure2_training_time"):
        for ext in ("png", "pdf"):
            assert (tmp_path / f"{name}.{ext}").stat().st_size > 10_000
    record = json.loads((tmp_path / "figures.json").read_text())
    assert record["seed"] == 0 and record["formats"] == ["png", "pdf"] and len(record["files"]) == 6
    W1, W2 = figure2.fit(figure2.DEFAULT_BETA, seed=0)  # the ratio panel (b) shows
    assert record["figure2"]["half_axis_ratio"] == figure2.half_axis_ratio(W1, W2, figure2.DEFAULT_BETA)


def test_bad_seed_count_and_step_budget_are_rejected():
    for bad in (-1, 1.5, "0", True):
        with pytest.raises(TheoryInputError, match="seed must be an integer"):
            figure2.fit(0.5, seed=bad)
    with pytest.raises(TheoryInputError, match="seed"):
        figure2.sample(10, seed=-3)
    with pytest.raises(TheoryInputError, match="n must be an integer >= 0"):
        figure2.sample(-1)
    assert figure2.sample(3, seed=np.int64(2)).shape == (3, 2)  # NumPy integers are fine
    # A horizon beyond the step budget is an error naming the budget (small here: fast).
    with pytest.raises(TheoryInputError, match="max_steps=200"):
        figure2.fit(0.5, t_train=1e9, max_steps=200)


def test_figures_out_must_be_a_folder(tmp_path, capsys):
    """An existing file as --out: one line on stderr and exit status 2, before any work."""
    from theory import figures
    from theory.__main__ import main

    a_file = tmp_path / "not_a_folder"
    a_file.write_text("")
    assert main(["figures", "--out", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out ") and "is a file, not a folder" in err
    assert err.count("\n") == 1
    with pytest.raises(TheoryInputError, match="is a file"):
        figures.make_all(a_file)
    with pytest.raises(TheoryInputError, match="cannot create the folder"):
        figures.make_all(a_file / "sub")


def test_mahalanobis_sq_refuses_points_that_are_not_2d():
    with pytest.raises(TheoryInputError, match=r"x must be N × 2 points, got \(4, 3\)"):
        figure2.mahalanobis_sq(np.ones((4, 3)))  # the third column was dropped silently


def test_saved_figures_do_not_depend_on_the_other_formats_or_the_run(tmp_path):
    # Constrained layout moved the axes at each save and PDF/SVG carried a date and random
    # clip ids: a PNG differed with the formats saved before it, a PDF from run to run.
    import matplotlib.pyplot as plt

    from theory.figures import _save

    def draw():
        fig, ax = plt.subplots(1, 2, constrained_layout=True)
        g1, g2 = np.meshgrid(np.linspace(-3, 3, 40), np.linspace(-2, 2, 30))
        ax[0].clabel(ax[0].contour(g1, g2, g1**2 + 4 * g2**2, levels=[1, 4, 9]), inline=True)
        ax[1].set_title("a title long enough to move the layout")
        return fig

    runs = {"a": ("png",), "b": ("pdf", "svg", "png"), "c": ("svg", "png", "pdf", "png")}
    for folder, formats in runs.items():
        paths = _save(draw(), tmp_path / folder, "f", formats)
        assert [p.suffix for p in paths] == [f".{f}" for f in dict.fromkeys(formats)]
    read = lambda folder, ext: (tmp_path / folder / f"f.{ext}").read_bytes()
    assert read("a", "png") == read("b", "png") == read("c", "png")
    assert read("b", "pdf") == read("c", "pdf") and read("b", "svg") == read("c", "svg")


def test_a_layout_one_ulp_apart_saves_the_same_svg(tmp_path):
    # kiwisolver placed an axes 1 ulp apart in some processes, and the SVG's clip-path ids
    # hash the exact position: figure2_training_time.svg differed in ~1 run of 3.
    import matplotlib.pyplot as plt

    from theory.figures import _save

    def draw(nudge):
        fig, ax = plt.subplots(1, 2, constrained_layout=True)
        ax[0].plot([0, 1], [0, 1])
        ax[1].set_title("a title long enough to move the layout")
        fig.canvas.draw()
        x, y, w, h = ax[1].get_position().bounds
        ax[1].set_position([np.nextafter(x, 1.0) if nudge else x, y, w, h])
        fig.set_layout_engine("none")
        return fig

    a = _save(draw(False), tmp_path / "a", "f", ("svg",))[0].read_bytes()
    b = _save(draw(True), tmp_path / "b", "f", ("svg",))[0].read_bytes()
    assert a == b


def test_figures_cli_refuses_repeated_formats_and_negative_seeds(tmp_path, capsys):
    from theory.__main__ import main

    for argv, message in ((["--formats", "png,pdf,png"], "names a format twice"),
                          (["--formats", "jpg"], "subset of png,pdf,svg"),
                          (["--seed", "-1"], "--seed must be >= 0")):
        with pytest.raises(SystemExit) as exc:
            main(["figures", "--out", str(tmp_path), *argv])
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_half_axis_ratio_of_the_beta0_flow_is_large_not_infinite():
    # As the docstring says: β = 0's flow at T_TRAIN is near PCA, not on it.
    ratio = figure2.half_axis_ratio(*figure2.fit(0.0, seed=0), 0.0)
    assert 1e6 < ratio < np.inf
    W1, W2 = np.array([[1.0, 0.0]]), np.array([[1.0], [0.0]])  # exactly PCA: Q11 = 0
    assert figure2.half_axis_ratio(W1, W2, 0.0) == np.inf


def test_sample_has_the_figures_covariance():
    x = figure2.sample(200_000, seed=3)
    assert x.shape == (200_000, 2)
    # N(0, diag(4, 1)): std 2 along x1, 1 along x2, uncorrelated (sampling error ~0.3 %)
    np.testing.assert_allclose(np.cov(x.T), [[4.0, 0.0], [0.0, 1.0]], atol=0.05)
    np.testing.assert_allclose(x.mean(axis=0), [0.0, 0.0], atol=0.02)


def test_mahalanobis_sq_is_the_gaussians_log_density_level():
    from scipy.stats import multivariate_normal

    x = np.array([[2.0, 0.0], [0.0, 1.0], [2.0, 1.0], [-1.0, 3.0], [0.0, 0.0]])
    np.testing.assert_allclose(figure2.mahalanobis_sq(x), [1.0, 1.0, 2.0, 9.25, 0.0], rtol=1e-15)
    g = multivariate_normal(mean=[0.0, 0.0], cov=[[4.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(figure2.mahalanobis_sq(x), -2 * (g.logpdf(x) - g.logpdf([0, 0])),
                               rtol=1e-12, atol=1e-12)


def test_fit_path_is_the_gradient_flow_of_the_weighted_loss():
    """dW/dt = −∇ℓ with ℓ = ½·E[(1 − β)·||W2 W1 x − x||² + β·||W1 x||²] over N(0, diag(4, 1))
    (half the mean score: the module's convention), written out by hand here; the velocity
    comes from central differences of the solver's path, the gradient from differences of ℓ."""
    beta, cov = 0.7, np.diag([4.0, 1.0])

    def loss(w):
        W1, W2 = w[:2].reshape(1, 2), w[2:].reshape(2, 1)
        E = W2 @ W1 - np.eye(2)
        return 0.5 * ((1 - beta) * np.trace(E @ cov @ E.T) + beta * np.trace(W1 @ cov @ W1.T))

    def grad(w, h=1e-6):
        return np.array([(loss(w + h * e) - loss(w - h * e)) / (2 * h) for e in np.eye(4)])

    for t in (0.5, 2.0, 8.0):
        W1s, W2s = figure2.fit_path(beta, np.array([t - 1e-4, t, t + 1e-4]))
        w = [np.r_[a.ravel(), b.ravel()] for a, b in zip(W1s, W2s)]
        velocity = (w[2] - w[0]) / 2e-4
        np.testing.assert_allclose(velocity, -grad(w[1]), rtol=1e-5, atol=1e-8 * np.abs(velocity).max())


def test_initial_weights_are_small_gaussians():
    # N(0, 0.1²) i.i.d. (module docstring): 4 weights × 1000 seeds; the bounds are 4 standard
    # errors (std: 0.1/√8000 ≈ 0.0011, mean: 0.1/√4000 ≈ 0.0016)
    w = np.concatenate([np.r_[a.ravel(), b.ravel()]
                        for a, b in (figure2.init_weights(seed) for seed in range(1000))])
    assert w.size == 4000
    assert abs(w.std() - 0.1) < 0.0045 and abs(w.mean()) < 0.0065
    a, b = figure2.init_weights(7, init_scale=2.0)
    c, d = figure2.init_weights(7, init_scale=1.0)
    np.testing.assert_allclose(np.r_[a.ravel(), b.ravel()], 2 * np.r_[c.ravel(), d.ravel()], rtol=1e-15)
