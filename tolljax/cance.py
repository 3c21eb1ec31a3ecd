"""CANCE: autoencoder composite features scored by noise-contrastive estimation (NCE).

Reference: Liao & Brockmeier, "Anomaly Detection via Autoencoder Composite Features and NCE"
(arXiv:2502.01920; text in ``/work/shared/papers/cance-composite-features-nce.txt``). Section
numbers below are that paper's. Everything is pure and functional: training loops are
``lax.scan``s of jitted steps, randomness comes from explicit keys, and every ``fit_*``
function can be ``jax.vmap``-ped over seeds.

Pipeline
--------
1. **Autoencoder** (§3.2, Appendix A). Any tolljax autoencoder (``x -> (x_hat, z)`` with
   ``encode``/``decode`` methods and top-level ``encoder``/``decoder`` parameter trees) is
   trained by :func:`fit_autoencoder` in two decoupled stages: stage 1 minimises
   ``MSE + λ·cov`` over encoder and decoder; stage 2 freezes the encoder (parameters *and*
   BatchNorm statistics) and trains the decoder on the MSE alone. ``loss="toll"`` instead runs
   stage 1 with Toll's own loss through :func:`tolljax.train.train_step`, so CANCE can also be
   stacked on a Toll autoencoder.
2. **Composite features** (§3.1, §3.2): ``u = [z, e, c]`` with the latent code ``z``, the
   squared reconstruction error scaled by the data dimension ``e = ||x − x̂||² / d``
   (Appendix H) and the cosine dissimilarity ``c = 1 − cos(x, x̂)`` (:func:`composite_features`).
3. **NCE** (§3.3, eq. 6/9): an estimation network ``G`` is trained to tell data features from
   ``ν`` times as many Gaussian noise samples; at the optimum ``G = log p − log(ν q)``, so the
   anomaly score is ``−log p(u) = −G(u) − log q(u) − log ν`` (:func:`neg_log_density`).
4. **Learnable noise** (§3.4, eq. 7/10): ``q = N(μ, L A Aᵀ Lᵀ)`` with the training features'
   mean ``μ`` and covariance Cholesky factor ``L`` and a diagonal ``A = 1 + softplus(θ) ≥ 1``,
   sampled by reparameterisation and updated (alternating with ``G``, both AdamW) to *maximise*
   the NCE loss.
5. **Augmentation** (§3.4, eq. 8): each data sample is, with probability ½, replaced by an
   artificial normal point that keeps its ``z`` and draws each reconstruction feature from a
   normal truncated to ``[0, m̂]``, ``m̂`` the log-normal mode estimated from the training mean
   and variance (Appendix C).

Choices where the paper leaves them open (or where its formulas were lost from the text we
have — every display equation and every table cell is missing from it) are marked
**Choice** in the docstrings below and tested in ``tests/test_cance.py``. In short:

* the BatchNorm-before-latent + covariance loss is implemented as the mean squared
  off-diagonal entry of the *batch correlation* matrix of ``z`` (what the covariance is once
  BatchNorm has standardised ``z``), so it works for every tolljax model without adding a
  layer;
* the noise objective (eq. 7) keeps the implied model density ``p_m = e^G · ν q`` fixed while
  ``q`` changes: ``G̃_A(u) = G(u) + log q_{sg(A)}(u) − log q_A(u)`` (same value as ``G``, but
  its gradient in ``A`` includes the data term, as the paper asks);
* the truncated normals of the augmentation use the mean and standard deviation of the
  *current* noise marginal of that feature, which is what Proposition 1 needs at every step;
* ``G`` is an MLP (SiLU, widths ``hidden``) on the features whitened by ``L⁻¹(u − μ)``;
* the paper trains both ``G`` and the noise with AdamW; the noise parameters ``θ`` get no
  weight decay (plain Adam), since decay would pull ``θ`` towards 0, i.e. ``A`` towards
  ``1 + log 2``, rather than regularise anything;
* "lowest validation loss" checkpoint selection (``select="loss"``) uses the mean
  reconstruction error ``e`` of the normal validation samples for the autoencoder (not the
  training loss with its covariance term), and for NCE the NCE loss of the normal validation
  samples against one fixed draw ``ε`` mapped through each checkpoint's *own* noise
  (``μ + L A(θ) ε``): checkpoints are compared against the noise they were trained with.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.scipy.linalg import solve_triangular

from tolljax.errors import TollError, finite_float, positive_int, real_hyperparameter
from tolljax.losses import check_beta, parse_norm
from tolljax.metrics import METRICS
from tolljax.train import (TrainState, checkpoint_keys, create_train_state, map_in_chunks,
                           sample_batch_indices, train_step, tree_where)

# Number of reconstruction features appended to z: squared error e and cosine dissimilarity c.
N_RECON = 2
FEATURE_SETS = ("latent", "composite", "recon")
SELECTIONS = ("metric", "loss", "last")
# The autoencoder stages' scan carry: (training state, failed so far, best checkpoint dict).
AECarry = tuple[TrainState, jax.Array, dict[str, Any]]


# --------------------------------------------------------------------------------------------
# Composite features (§3.1, Appendix H)
# --------------------------------------------------------------------------------------------


def _flat(x: jnp.ndarray) -> jnp.ndarray:
    return x.reshape(x.shape[0], -1)


def squared_error(x: jnp.ndarray, x_hat: jnp.ndarray) -> jnp.ndarray:
    """Per-sample squared error scaled by the data dimension, ``||x − x̂||² / d`` (App. H)."""
    return jnp.mean(jnp.square(_flat(x_hat) - _flat(x)), axis=-1)


def cosine_dissimilarity(x: jnp.ndarray, x_hat: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
    """Per-sample ``1 − <x, x̂> / (||x|| ||x̂||)`` in ``[0, 2]``; 1 if either vector is zero.

    Where ``||x||·||x̂||`` is at most ``eps`` or overflows float32 (a vector with entries below
    ~1e-7 or above ~1e19), both vectors are first divided by their largest magnitude: the
    cosine does not change, and its squares neither underflow nor overflow. Elsewhere the
    direct formula is kept, so ordinary inputs give the same bits as it does.
    """
    a, b = _flat(x), _flat(x_hat)
    dot = jnp.sum(a * b, axis=-1)
    den = jnp.sqrt(jnp.sum(a * a, axis=-1) * jnp.sum(b * b, axis=-1))
    direct_ok = (den > eps) & jnp.isfinite(den)
    cos = dot / jnp.where(direct_ok, den, 1.0)

    def unit_scale(v):
        peak = jnp.max(jnp.abs(v), axis=-1, keepdims=True)
        # two factors of 1/sqrt(peak): XLA:CPU divides by multiplying with the reciprocal, and
        # 1/peak itself is subnormal (flushed to 0) for peaks above ~8.5e37
        inv_root = 1.0 / jnp.sqrt(jnp.where(peak > 0, peak, 1.0))
        return v * inv_root * inv_root, peak[..., 0] > 0

    (sa, a_nonzero), (sb, b_nonzero) = unit_scale(a), unit_scale(b)
    # each scaled vector has a largest entry of magnitude 1, so its norm lies in [1, sqrt(d)]
    scaled_den = jnp.sqrt(jnp.sum(sa * sa, axis=-1)) * jnp.sqrt(jnp.sum(sb * sb, axis=-1))
    scaled_cos = jnp.sum(sa * sb, axis=-1) / jnp.where(a_nonzero & b_nonzero, scaled_den, 1.0)
    scaled_cos = jnp.where(a_nonzero & b_nonzero, jnp.clip(scaled_cos, -1.0, 1.0), 0.0)
    return 1.0 - jnp.where(direct_ok, cos, scaled_cos)


def reconstruction_features(x: jnp.ndarray, x_hat: jnp.ndarray) -> jnp.ndarray:
    """``[e, c]`` per sample, shape ``(batch, 2)``: squared error / d and cosine dissimilarity."""
    return jnp.stack([squared_error(x, x_hat), cosine_dissimilarity(x, x_hat)], axis=-1)


def composite_from_outputs(x: jnp.ndarray, x_hat: jnp.ndarray, z: jnp.ndarray) -> jnp.ndarray:
    """Composite feature ``[z, e, c]`` (§3.2), shape ``(batch, z_dim + 2)``; z is flattened."""
    return jnp.concatenate([_flat(z).astype(jnp.float32), reconstruction_features(x, x_hat)],
                           axis=-1)


def composite_features(apply_fn: Callable, variables: dict, x: jnp.ndarray,
                       chunk: int = 1000) -> jnp.ndarray:
    """Composite features of ``x`` from a trained autoencoder in eval mode (BatchNorm running
    statistics), ``chunk`` samples at a time (as :func:`tolljax.train.score`)."""

    def batch(xb):
        x_hat, z = apply_fn(variables, xb, train=False)
        return composite_from_outputs(xb, x_hat, z)

    return map_in_chunks(batch, x, chunk)


def select_features(features: jnp.ndarray, kind: str) -> jnp.ndarray:
    """Columns of a composite feature matrix: ``latent`` (z), ``recon`` ([e, c]) or all."""
    if kind == "composite":
        return features
    if kind == "latent":
        return features[..., :-N_RECON]
    if kind == "recon":
        return features[..., -N_RECON:]
    raise TollError(f"unknown feature set {kind!r}; choose one of {FEATURE_SETS}")


# --------------------------------------------------------------------------------------------
# Autoencoder training (§3.2, Appendix A)
# --------------------------------------------------------------------------------------------


def covariance_loss(z: jnp.ndarray, eps: float = 1e-5) -> jnp.ndarray:
    """Mean squared off-diagonal entry of the batch correlation matrix of ``z`` (Appendix A).

    **Choice.** The paper puts BatchNorm directly before the latent layer (zero mean, unit
    variance) and penalises the off-diagonal covariance of the result. Standardising ``z`` with
    its batch statistics (eps as BatchNorm's) gives that covariance — the correlation matrix —
    for any model, and stops the penalty from being minimised by merely shrinking ``z`` while
    its per-dimension batch variance ``v`` is well above ``eps``: the penalty scales as
    ``(v / (v + eps))²``, so ``z`` shrunk to a standard deviation of ~1e-3 does lower it
    (measured: ×1/120 at ``z``·1e-3 for unit-variance codes; a trained Arrhythmia code has
    standard deviations 0.57–0.88, where it equals the correlation penalty to ~1e-5). The
    mean is over the ``k(k−1)`` off-diagonal entries (0 when ``k = 1``).
    """
    z = _flat(z).astype(jnp.float32)
    zc = z - jnp.mean(z, axis=0)
    zs = zc / jnp.sqrt(jnp.mean(jnp.square(zc), axis=0) + eps)
    corr = zs.T @ zs / z.shape[0]
    k = corr.shape[0]
    off = corr * (1.0 - jnp.eye(k, dtype=corr.dtype))
    return jnp.sum(jnp.square(off)) / max(k * (k - 1), 1)


def ae_loss_step(state: TrainState, batch: jnp.ndarray, cov_weight: float | jnp.ndarray
                 ) -> tuple[TrainState, dict[str, jnp.ndarray]]:
    """Stage-1 step on ``mean(e) + λ · covariance_loss(z)`` (Appendix A, eq. 11–12)."""

    def loss_fn(params):
        (x_hat, z), updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, batch, train=True,
            mutable=["batch_stats"])
        mse = jnp.mean(squared_error(batch, x_hat))
        cov = covariance_loss(z)
        return mse + cov_weight * cov, (updates["batch_stats"], mse, cov)

    (loss, (stats, mse, cov)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=stats)
    return state, {"loss": loss, "mse": mse, "cov": cov}


def decoder_step(state: TrainState, batch: jnp.ndarray) -> tuple[TrainState, dict]:
    """Stage-2 step: the encoder is frozen (eval mode, no gradient, BatchNorm statistics kept);
    the decoder is trained on ``mean(e)``. ``state.tx`` must leave encoder parameters unchanged
    (see :func:`decoder_optimizer`)."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    z = jax.lax.stop_gradient(state.apply_fn(variables, batch, train=False, method="encode"))

    def loss_fn(params):
        x_hat, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats},
                                        z, train=True, method="decode", mutable=["batch_stats"])
        return jnp.mean(squared_error(batch, x_hat.astype(jnp.float32))), updates["batch_stats"]

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    stats = {**state.batch_stats, "decoder": stats["decoder"]}  # encoder statistics frozen
    state = state.apply_gradients(grads=grads, batch_stats=stats)
    return state, {"loss": loss, "mse": loss, "cov": jnp.zeros(())}


def decoder_optimizer(params: dict, lr: float) -> optax.GradientTransformation:
    """Adam on the decoder, exactly zero updates for the encoder (stage 2)."""
    if "encoder" not in params or "decoder" not in params:
        raise TollError("decoupled CANCE training needs a model whose parameters are split into "
                        f"'encoder' and 'decoder' (got {sorted(params)}); use decoder_steps=0")
    labels = {k: ("frozen" if k == "encoder" else "train") for k in params}
    return optax.multi_transform({"train": optax.adam(lr), "frozen": optax.set_to_zero()}, labels)


@dataclasses.dataclass(frozen=True)
class AEConfig:
    """Autoencoder stage of CANCE.

    ``loss="cance"``: stage 1 on ``MSE + cov_weight·cov`` (Appendix A); ``loss="toll"``: stage 1
    on Toll's loss with ``beta``/``norm`` (tolljax's ``train_step``). Stage 2 (``decoder_steps``
    > 0) always fine-tunes the decoder on the MSE with the encoder frozen. Both stages take a
    checkpoint every ``eval_every`` steps and keep the best by ``select``: ``"metric"`` = the
    validation ``metric`` of the reconstruction error ``e`` (tolljax protocol, labelled
    validation set), ``"loss"`` = the mean ``e`` of the *normal* validation samples (the paper's
    "lowest validation loss"), ``"last"`` = no selection. Stage 2 starts from stage 1's pick.
    """

    steps: int = 1000
    decoder_steps: int = 500
    batch_size: int = 100
    lr: float = 1e-3
    loss: str = "cance"
    cov_weight: float = 1.0
    beta: float = 10.0
    norm: Any = 2
    eval_every: int = 20
    select: str = "metric"
    metric: str = "f1"
    score_chunk: int = 1000

    def __post_init__(self):
        if self.loss not in ("cance", "toll"):
            raise TollError(f"unknown autoencoder loss {self.loss!r}; choose cance or toll")
        _check_common(self, ("steps", "batch_size", "eval_every", "score_chunk"))
        if (isinstance(self.decoder_steps, bool) or not isinstance(self.decoder_steps, numbers.Integral)
                or self.decoder_steps < 0 or self.decoder_steps % self.eval_every):
            raise TollError(f"--decoder-steps {self.decoder_steps!r} must be an integer >= 0 and "
                            f"a multiple of --eval-every {self.eval_every}")
        real_hyperparameter("--cov-weight", self.cov_weight)
        if self.loss == "toll":  # β was unchecked: NaN or negative trained to NaN
            check_beta("beta", self.beta)
        parse_norm(self.norm)


def _check_common(cfg, positive: Sequence[str]) -> None:
    for name in positive:  # 2.5 used to fail inside JAX as a non-integer shape
        positive_int(name.replace('_', '-'), getattr(cfg, name))
    if cfg.steps % cfg.eval_every:
        raise TollError(f"steps {cfg.steps} is not a multiple of eval-every {cfg.eval_every}")
    if cfg.select not in SELECTIONS:
        raise TollError(f"unknown selection {cfg.select!r}; choose one of {SELECTIONS}")
    if cfg.metric not in METRICS:
        raise TollError(f"unknown metric {cfg.metric!r}; choose one of {sorted(METRICS)}")
    real_hyperparameter("learning rate", cfg.lr, positive=True)


def _val_criterion(select: str, metric: Callable, scores: jnp.ndarray, val_y: jnp.ndarray,
                   loss: jnp.ndarray | None = None) -> jnp.ndarray:
    """Higher is better. ``metric``: validation metric of ``scores``; ``loss``: −``loss`` (or,
    when ``loss`` is None, −mean score of the normal validation samples); ``last``: step order."""
    if select == "metric":
        val = metric(scores, val_y)
    elif select == "loss":
        if loss is None:
            normal = (val_y == 0).astype(jnp.float32)
            loss = jnp.sum(scores * normal) / jnp.maximum(jnp.sum(normal), 1.0)
        val = -loss
    else:
        val = jnp.zeros((), jnp.float32)
    return jnp.where(jnp.isfinite(val), val, -jnp.inf).astype(jnp.float32)


def _ae_criterion(variables: dict, data: dict, *, model: nn.Module, config: AEConfig):
    """Validation criterion of an autoencoder checkpoint (higher is better), see AEConfig."""

    def err(xb):
        return squared_error(xb, model.apply(variables, xb, train=False)[0])

    errors = map_in_chunks(err, data["val_x"], config.score_chunk)
    return _val_criterion(config.select, METRICS[config.metric], errors, data["val_y"])


def ae_start(key: jax.Array, data: dict, *, model: nn.Module, config: AEConfig
             ) -> tuple[AECarry, jax.Array, jax.Array | None]:
    """Initial stage-1 carry ``(state, failed, best)`` and the step keys of both stages, shaped
    ``(checkpoints, eval_every)`` (stage 2: None when ``decoder_steps == 0``)."""
    init_key, key1, key2 = jax.random.split(key, 3)
    state = create_train_state(model, init_key, data["train"].shape[1:], optax.adam(config.lr))
    best = {"variables": {"params": state.params, "batch_stats": state.batch_stats},
            "val": jnp.array(-jnp.inf, jnp.float32), "step": jnp.array(0, jnp.int32)}
    keys1 = checkpoint_keys(key1, config.steps, config.eval_every)
    keys2 = (checkpoint_keys(key2, config.decoder_steps, config.eval_every)
             if config.decoder_steps else None)
    return (state, jnp.bool_(False), best), keys1, keys2


def ae_stage2_start(carry1: AECarry, *, model: nn.Module, config: AEConfig) -> AECarry:
    """Stage-2 carry: stage 1's selected model, a decoder-only optimizer, selection continued
    from stage 1's best criterion (so stage 2 only replaces it when it improves)."""
    _, _, best = carry1
    v = best["variables"]
    state = TrainState.create(apply_fn=model.apply, params=v["params"],
                              tx=decoder_optimizer(v["params"], config.lr),
                              batch_stats=v["batch_stats"])
    return state, jnp.bool_(False), {"variables": v, "val": best["val"],
                                     "step": jnp.array(0, jnp.int32)}


def _ae_step_fn(config: AEConfig, stage: int) -> Callable:
    if stage == 2:
        return decoder_step
    if config.loss == "toll":
        return lambda s, b: train_step(s, b, config.beta, config.norm)
    return lambda s, b: ae_loss_step(s, b, config.cov_weight)


def ae_step(state_bad: tuple[TrainState, jax.Array], key: jax.Array, data: dict, *,
            model: nn.Module, config: AEConfig, stage: int
            ) -> tuple[tuple[TrainState, jax.Array], jax.Array]:
    """One training step of ``stage`` on a random batch; ``state_bad = (state, failed)``.
    Returns the new pair and the batch loss."""
    del model  # the state carries apply_fn
    state, bad = state_bad
    n_rows = data["train"].shape[0]
    idx = sample_batch_indices(key, data.get("n_train", n_rows), n_rows, config.batch_size)
    state, m = _ae_step_fn(config, stage)(state, data["train"][idx])
    return (state, bad | ~jnp.isfinite(m["loss"])), m["loss"]


def ae_select(carry: AECarry, data: dict, *, model: nn.Module, config: AEConfig
              ) -> tuple[AECarry, jax.Array]:
    """Validate the current model of ``carry = (state, failed, best)`` and keep it as ``best``
    when it is better (see :class:`AEConfig`). Returns the new carry and the criterion."""
    state, bad, best = carry
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    val = jnp.where(bad, -jnp.inf, _ae_criterion(variables, data, model=model, config=config))
    better = (val > best["val"]) | ((config.select == "last") & ~bad)
    best = tree_where(better, {"variables": variables, "val": val, "step": state.step}, best)
    return (state, bad, best), val


def ae_checkpoint(carry: AECarry, keys: jax.Array, data: dict, *, model: nn.Module,
                  config: AEConfig, stage: int) -> tuple[AECarry, tuple[jax.Array, jax.Array]]:
    """``eval_every`` scanned :func:`ae_step`s of ``stage`` (1: encoder+decoder, 2: decoder
    only), then :func:`ae_select`. Pure: ``carry = (state, failed, best)``, ``keys`` of shape
    ``(eval_every,)``. Returns the carry and ``(criterion, mean training loss)``."""
    state, bad, best = carry
    (state, bad), losses = jax.lax.scan(
        lambda c, k: ae_step(c, k, data, model=model, config=config, stage=stage),
        (state, bad), keys)
    carry, val = ae_select((state, bad, best), data, model=model, config=config)
    return carry, (val, jnp.mean(losses))


def ae_result(carry1: AECarry, curves1: tuple[jax.Array, jax.Array],
              carry2: AECarry | None = None,
              curves2: tuple[jax.Array, jax.Array] | None = None) -> dict[str, Any]:
    """The output dict of :func:`fit_autoencoder` from the final carries and curves."""
    _, bad, best = carry1
    out = {"variables": best["variables"], "best_step": best["step"],
           "best_decoder_step": jnp.zeros_like(best["step"]), "best_val": best["val"],
           "val_curve": curves1[0], "loss_curve": curves1[1], "nonfinite": bad}
    if carry2 is not None:
        _, bad2, best2 = carry2
        axis = curves1[0].ndim - 1
        out.update(variables=best2["variables"], best_decoder_step=best2["step"],
                   best_val=best2["val"], nonfinite=bad | bad2,
                   val_curve=jnp.concatenate([curves1[0], curves2[0]], axis=axis),
                   loss_curve=jnp.concatenate([curves1[1], curves2[1]], axis=axis))
    return out


def fit_autoencoder(key: jax.Array, data: dict[str, jnp.ndarray], *, model: nn.Module,
                    config: AEConfig) -> dict[str, Any]:
    """Train ``model`` for CANCE (pure, one ``lax.scan`` per stage; ``vmap`` over ``key``).

    ``data``: ``train`` (normal samples, optionally zero-padded with ``n_train`` valid rows),
    ``val_x``, ``val_y``. Returns the selected ``variables``, the selected step of each stage,
    the selected validation criterion, the criterion and mean training loss per checkpoint
    (stage 1 then stage 2), and ``nonfinite`` (a training loss was NaN/inf; checkpoints from
    then on are never selected).
    """
    # NumPy arrays cannot be indexed by the traced batch indices (called outside jit).
    data = {k: jnp.asarray(v) for k, v in data.items()}
    kw = dict(model=model, config=config)
    carry1, keys1, keys2 = ae_start(key, data, **kw)
    carry1, curves1 = jax.lax.scan(
        lambda c, k: ae_checkpoint(c, k, data, stage=1, **kw), carry1, keys1)
    if keys2 is None:
        return ae_result(carry1, curves1)
    carry2, curves2 = jax.lax.scan(
        lambda c, k: ae_checkpoint(c, k, data, stage=2, **kw), ae_stage2_start(carry1, **kw),
        keys2)
    return ae_result(carry1, curves1, carry2, curves2)


# --------------------------------------------------------------------------------------------
# Noise distribution (§3.4 "Optimizing Noise Distribution", Appendix B)
# --------------------------------------------------------------------------------------------


class NoiseStats(NamedTuple):
    """Fixed statistics of the training features: mean ``μ`` (d,), lower Cholesky factor ``L``
    of the covariance (d, d) and its inverse ``L⁻¹``, and the log-normal mode ``m̂`` of each of
    the last ``n_recon`` (reconstruction) features (empty when there are none).

    ``L⁻¹`` is computed once: since ``A`` is diagonal, ``(L A)⁻¹ = A⁻¹ L⁻¹``, so every density
    evaluation during training is a matrix product (the efficiency the paper's diagonal
    constraint is for), not a triangular solve."""

    mean: jnp.ndarray
    chol: jnp.ndarray
    chol_inv: jnp.ndarray
    recon_mode: jnp.ndarray


def lognormal_mode(mean: jnp.ndarray, var: jnp.ndarray) -> jnp.ndarray:
    """Mode of a log-normal with the given mean ``M`` and variance ``V`` (Appendix C):
    ``σ² = log(1 + V/M²)``, ``μ = log M − σ²/2``, mode ``= e^{μ−σ²} = M⁴ / (M² + V)^{3/2}``."""
    mean = jnp.asarray(mean, jnp.float32)
    return mean ** 4 / (mean ** 2 + var) ** 1.5


# Rows per block of the masked sums of :func:`fit_noise_stats` (fixed, so that the summation
# order does not depend on how many padding rows follow the valid ones).
STATS_BLOCK = 512


def _blockwise_row_sum(fn: Callable, x: jnp.ndarray, block: int = STATS_BLOCK) -> jnp.ndarray:
    """``sum`` over row blocks of ``fn(x[block])``, blocks of ``block`` rows (``x`` zero-padded
    to a whole number of blocks) added one after the other in a ``lax.scan``.

    Every block has the same shape, and block ``i`` holds rows ``i·block …`` whatever the total
    length, so trailing all-zero blocks add exact zeros: the result is bit-identical for any
    amount of zero padding (one ``sum``/GEMM over all rows blocks its reduction by the length).
    """
    n_rows = x.shape[0]
    n_blocks = max(-(-n_rows // block), 1)
    xb = jnp.pad(x, ((0, n_blocks * block - n_rows),) + ((0, 0),) * (x.ndim - 1))
    xb = xb.reshape(n_blocks, block, *x.shape[1:])
    zero = jnp.zeros(jax.eval_shape(fn, xb[0]).shape, jnp.float32)
    total, _ = jax.lax.scan(lambda acc, b: (acc + fn(b), None), zero, xb)
    return total


def fit_noise_stats(features: jnp.ndarray, n_valid: int | jnp.ndarray | None = None,
                    n_recon: int = 0, ridge: float = 1e-5) -> NoiseStats:
    """Sample mean and covariance (Cholesky) of the first ``n_valid`` rows of ``features``.

    The covariance is the unbiased sample covariance plus ``ridge·(trace/d)·I`` so that the
    Cholesky factor exists even for a (near-)degenerate latent space (the paper's covariance
    loss is meant to prevent that; the ridge only guards the numerics). Rows from ``n_valid``
    on (padding) are masked out, and the statistics are bit-identical however many there are
    (sums in fixed blocks, :func:`_blockwise_row_sum`), so a normal class's numbers do not
    depend on the padded size it shares with other classes.
    """
    x = jnp.asarray(features, jnp.float32)
    n_rows, d = x.shape
    n = n_rows if n_valid is None else n_valid
    w = (jnp.arange(n_rows) < n).astype(jnp.float32)
    nf = jnp.sum(w)
    mean = _blockwise_row_sum(lambda b: jnp.sum(b, axis=0), x * w[:, None]) / nf
    xc = (x - mean) * w[:, None]
    cov = _blockwise_row_sum(lambda b: b.T @ b, xc) / jnp.maximum(nf - 1.0, 1.0)
    cov = cov + ridge * (jnp.trace(cov) / d + 1e-12) * jnp.eye(d)
    chol = jnp.linalg.cholesky(cov)
    chol_inv = solve_triangular(chol, jnp.eye(d, dtype=chol.dtype), lower=True)
    if n_recon:
        var = jnp.diag(cov)[-n_recon:]
        mode = lognormal_mode(mean[-n_recon:], var)
    else:
        mode = jnp.zeros((0,), jnp.float32)
    return NoiseStats(mean, chol, chol_inv, mode)


def noise_scale(theta: jnp.ndarray) -> jnp.ndarray:
    """Diagonal of ``A``: ``1 + softplus(θ) ≥ 1`` (the noise variance can only grow, §3.4)."""
    return 1.0 + jax.nn.softplus(theta)


def initial_noise_scale(value: object) -> float:
    """``value`` as a float > 1, else :class:`TollError` (see :func:`init_noise_theta`)."""
    scale = finite_float(value)
    if scale is None or not scale > 1.0:
        raise TollError(f"the initial noise scale must be a finite number > 1, got {value!r}")
    return scale


def init_noise_theta(d: int, initial_scale: float = 1.1) -> jnp.ndarray:
    """``θ`` with ``noise_scale(θ) = initial_scale`` in every direction (must be > 1).

    **Choice.** 1.1: the noise starts slightly wider than the data, so that it covers the
    data's tails, and ``softplus`` still has a usable gradient (σ(θ) ≈ 0.1)."""
    # softplus⁻¹(y) = log(expm1(y)) = y + log(−expm1(−y)): the second form does not overflow
    # for large y (log(expm1(999)) raises OverflowError).
    y = initial_noise_scale(initial_scale) - 1.0
    return jnp.full((positive_int("d", d),), y + math.log(-math.expm1(-y)), jnp.float32)


def noise_factor(stats: NoiseStats, theta: jnp.ndarray) -> jnp.ndarray:
    """``M = L A`` (lower triangular): noise samples are ``μ + M ε``, covariance ``M Mᵀ``."""
    return stats.chol * noise_scale(theta)[None, :]


def sample_noise(key: jax.Array, stats: NoiseStats, theta: jnp.ndarray, n: int) -> jnp.ndarray:
    """``n`` reparameterised noise samples ``μ + L A ε``, ``ε ~ N(0, I)`` (differentiable in θ)."""
    eps = jax.random.normal(key, (n, stats.mean.shape[0]), jnp.float32)
    return stats.mean + eps @ noise_factor(stats, theta).T


def noise_log_prob(stats: NoiseStats, theta: jnp.ndarray, u: jnp.ndarray) -> jnp.ndarray:
    """``log q(u)`` of ``N(μ, L A Aᵀ Lᵀ)`` per row of ``u``; uses ``(L A)⁻¹ = A⁻¹ L⁻¹``."""
    a = noise_scale(theta)
    d = stats.mean.shape[0]
    white = whiten(stats, u) / a
    log_det = jnp.sum(jnp.log(jnp.abs(jnp.diag(stats.chol)))) + jnp.sum(jnp.log(a))
    return -0.5 * jnp.sum(jnp.square(white), axis=-1) - log_det - 0.5 * d * math.log(2 * math.pi)


def noise_marginal_std(stats: NoiseStats, theta: jnp.ndarray) -> jnp.ndarray:
    """Standard deviation of each coordinate under the noise, ``sqrt(diag(M Mᵀ))``."""
    return jnp.sqrt(jnp.sum(jnp.square(noise_factor(stats, theta)), axis=-1))


def whiten(stats: NoiseStats, u: jnp.ndarray) -> jnp.ndarray:
    """``L⁻¹(u − μ)``: the (fixed) input transform of the estimation network."""
    return (u - stats.mean) @ stats.chol_inv.T


# --------------------------------------------------------------------------------------------
# Augmentation of the reconstruction features (§3.4, eq. 8, Proposition 1)
# --------------------------------------------------------------------------------------------


def augment_recon(key: jax.Array, x: jnp.ndarray, stats: NoiseStats, theta: jnp.ndarray,
                  n_recon: int = N_RECON, prob: float = 0.5) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Draw a batch from ``p_aug = ½ p + ½ p_z × Π_r TN_r`` (eq. 8) given a batch ``x`` of ``p``.

    Each row is kept with probability ``1 − prob``; otherwise its last ``n_recon`` features
    are replaced by independent draws from ``N(μ_r, σ_r²)`` truncated to ``[0, m̂_r]``, and its
    latent part is kept. **Choice:** ``μ_r``/``σ_r`` are the mean and standard deviation of the
    current noise marginal of feature ``r``. Since ``m̂_r`` (a log-normal mode) lies below the
    mean, the truncated mass is below ½, so ``½ TN_r > q_r`` on ``[0, m̂_r]`` — Proposition 1.
    Returns the batch and the boolean mask of replaced rows.
    """
    if n_recon == 0:
        return x, jnp.zeros(x.shape[0], bool)
    k_mask, k_tn = jax.random.split(key)
    mu = stats.mean[-n_recon:]
    sigma = noise_marginal_std(stats, jax.lax.stop_gradient(theta))[-n_recon:]
    lower = (0.0 - mu) / sigma
    upper = (stats.recon_mode - mu) / sigma
    t = jax.random.truncated_normal(k_tn, lower, upper, (x.shape[0], n_recon), jnp.float32)
    fake = jnp.clip(mu + sigma * t, 0.0, stats.recon_mode)
    replace = jax.random.bernoulli(k_mask, prob, (x.shape[0],))
    recon = jnp.where(replace[:, None], fake, x[:, -n_recon:])
    return jnp.concatenate([x[:, :-n_recon], recon], axis=-1), replace


# --------------------------------------------------------------------------------------------
# NCE (§3.3, eq. 6/9/10)
# --------------------------------------------------------------------------------------------


class EstimationNet(nn.Module):
    """The log-odds network ``G``: MLP with SiLU activations and a scalar output.

    **Choice** (the paper's architecture is not in our text): ``hidden`` widths, SiLU (smooth,
    so ``−log p`` is smooth), inputs whitened by the training features' statistics."""

    hidden: tuple[int, ...] = (128, 128)

    @nn.compact
    def __call__(self, w: jnp.ndarray) -> jnp.ndarray:
        for width in self.hidden:
            w = nn.silu(nn.Dense(width)(w))
        return nn.Dense(1)(w)[..., 0]


def nce_loss(g_data: jnp.ndarray, g_noise: jnp.ndarray, noise_ratio: float) -> jnp.ndarray:
    """Batch NCE loss (eq. 9): ``−mean log σ(G(x)) − ν · mean log(1 − σ(G(y)))``.

    ``g_noise`` holds the log-odds of ``ν·B`` noise samples, so ``ν·mean`` over them is the
    paper's ``(1/B) Σ_{j ≤ νB}``. The minimiser is ``G = log p − log(ν q)``.
    """
    return (-jnp.mean(jax.nn.log_sigmoid(g_data))
            - noise_ratio * jnp.mean(jax.nn.log_sigmoid(-g_noise)))


def log_odds(net: EstimationNet, params: dict, stats: NoiseStats, u: jnp.ndarray) -> jnp.ndarray:
    return net.apply({"params": params}, whiten(stats, u))


def neg_log_density(net: EstimationNet, params: dict, stats: NoiseStats, theta: jnp.ndarray,
                    u: jnp.ndarray, noise_ratio: float) -> jnp.ndarray:
    """Anomaly score ``−log p(u) = −G(u) − log q(u) − log ν`` (§3.3; larger = more anomalous)."""
    return (-log_odds(net, params, stats, u) - noise_log_prob(stats, theta, u)
            - math.log(noise_ratio))


def noise_objective(theta: jnp.ndarray, net: EstimationNet, params: dict, stats: NoiseStats,
                    x: jnp.ndarray, eps_key: jax.Array, noise_ratio: float) -> jnp.ndarray:
    """The NCE loss as a function of the noise parameters (eq. 7/10), to be *maximised*.

    **Choice** (our reading of eq. 7, whose formula is missing from our text): the model
    density implied by ``G``, ``p_m = e^G ν q``, is held fixed (stop-gradient on the ``q`` inside
    it) while ``q`` moves, so the log-odds become ``G̃ = G + log q_{sg(θ)} − log q_θ``. Its value
    equals ``G``'s, but the data term now depends on θ, which the naive objective lacks. Noise
    samples are reparameterised, so θ also acts through ``y = μ + L A ε``.
    """
    theta_sg = jax.lax.stop_gradient(theta)

    def g_tilde(u):
        return (log_odds(net, params, stats, u) + noise_log_prob(stats, theta_sg, u)
                - noise_log_prob(stats, theta, u))

    y = sample_noise(eps_key, stats, theta, int(noise_ratio) * x.shape[0])
    return nce_loss(g_tilde(x), g_tilde(y), noise_ratio)


@dataclasses.dataclass(frozen=True)
class NCEConfig:
    """The NCE density model of CANCE.

    ``features``: ``latent`` (LatNCE) or ``composite`` (CNCE/CANCE); ``augment``: eq. 8 (CANCE);
    ``learn_noise``: optimise ``A`` adversarially (§3.4; **Choice:** on for every NCE variant, so
    that CNCE and CANCE differ only by the augmentation). ``noise_ratio`` ν (integer), AdamW with
    ``lr``/``noise_lr`` and ``weight_decay``. Checkpoint every ``eval_every`` steps, selected by
    ``select``: ``"metric"`` (validation metric of ``−log p``), ``"loss"`` (NCE loss of the normal
    validation samples against a fixed draw ``ε`` mapped through the checkpoint's own noise
    ``μ + L A(θ) ε``, the paper's rule) or ``"last"``.
    """

    features: str = "composite"
    augment: bool = False
    learn_noise: bool = True
    hidden: tuple[int, ...] = (128, 128)
    noise_ratio: int = 4
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    noise_lr: float = 1e-3
    weight_decay: float = 1e-4
    initial_noise_scale: float = 1.1
    eval_every: int = 50
    select: str = "metric"
    metric: str = "f1"

    def __post_init__(self):
        if self.features not in ("latent", "composite"):
            raise TollError(f"NCE features must be latent or composite, got {self.features!r}")
        if self.augment and self.features != "composite":
            raise TollError("augmentation replaces reconstruction features: use composite features")
        _check_common(self, ("steps", "batch_size", "eval_every", "noise_ratio"))
        real_hyperparameter("noise learning rate", self.noise_lr, positive=True)
        real_hyperparameter("weight decay", self.weight_decay)
        initial_noise_scale(self.initial_noise_scale)  # it used to fail only inside fit_nce
        if not self.hidden or any(isinstance(h, bool) or not isinstance(h, numbers.Integral)
                                  or h < 1 for h in self.hidden):
            raise TollError(f"hidden widths must be positive integers, got {self.hidden}")

    @property
    def n_recon(self) -> int:
        return N_RECON if self.features == "composite" else 0


def fit_nce(key: jax.Array, train: jnp.ndarray, n_train: int | jnp.ndarray, val_x: jnp.ndarray,
            val_y: jnp.ndarray, test_x: jnp.ndarray, test_y: jnp.ndarray, *,
            config: NCEConfig) -> dict[str, Any]:
    """Fit the NCE density on composite ``train`` features (first ``n_train`` rows valid) and
    score ``test_x`` with the checkpoint selected on ``val_x`` (pure; ``vmap`` over seeds).

    Inputs are full composite matrices ``[z, e, c]``; ``config.features`` picks the columns.
    Alternates per step: one AdamW step of ``G`` on eq. 9 (noise from the current ``A``,
    augmented data for CANCE), then one of ``θ`` on −eq. 10 (when ``learn_noise``).
    ``test_metric`` is NaN when no checkpoint could be selected (``best_step`` 0); check
    ``nonfinite`` for a loss that became NaN/inf after the kept checkpoint.
    """
    metric = METRICS[config.metric]
    cols = functools.partial(select_features, kind=config.features)
    # jnp first: NumPy arrays cannot be indexed by the traced batch indices (outside jit).
    train, val_x, test_x = (cols(jnp.asarray(a)) for a in (train, val_x, test_x))
    n_rows, d = train.shape
    nu = config.noise_ratio
    stats = fit_noise_stats(train, n_train, config.n_recon)
    net = EstimationNet(tuple(config.hidden))
    init_key, val_key, run_key = jax.random.split(key, 3)
    params = net.init(init_key, jnp.zeros((1, d), jnp.float32))["params"]
    theta = init_noise_theta(d, config.initial_noise_scale)
    tx_g = optax.adamw(config.lr, weight_decay=config.weight_decay)
    tx_q = optax.adamw(config.noise_lr, weight_decay=0.0)  # Choice: no decay on θ (module doc)
    opt_g, opt_q = tx_g.init(params), tx_q.init(theta)
    val_noise_eps = jax.random.normal(val_key, (nu * val_x.shape[0], d), jnp.float32)
    val_normal = (val_y == 0).astype(jnp.float32)

    def g_loss(params, theta, x, y):
        return nce_loss(log_odds(net, params, stats, x), log_odds(net, params, stats, y), nu)

    def step(carry, k):
        params, opt_g, theta, opt_q, bad = carry
        k_idx, k_aug, k_noise, k_q = jax.random.split(k, 4)
        x = train[sample_batch_indices(k_idx, n_train, n_rows, config.batch_size)]
        if config.augment:
            x, _ = augment_recon(k_aug, x, stats, theta, config.n_recon)
        y = sample_noise(k_noise, stats, theta, nu * config.batch_size)
        loss, grads = jax.value_and_grad(g_loss)(params, theta, x, y)
        updates, opt_g = tx_g.update(grads, opt_g, params)
        params = optax.apply_updates(params, updates)
        if config.learn_noise:
            neg = lambda th: -noise_objective(th, net, params, stats, x, k_q, nu)  # noqa: E731
            g_theta = jax.grad(neg)(theta)
            upd, opt_q = tx_q.update(g_theta, opt_q, theta)
            theta = optax.apply_updates(theta, upd)
        return (params, opt_g, theta, opt_q, bad | ~jnp.isfinite(loss)), loss

    def score(params, theta, u):
        return neg_log_density(net, params, stats, theta, u, nu)

    def val_loss(params, theta):
        """NCE loss of the normal validation samples vs a fixed noise draw (no augmentation)."""
        y = stats.mean + val_noise_eps @ noise_factor(stats, theta).T
        g_x = log_odds(net, params, stats, val_x)
        data_term = -jnp.sum(jax.nn.log_sigmoid(g_x) * val_normal) / jnp.maximum(
            jnp.sum(val_normal), 1.0)
        return data_term - nu * jnp.mean(jax.nn.log_sigmoid(-log_odds(net, params, stats, y)))

    def checkpoint(carry, keys):
        state, best, count = carry
        state, losses = jax.lax.scan(step, state, keys)
        params, _, theta, _, bad = state
        count = count + config.eval_every
        loss = val_loss(params, theta) if config.select == "loss" else None
        val = jnp.where(bad, -jnp.inf, _val_criterion(config.select, metric,
                                                      score(params, theta, val_x), val_y, loss))
        better = (val > best["val"]) | ((config.select == "last") & ~bad)
        best = tree_where(better, {"params": params, "theta": theta, "val": val, "step": count}, best)
        return (state, best, count), (val, jnp.mean(losses))

    keys = checkpoint_keys(run_key, config.steps, config.eval_every)
    state0 = (params, opt_g, theta, opt_q, jnp.bool_(False))
    best0 = {"params": params, "theta": theta, "val": jnp.array(-jnp.inf, jnp.float32),
             "step": jnp.array(0, jnp.int32)}
    (state, best, _), (val_curve, loss_curve) = jax.lax.scan(
        checkpoint, (state0, best0, jnp.array(0, jnp.int32)), keys)
    test_scores = score(best["params"], best["theta"], test_x)
    # No checkpoint selected (step 0: every validation value was non-finite): the untrained
    # network's metric is not a result, as in tolljax.train.protocol.
    test_metric = jnp.where(best["step"] > 0, metric(test_scores, test_y), jnp.nan)
    return {"test_scores": test_scores, "test_metric": test_metric,
            "best_step": best["step"], "best_val": best["val"], "val_curve": val_curve,
            "loss_curve": loss_curve, "noise_scale": noise_scale(best["theta"]),
            "nonfinite": state[-1]}


# --------------------------------------------------------------------------------------------
# Variants of the ablation (§4.1, Table 1)
# --------------------------------------------------------------------------------------------

VARIANTS = {
    # name: (paper's label, NCE feature set or None for the plain error score, augmentation)
    "recon": ("Error", None, False),
    "latent": ("LatNCE", "latent", False),
    "cnce": ("CNCE", "composite", False),
    "cance": ("CANCE", "composite", True),
}


def parse_variants(spec: str | Sequence[str]) -> list[str]:
    items = spec.split(",") if isinstance(spec, str) else spec
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise TollError(f"variants must be a comma-separated string or a list of names, got {spec!r}")
    names = [v.strip() for v in items if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad or not names:
        raise TollError(f"unknown variant(s) {bad or spec!r}; choose from {', '.join(VARIANTS)}")
    if len(set(names)) < len(names):
        raise TollError(f"variants {spec!r} name a variant twice; each runs once")
    return names


def variant_nce_config(variant: str, base: NCEConfig) -> NCEConfig | None:
    """The NCE configuration of an ablation variant (None for ``recon``: the score is ``e``)."""
    _, features, augment = VARIANTS[variant]
    if features is None:
        return None
    return dataclasses.replace(base, features=features, augment=augment)


def error_score(features: jnp.ndarray) -> jnp.ndarray:
    """The ``Error`` baseline: the reconstruction error ``e`` of a composite feature matrix."""
    return features[..., -N_RECON]
