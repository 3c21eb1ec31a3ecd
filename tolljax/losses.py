"""Toll's loss and anomaly score (paper §3.2, eq. 1; Table 8 for the latent norm ablation).

For a sample x with code z = En(x) and reconstruction x̂ = De(z) the score is

    s(x) = ||x̂ − x||₂ + β · ||z||_p ,   p ∈ {1, 2, ∞} (p = 2 is the paper's default),

and the training loss is its mean over a batch. As in the authors' code these are norms, not
squared norms. The same expression, evaluated with BatchNorm in eval mode, is the anomaly
score (larger = more anomalous).

Range: the L2 norm is ``sqrt(Σ v²)`` in float32, unscaled (as ``torch.norm`` in the authors'
code, and cheapest in the training loop): a vector with an entry beyond ~1.8e19 has norm inf
and one whose entries are all below ~1e-19 has norm 0, where the L1 and L∞ norms are still
finite and exact. Residuals or codes that large mean a diverged model (its run is reported as
failed, and the metrics refuse inf scores); the underflow only stops a collapse at ~1e-19.
"""
from __future__ import annotations

import math
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np

from tolljax.errors import TollError, index_list, real_hyperparameter

Norm = Union[int, float, str]
NORMS = {"1": 1, "2": 2, "inf": math.inf}


def parse_norm(norm: Norm) -> float:
    """Map ``1 | 2 | inf`` (as int, float or string) to the order used by :func:`latent_norm`."""
    key = "inf" if (isinstance(norm, float) and math.isinf(norm)) else str(norm).strip().lower()
    key = {"1.0": "1", "2.0": "2", "infinity": "inf", "l1": "1", "l2": "2", "linf": "inf"}.get(key, key)
    if key not in NORMS:
        raise TollError(f"unknown latent norm {norm!r}; choose 1, 2 or inf (paper Table 8)")
    return NORMS[key]


def check_beta(name: str, beta: object) -> None:
    """:class:`TollError` unless ``beta`` is a finite number >= 0 that float32 keeps finite (a
    traced β is not checked)."""
    if isinstance(beta, jax.core.Tracer):
        return
    real_hyperparameter(name, beta)  # 10**400 is refused, not an OverflowError


def _flat(x: jnp.ndarray) -> jnp.ndarray:
    # An explicit feature count, not -1: reshape(0, -1) of an empty batch cannot infer it.
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


def _check_batch(fn: str, x: jnp.ndarray, x_hat: jnp.ndarray, z: jnp.ndarray) -> None:
    """:class:`TollError` unless ``x``/``x_hat`` have one shape and ``z`` the same batch size.

    Shapes are static under ``jit``, so these Python checks cost nothing at run time and turn
    a broadcasting error deep inside JAX (or a silently broadcast residual) into a clear one.
    """
    x_shape, xh_shape, z_shape = (tuple(jnp.shape(a)) for a in (x, x_hat, z))
    if len(x_shape) < 1 or len(z_shape) < 1:
        raise TollError(f"{fn}: x {x_shape} and z {z_shape} need a leading batch axis")
    if xh_shape != x_shape:
        raise TollError(f"{fn}: the reconstruction x_hat has shape {xh_shape} but x has "
                        f"{x_shape}; they must match (one reconstruction per input)")
    if z_shape[0] != x_shape[0]:
        raise TollError(f"{fn}: z has batch size {z_shape[0]} but x has {x_shape[0]}; pass "
                        "one code per input")


def _euclidean(v: jnp.ndarray) -> jnp.ndarray:
    # Not jnp.linalg.norm: its gradient at an exact zero vector is NaN. A real model's
    # residual is never exactly zero, but a perfect reconstruction or a collapsed code
    # (tests, identity models) must still get finite gradients (zero, the subgradient).
    # NaN/inf must propagate (a diverged model must not look perfect): test `== 0`, not `> 0`.
    sq = jnp.sum(jnp.square(v), axis=-1)
    zero = sq == 0
    return jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, sq)))


def latent_norm(z: jnp.ndarray, norm: Norm = 2) -> jnp.ndarray:
    """Per-sample ``||z||_p`` over all non-batch axes, shape ``(batch,)`` (Table 8 norms)."""
    order = parse_norm(norm)
    if jnp.ndim(z) < 1:
        raise TollError(f"latent_norm: z has shape {tuple(jnp.shape(z))}; it needs a leading "
                        "batch axis")
    flat = _flat(z)
    if order == 2:
        return _euclidean(flat)
    if order == 1:
        return jnp.sum(jnp.abs(flat), axis=-1)
    return jnp.max(jnp.abs(flat), axis=-1)


def reconstruction_error(x: jnp.ndarray, x_hat: jnp.ndarray) -> jnp.ndarray:
    """Per-sample Euclidean reconstruction error ``||x̂ − x||₂``, shape ``(batch,)``."""
    if tuple(jnp.shape(x)) != tuple(jnp.shape(x_hat)) or jnp.ndim(x) < 1:
        raise TollError(f"reconstruction_error: x_hat has shape {tuple(jnp.shape(x_hat))} but x "
                        f"has {tuple(jnp.shape(x))}; they must match and have a batch axis")
    return _euclidean(_flat(x_hat - x))


def toll_score(x: jnp.ndarray, x_hat: jnp.ndarray, z: jnp.ndarray, beta: float,
               norm: Norm = 2) -> jnp.ndarray:
    """Per-sample Toll score ``||x̂ − x||₂ + β·||z||_p`` (paper eq. 1), shape ``(batch,)``.

    An empty batch gives an empty array; mismatched shapes raise :class:`TollError`, and so
    does a concrete scalar ``beta`` that is not a finite number >= 0 in float32 (a string
    was a TypeError from inside the product). A traced or array ``beta`` is not checked.
    """
    _check_batch("toll_score", x, x_hat, z)
    if np.ndim(beta) == 0:
        check_beta("beta", beta)
    return reconstruction_error(x, x_hat) + beta * latent_norm(z, norm)


def toll_loss(x: jnp.ndarray, x_hat: jnp.ndarray, z: jnp.ndarray, beta: float,
              norm: Norm = 2) -> jnp.ndarray:
    """Batch loss: mean of :func:`toll_score` over the batch (paper eq. 1, as trained)."""
    _check_batch("toll_loss", x, x_hat, z)
    if jnp.shape(x)[0] == 0:  # the mean of nothing would be a silent NaN loss
        raise TollError("toll_loss: empty batch (0 samples); pass at least one sample")
    return jnp.mean(toll_score(x, x_hat, z, beta, norm))


# --------------------------------------------------------------------------------------------
# Targeted collapse as a reusable loss term (paper §4.4, Tables 5/6: FITYMI + Toll)
# --------------------------------------------------------------------------------------------


def collapse_loss(features: jnp.ndarray, target: Union[str, jnp.ndarray] = "batch_mean",
                  norm: Norm = 2, *, weights: jnp.ndarray | None = None,
                  stop_gradient_target: bool = True) -> jnp.ndarray:
    """Targeted-collapse term ``Σ_b w_b ||f_b − t||_p / Σ_b w_b`` for any encoder's features.

    Toll's latent term ``β·||z||`` collapses normal codes onto the origin. Tables 5/6 of the
    paper add the same idea to a classifier (FITYMI: pretrained backbone, normal vs synthetic
    anomalies) with the target "set as the mean of the normal samples, as approximated per
    batch". This function is that term:

    * ``features``: ``(batch, ...)``, flattened per sample (like :func:`latent_norm`).
    * ``target``: ``"batch_mean"`` — the (weighted) mean of this batch's features — or an array
      broadcastable to one sample ``(...)`` (a fixed centre; zeros = Toll's origin) or of the
      full ``(batch, ...)`` shape (a target per sample).
    * ``norm``: 1, 2 (default, as Toll's ``||z||₂``) or ``inf``; a norm, not its square.
    * ``weights``: optional ``(batch,)`` finite non-negative weights (others: a
      :class:`TollError`, or NaN when traced); a 0/1 mask selects the samples
      that collapse (the FITYMI recipe passes ``1 − is_anomaly`` so that only normal samples
      are pulled together). They weight both the mean target and the average. Returns 0 when
      all weights are 0 (a batch without normal samples).
    * ``stop_gradient_target`` (default True): the batch-mean target is a constant centre, as
      Toll's origin or Deep SVDD's centre, so the gradient of sample ``b`` is
      ``w_b ∇||f_b − t|| / Σw`` and only pulls samples towards the centre. With ``False`` the
      gradient also flows through the mean; for ``p = 2`` this adds ``−(1/Σw)·w_b·mean_w(u)``
      with ``u_i = (f_i − t)/||f_i − t||``, which only matters when the unit directions do not
      cancel. The paper's wording ("approximated per batch") does not settle it; a constant
      centre is the reading consistent with Toll's fixed target. An array target is used as
      given (gradient reaches it only if the caller computed it from the features).

    The norm of an exactly zero difference has gradient 0 (see :func:`latent_norm`).

    Weight: the paper does not state the weight λ of this term next to the classification
    loss. In ``experiments/collapse_demo.py`` (MNIST, BCE + λ·term) λ = 0.1 improved the
    classifier's AUROC on 34 of 50 (digit, seed) pairs and λ = 1 hurt it (README); tune λ.
    """
    f = _flat(jnp.asarray(features))
    n = f.shape[0]
    if weights is None:
        w = jnp.ones((n,), f.dtype)
    else:
        if np.shape(weights) != (n,):
            raise TollError(f"collapse_loss: weights must have shape ({n},), got "
                            f"{np.shape(weights)}")
        if not isinstance(weights, jax.core.Tracer):  # traced: the loss is NaN instead
            # checked before the cast, which would turn 1e39 into inf with a NumPy warning
            host = np.asarray(weights, np.float64)
            largest = float(np.finfo(f.dtype).max)
            bad = np.flatnonzero(~(np.isfinite(host) & (host >= 0) & (host <= largest)))
            if bad.size:  # a NaN weight made the total NaN and the loss a silent 0
                raise TollError(f"collapse_loss: weights must be finite and >= 0 in {f.dtype}; "
                                f"those at positions {index_list(bad)} are not")
            if host.sum() > largest:  # the total would be inf and the loss NaN
                raise TollError(f"collapse_loss: the weights sum to {host.sum():.3g}, beyond "
                                f"{f.dtype}; rescale them (only their ratios matter)")
        w = jnp.asarray(weights, f.dtype)
    total = jnp.sum(w)
    safe_total = jnp.where(total > 0, total, 1.0)
    if isinstance(target, str):
        if target != "batch_mean":
            raise TollError(f"collapse_loss: unknown target {target!r}; use 'batch_mean' or an "
                            "array")
        t = jnp.sum(w[:, None] * f, axis=0) / safe_total
        if stop_gradient_target:
            t = jax.lax.stop_gradient(t)
    else:
        t = jnp.asarray(target, f.dtype)
        sample_shape = tuple(jnp.shape(features)[1:])
        if t.shape == tuple(jnp.shape(features)):
            t = _flat(t)
        elif t.ndim == 0 or t.shape == sample_shape or t.shape == (f.shape[1],):
            t = jnp.broadcast_to(t.reshape(-1), (f.shape[1],)) if t.ndim else t
        else:
            raise TollError(f"collapse_loss: target shape {t.shape} matches neither one sample "
                            f"{sample_shape} nor the batch {tuple(jnp.shape(features))}")
    dist = latent_norm(f - t, norm)
    value = jnp.where(total > 0, jnp.sum(w * dist) / safe_total, 0.0)
    return jnp.where(jnp.all(jnp.isfinite(w) & (w >= 0)), value, jnp.nan)
