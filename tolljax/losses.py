"""Toll's loss and anomaly score (paper §3.2, eq. 1; Table 8 for the latent norm ablation).

For a sample x with code z = En(x) and reconstruction x̂ = De(z) the score is

    s(x) = ||x̂ − x||₂ + β · ||z||_p ,   p ∈ {1, 2, ∞} (p = 2 is the paper's default),

and the training loss is its mean over a batch. As in the authors' code these are norms, not
squared norms. The same expression, evaluated with BatchNorm in eval mode, is the anomaly
score (larger = more anomalous).
"""
from __future__ import annotations

import math
from typing import Union

import jax.numpy as jnp

from tolljax.errors import TollError

Norm = Union[int, float, str]
NORMS = {"1": 1, "2": 2, "inf": math.inf}


def parse_norm(norm: Norm) -> float:
    """Map ``1 | 2 | inf`` (as int, float or string) to the order used by :func:`latent_norm`."""
    key = "inf" if (isinstance(norm, float) and math.isinf(norm)) else str(norm).strip().lower()
    key = {"1.0": "1", "2.0": "2", "infinity": "inf", "l1": "1", "l2": "2", "linf": "inf"}.get(key, key)
    if key not in NORMS:
        raise TollError(f"unknown latent norm {norm!r}; choose 1, 2 or inf (paper Table 8)")
    return NORMS[key]


def _flat(x: jnp.ndarray) -> jnp.ndarray:
    return x.reshape(x.shape[0], -1)


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
    flat = _flat(z)
    if order == 2:
        return _euclidean(flat)
    if order == 1:
        return jnp.sum(jnp.abs(flat), axis=-1)
    return jnp.max(jnp.abs(flat), axis=-1)


def reconstruction_error(x: jnp.ndarray, x_hat: jnp.ndarray) -> jnp.ndarray:
    """Per-sample Euclidean reconstruction error ``||x̂ − x||₂``, shape ``(batch,)``."""
    return _euclidean(_flat(x_hat - x))


def toll_score(x: jnp.ndarray, x_hat: jnp.ndarray, z: jnp.ndarray, beta: float,
               norm: Norm = 2) -> jnp.ndarray:
    """Per-sample Toll score ``||x̂ − x||₂ + β·||z||_p`` (paper eq. 1), shape ``(batch,)``."""
    return reconstruction_error(x, x_hat) + beta * latent_norm(z, norm)


def toll_loss(x: jnp.ndarray, x_hat: jnp.ndarray, z: jnp.ndarray, beta: float,
              norm: Norm = 2) -> jnp.ndarray:
    """Batch loss: mean of :func:`toll_score` over the batch (paper eq. 1, as trained)."""
    return jnp.mean(toll_score(x, x_hat, z, beta, norm))
