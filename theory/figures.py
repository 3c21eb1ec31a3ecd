"""Figures of the linear theory (``python -m theory figures --out DIR``).

- ``figure2_contours``   the paper's Figure 2: score contours, β = 0 vs β > 0, over the data.
- ``learning_dynamics``  components of the encoder along each principal direction over time:
                         Lemma 1 / Theorem 1 (norm loss only) and Theorem 2 for several β.
- ``figure2_training_time``  Figure 2's β > 0 contour vs training time (no equilibrium).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from theory import figure2, linear  # noqa: E402
from theory import TheoryInputError  # noqa: E402
from theory._validation import output_dir, seed as check_seed, versions, write_json  # noqa: E402

# Figure 2's plotting window and grid (the data has std 2 along x1, 1 along x2).
X1_LIM, X2_LIM = 7.0, 4.0
LEVEL_RADII = (1.0, 2.0, 3.0)  # score levels chosen so contours cross the x2 axis at ±1, ±2, ±3
DIR_COLORS = ("tab:red", "tab:orange", "tab:green", "tab:blue")
_NO_DATE = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}
# SVG clip-path ids are random unless salted; a fixed salt makes the files reproducible.
matplotlib.rcParams["svg.hashsalt"] = "tolljax-theory"


def freeze_layout(fig: matplotlib.figure.Figure, decimals: int = 9) -> None:
    """Lay ``fig`` out once, then fix every axes at its position rounded to ``decimals``.

    One layout for every file: constrained layout is iterative and starts from the axes'
    current positions, so each save used to move them a little and a format's bytes depended
    on which formats were saved before it. Rounded: the solver (kiwisolver) placed an axes
    1 ulp apart in some processes, and an SVG's clip-path ids hash the exact floats (one
    figure's SVG differed in ~1 run of 3).
    """
    fig.canvas.draw()
    fig.set_layout_engine("none")
    for ax in fig.axes:
        ax.set_position(np.round(ax.get_position().bounds, decimals))


def _save(fig, out: Path, name: str, formats: Sequence[str]) -> List[Path]:
    # output_dir rather than a bare mkdir: a file at ``out`` is a one-line TheoryInputError,
    # not a FileExistsError traceback.
    out = output_dir(out, "out")
    freeze_layout(fig)
    paths = []
    for fmt in dict.fromkeys(formats):  # a format named twice is written once
        p = out / f"{name}.{fmt}"
        # dpi 90 keeps each PNG well under 300 kB for the README while staying legible.
        # No creation date (PDF) or date (SVG), so the same command writes the same bytes.
        fig.savefig(p, dpi=90 if fmt == "png" else None, bbox_inches="tight",
                    metadata=_NO_DATE.get(fmt))
        paths.append(p)
    plt.close(fig)
    return paths


def _grid(n1: int = 281, n2: int = 161):
    x1 = np.linspace(-X1_LIM, X1_LIM, n1)
    x2 = np.linspace(-X2_LIM, X2_LIM, n2)
    g1, g2 = np.meshgrid(x1, x2)
    return g1, g2, np.stack([g1.ravel(), g2.ravel()], axis=1)


def _density_contours(ax, g1, g2, pts, radii=LEVEL_RADII, **kw):
    """Density contours of N(0, diag(4, 1)) at Mahalanobis radii 1, 2, 3 (1σ, 2σ, 3σ)."""
    m2 = figure2.mahalanobis_sq(pts).reshape(g1.shape)
    style = dict(colors="k", linestyles="--", linewidths=1.0)
    style.update(kw)
    return ax.contour(g1, g2, m2, levels=[r**2 for r in radii], **style)


def _score_levels(W1, W2, beta, radii=LEVEL_RADII) -> np.ndarray:
    """Score values at (0, r): the contours then cross the x2 axis where the density ones do."""
    return figure2.score(W1, W2, beta, np.array([[0.0, r] for r in radii]))


def _figure2_panel(ax, W1, W2, beta, data, title):
    g1, g2, pts = _grid()
    s = figure2.score(W1, W2, beta, pts).reshape(g1.shape)
    levels = _score_levels(W1, W2, beta)
    # Background: the score itself (log scale, so both panels' ranges are readable).
    bg = ax.contourf(g1, g2, np.log10(s + 1e-3), levels=np.linspace(-3, 2, 26), cmap="GnBu",
                     alpha=0.75, extend="both")
    ax.scatter(data[:, 0], data[:, 1], s=4, c="darkorange", alpha=0.55, lw=0, zorder=2)
    _density_contours(ax, g1, g2, pts)
    cs = ax.contour(g1, g2, s, levels=np.sort(levels), colors="crimson", linewidths=1.8, zorder=3)
    ax.clabel(cs, fmt=lambda v: f"{v:.2g}", fontsize=8, inline=True)
    cb = ax.figure.colorbar(bg, ax=ax, shrink=0.8, pad=0.01, ticks=[-3, -2, -1, 0, 1, 2])
    cb.set_label("log$_{10}$ score", fontsize=8)
    ax.set_xlim(-X1_LIM, X1_LIM)
    ax.set_ylim(-X2_LIM, X2_LIM)
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$ (variance 4)")
    ax.set_ylabel("$x_2$ (variance 1)")
    ax.set_title(title, fontsize=10)


def figure2_plot(out: Path, formats: Sequence[str] = ("png", "pdf"), seed: int = 0,
                 record: dict | None = None) -> List[Path]:
    """Paper Figure 2: (a) β = 0 gives bands along x1, (b) β > 0 gives closed ellipses.

    ``record`` (if given) receives the numbers the figure shows."""
    beta = figure2.DEFAULT_BETA
    data = figure2.sample(1500, seed=1)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    W1, W2 = figure2.fit(0.0, seed=seed)
    _figure2_panel(axes[0], W1, W2, 0.0, data,
                   "(a) unregularised, β = 0: score = reconstruction error\n"
                   "contours are bands; the score ignores $x_1$")
    W1b, W2b = figure2.fit(beta, seed=seed)
    ratio = figure2.half_axis_ratio(W1b, W2b, beta)
    if record is not None:
        record.update(beta=beta, t_train=figure2.T_TRAIN, half_axis_ratio=ratio,
                      score_matrix_beta0=figure2.score_matrix(W1, W2, 0.0).tolist(),
                      score_matrix=figure2.score_matrix(W1b, W2b, beta).tolist())
    _figure2_panel(axes[1], W1b, W2b, beta, data,
                   f"(b) norm-regularised, β = {beta:g}: (1−β)·rec + β·norm\n"
                   f"closed ellipses, $x_1$:$x_2$ half-axis ratio {ratio:.2f} (data: 2)")
    handles = [Line2D([], [], color="crimson", lw=1.8, label="anomaly-score contours"),
               Line2D([], [], color="k", ls="--", lw=1.0, label="data density contours (1σ, 2σ, 3σ)"),
               Line2D([], [], color="darkorange", marker="o", ls="", ms=4, label="samples of N(0, diag(4, 1))")]
    fig.legend(handles=handles, loc="lower center", ncol=3, bbox_to_anchor=(0.5, -0.07), frameon=False)
    fig.suptitle("Figure 2: anomaly score $(1-β)\\|W_2W_1x-x\\|^2+β\\|W_1x\\|^2$ of a linear "
                 f"2→1→2 autoencoder trained by gradient flow to t = {figure2.T_TRAIN:g}  "
                 "(labels: score level)", fontsize=11)
    return _save(fig, out, "figure2_contours", formats)


# ------------------------------------------------------------------ learning dynamics

DYN_LAMBDAS = np.array([4.0, 2.0, 1.0, 0.5])
DYN_BETAS = (0.0, 0.5, 2.0)


def _dynamics_problem(seed: int = 0):
    """4-D covariance with eigenvalues 4, 2, 1, 0.5 along a random orthonormal basis U."""
    rng = np.random.default_rng(check_seed(seed))
    U, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    S = (U * DYN_LAMBDAS) @ U.T
    return rng, U, S


def learning_dynamics_plot(out: Path, formats: Sequence[str] = ("png", "pdf"),
                           seed: int = 0) -> List[Path]:
    """Encoder components ``||W u_i||`` along each principal direction ``u_i`` over time."""
    rng, U, S = _dynamics_problem(seed)
    fig, axes = plt.subplots(2, 4, figsize=(16, 7.2), constrained_layout=True)
    labels = [f"$u_{i + 1}$ (λ = {lam:g})" for i, lam in enumerate(DYN_LAMBDAS)]

    # Lemma 1 / Theorem 1: norm loss only, W0 random 2 × 4.
    W0 = rng.standard_normal((2, 4))
    t_dense = np.linspace(0.0, 5.0, 201)
    t_marks = np.linspace(0.0, 5.0, 11)
    closed = linear.theorem1_closed_form(W0, S, t_dense)
    flow = linear.solve_lemma1(W0, S, t_marks)
    ax = axes[0, 0]
    for i in range(4):
        ax.semilogy(t_dense, np.linalg.norm(closed @ U[:, i], axis=1), color=DIR_COLORS[i],
                    label=labels[i])
        ax.semilogy(t_marks, np.linalg.norm(flow @ U[:, i], axis=1), "o", color=DIR_COLORS[i],
                    ms=4, mfc="none")
    ax.set_title("Lemma 1 / Theorem 1: norm loss only\n"
                 "$\\|W(t)u_i\\| = \\|W(0)u_i\\|e^{-λ_i t}$: high variance collapses first", fontsize=10)
    ax.set_xlabel("time t")
    ax.set_ylabel("encoder component $\\|W(t)\\,u_i\\|$")
    ax.legend(fontsize=8, title="lines: closed form, o: diffrax", title_fontsize=8)
    ax.grid(alpha=0.3, which="both")

    ax = axes[1, 0]
    closed_m = linear.theorem1_closed_form(W0, S, t_marks)
    err = [np.linalg.norm(f - c) / np.linalg.norm(c) for f, c in zip(flow, closed_m)]
    ax.semilogy(t_marks[1:], np.maximum(err[1:], 1e-17), "ko-", ms=4)
    ax.axhline(1e-10, color="crimson", ls="--", lw=1, label="test tolerance 1e-10")
    ax.set_ylim(1e-17, 1e-8)
    ax.set_title("Theorem 1 vs integrated Lemma-1 flow", fontsize=10)
    ax.set_xlabel("time t")
    ax.set_ylabel("relative error $\\|W_{flow}-W_{closed}\\|_F/\\|W_{closed}\\|_F$")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")

    # Theorem 2 (eq. 9: rec + β·norm, r = 1), bottleneck d = 2 < m = 4, small init.
    W1_0 = 0.1 * rng.standard_normal((2, 4))
    W2_0 = 0.1 * rng.standard_normal((4, 2))
    ts = np.geomspace(1e-2, 1e3, 121)
    for j, beta in enumerate(DYN_BETAS):
        W1s, W2s = linear.solve_theorem2(W1_0, W2_0, S, beta, ts)
        P = W2s @ W1s
        ax = axes[0, j + 1]
        for i in range(4):
            ax.loglog(ts, np.linalg.norm(W1s @ U[:, i], axis=1), color=DIR_COLORS[i], label=labels[i])
        ax.set_ylim(1e-4, 3)
        ax.set_xlabel("time t")
        ax.set_ylabel("encoder component $\\|W_1(t)\\,u_i\\|$")
        if beta == 0:
            title = "Theorem 2, β = 0 (reconstruction only)\nkeeps $u_1, u_2$ (PCA), eliminates $u_3, u_4$"
        else:
            title = (f"Theorem 2, β = {beta:g} (loss rec + β·norm)\n"
                     "encoder shrinks forever; $u_1$ (top λ) ends below $u_2$")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        if j == 0:
            ax.legend(fontsize=8)
        ax = axes[1, j + 1]
        for i in range(4):
            gain = np.einsum("k,tkl,l->t", U[:, i], P, U[:, i])
            ax.semilogx(ts, gain, color=DIR_COLORS[i], label=labels[i])
        ax.set_ylim(-0.05, 1.1)
        ax.set_xlabel("time t")
        ax.set_ylabel("reconstruction gain $u_i^T W_2W_1\\, u_i$")
        ax.set_title(f"β = {beta:g}: reconstruction $W_2W_1$ along each $u_i$"
                     + ("" if beta == 0 else "\n(decoder grows to compensate the shrinking encoder)"),
                     fontsize=10)
        ax.grid(alpha=0.3, which="both")
    fig.suptitle("Learning dynamics of linear encoders/autoencoders under gradient flow "
                 f"(S has eigenvalues {', '.join(f'{v:g}' for v in DYN_LAMBDAS)} along random "
                 "directions $u_i$; bottleneck d = 2)", fontsize=11)
    return _save(fig, out, "learning_dynamics", formats)


# ------------------------------------------------------------------ Figure 2 vs training time

TIME_SNAPSHOTS = (5.0, 10.0, 20.0, 80.0, 320.0)
RATIO_BETAS = (0.5, 0.6, 0.7, 0.8)


def figure2_training_time_plot(out: Path, formats: Sequence[str] = ("png", "pdf"),
                               seed: int = 0) -> List[Path]:
    """Figure 2's β > 0 contours keep changing with training time (the flow has no equilibrium)."""
    beta = figure2.DEFAULT_BETA
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8), constrained_layout=True,
                             gridspec_kw={"width_ratios": [1.45, 1, 1]})
    # (left) the level-(0, 2) contour at several training times
    ax = axes[0]
    x1 = np.linspace(-12.0, 12.0, 481)
    x2 = np.linspace(-X2_LIM, X2_LIM, 161)
    g1, g2 = np.meshgrid(x1, x2)
    pts = np.stack([g1.ravel(), g2.ravel()], axis=1)
    data = figure2.sample(1500, seed=1)
    ax.scatter(data[:, 0], data[:, 1], s=3, c="darkorange", alpha=0.45, lw=0)
    _density_contours(ax, g1, g2, pts, radii=(2.0,), linewidths=1.6)
    ax.axhline(2.0, color="gray", ls=":", lw=1.5)
    ax.axhline(-2.0, color="gray", ls=":", lw=1.5)
    W1s, W2s = figure2.fit_path(beta, np.array(TIME_SNAPSHOTS), seed=seed)
    cmap = plt.get_cmap("viridis")
    handles = []
    for k, t in enumerate(TIME_SNAPSHOTS):
        color = cmap(k / (len(TIME_SNAPSHOTS) - 1))
        s = figure2.score(W1s[k], W2s[k], beta, pts).reshape(g1.shape)
        lvl = _score_levels(W1s[k], W2s[k], beta, radii=(2.0,))
        ax.contour(g1, g2, s, levels=lvl, colors=[color], linewidths=2.2 if t == figure2.T_TRAIN else 1.3)
        handles.append(Line2D([], [], color=color, lw=2.2 if t == figure2.T_TRAIN else 1.3,
                              label=f"t = {t:g}" + ("  (default T)" if t == figure2.T_TRAIN else "")))
    handles += [Line2D([], [], color="k", ls="--", lw=1.6, label="density 2σ contour"),
                Line2D([], [], color="gray", ls=":", lw=1.5, label="β = 0 contour (bands)")]
    ax.set_xlim(-12.0, 12.0)
    ax.set_ylim(-X2_LIM, X2_LIM)
    ax.set_aspect("equal")
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4,
              frameon=False)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_title(f"β = {beta:g}: the score contour through (0, ±2) at several training times\n"
                 "stretches along $x_1$ forever (towards the β = 0 bands)", fontsize=10)

    # (middle) half-axis ratio vs time for several β, with the t^{1/4} asymptote
    ts = np.geomspace(1.0, 5e3, 80)
    ax = axes[1]
    ax.axhspan(1.5, 3.0, color="green", alpha=0.08, label="test band [1.5, 3]")
    ax.axhline(figure2.STD_RATIO, color="k", ls="--", lw=1, label="data std ratio 2")
    ax.axvline(figure2.T_TRAIN, color="gray", ls=":", lw=1.2, label=f"default T = {figure2.T_TRAIN:g}")
    lam1 = figure2.VARIANCES[0]
    for j, b in enumerate(RATIO_BETAS):
        A, B = figure2.fit_path(b, ts, seed=seed)
        ratios = [figure2.half_axis_ratio(a, bb, b) for a, bb in zip(A, B)]
        c = plt.get_cmap("plasma")(j / len(RATIO_BETAS))
        ax.loglog(ts, ratios, color=c, lw=2 if b == beta else 1.3, label=f"β = {b:g}")
        ax.loglog(ts[ts > 50], np.sqrt((1 - b) / b) * (4 * b * lam1 * ts[ts > 50]) ** 0.25,
                  color=c, ls="--", lw=0.8)
    ax.set_ylim(0.8, 20)
    ax.set_xlabel("training time t")
    ax.set_ylabel("contour half-axis ratio $x_1 : x_2$")
    ax.set_title("contour elongation vs training time\n"
                 "(dashed: asymptote $\\sqrt{(1-β)/β}\\,(4βλ_1t)^{1/4}$)", fontsize=10)
    ax.legend(fontsize=7.5, loc="upper left")
    ax.grid(alpha=0.3, which="both")

    # (right) no equilibrium: encoder shrinks, decoder grows, G decreases
    ax = axes[2]
    A, B = figure2.fit_path(beta, ts, seed=seed)
    G = linear.balance(A, B)[:, 0, 0]
    ax.loglog(ts, np.linalg.norm(A, axis=(1, 2)), color="tab:blue", label="encoder $\\|W_1\\|$")
    ax.loglog(ts, np.linalg.norm(B, axis=(1, 2)), color="tab:red", label="decoder $\\|W_2\\|$")
    ax.loglog(ts, -G, color="tab:purple", ls="--",
              label="$-G = \\|W_2\\|^2-\\|W_1\\|^2$  ($\\dot G = -2βW_1SW_1^T$)")
    ax.loglog(ts, np.abs(np.einsum("tij,tjk->tik", B, A)[:, 0, 0]), color="k", ls=":",
              label="gain $(W_2W_1)_{11}$ → 1")
    ax.axvline(figure2.T_TRAIN, color="gray", ls=":", lw=1.2)
    ax.set_xlabel("training time t")
    ax.set_title(f"β = {beta:g}: no finite equilibrium\nencoder → 0, decoder → ∞, product → PCA projector",
                 fontsize=10)
    ax.legend(fontsize=7.5, loc="upper left")
    ax.grid(alpha=0.3, which="both")
    fig.suptitle("Figure 2 (b) depends on training time: gradient flow on (1−β)·rec + β·norm, "
                 "population covariance diag(4, 1)", fontsize=11)
    return _save(fig, out, "figure2_training_time", formats)


FORMATS = ("png", "pdf", "svg")


def make_all(out: Path, formats: Iterable[str] = ("png", "pdf"), seed: int = 0) -> List[Path]:
    """Write all three figures to ``out`` in each format, and ``figures.json`` (the settings
    and the numbers the figures show); return the paths, ``figures.json`` last.

    ``out`` is checked (and created) before any figure is computed, so an unusable path fails
    at once with :class:`theory.TheoryInputError`. ``seed`` draws the initial weights (and the
    learning-dynamics covariance); the data samples of Figure 2 always use seed 1.
    """
    out = output_dir(out, "out")
    formats = tuple(dict.fromkeys(formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise TheoryInputError(f"formats must be a non-empty subset of {', '.join(FORMATS)}; "
                               f"got {list(formats)}")
    seed = check_seed(seed)
    shown: dict = {}
    paths: List[Path] = []
    paths += figure2_plot(out, formats, seed, record=shown)
    paths += learning_dynamics_plot(out, formats, seed)
    paths += figure2_training_time_plot(out, formats, seed)
    record = {
        "command": "figures", "seed": seed, "formats": list(formats),
        "files": [p.name for p in paths],
        "settings": {"variances": list(figure2.VARIANCES), "init_scale": figure2.INIT_SCALE,
                     "dynamics_eigenvalues": DYN_LAMBDAS.tolist(),
                     "dynamics_betas": list(DYN_BETAS), "time_snapshots": list(TIME_SNAPSHOTS),
                     "ratio_betas": list(RATIO_BETAS)},
        "figure2": shown, "versions": versions(),
    }
    paths.append(write_json(out / "figures.json", record))
    return paths
