"""The tolljax side of the speed benchmarks, without PyTorch: a compiled train step per model
(:class:`JaxRunner`), the convolution implementations it uses, and its FLOP count.

Shared by ``bench_train_step.py`` (against PyTorch), ``bench_gemm_floor.py``,
``bench_sweep.py`` and ``profile_step.py``; the last two need no PyTorch.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from tolljax import ops  # noqa: E402
from tolljax.configs import PAPER_HYPERPARAMETERS  # noqa: E402
from tolljax.models import build_model, count_params, sample_shape  # noqa: E402
from tolljax.train import create_train_state, train_step  # noqa: E402

MODELS = ("mnist", "cifar10", "arrhythmia")


def timed_steps(run_step: Callable[[], object], steps: int, min_seconds: float) -> float:
    """Seconds per step, mean over ≥ ``steps`` consecutive steps lasting ≥ ``min_seconds``."""
    if steps < 1:
        raise ValueError(f"timed_steps: steps must be at least 1, got {steps}")
    start = time.perf_counter()
    done = 0
    while done < steps or time.perf_counter() - start < min_seconds:
        run_step()
        done += 1
    return (time.perf_counter() - start) / done


def intercepted_init(model: nn.Module, shape: tuple[int, ...],
                     interceptor: Callable[..., Any]) -> None:
    """An abstract init of ``model`` on a batch of 2 samples of ``shape``, with every module
    method call passed through ``interceptor`` (``flax.linen.intercept_methods``)."""
    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, *shape)), train=False))


def layer_classes(model: nn.Module, shape: tuple[int, ...]) -> dict[str, str]:
    """Which convolution classes ``model`` builds (read from an abstract init)."""
    seen: dict[str, str] = {}

    def record(next_fun, args, kwargs, context):
        m = context.module
        if isinstance(m, (nn.Conv, nn.ConvTranspose, ops.Conv, ops.ConvTranspose)):
            kind = "conv_transpose" if isinstance(m, (nn.ConvTranspose, ops.ConvTranspose)) else "conv"
            seen[kind] = f"{type(m).__module__.split('.')[0]}.{type(m).__name__}"
        return next_fun(*args, **kwargs)

    intercepted_init(model, shape, record)
    return seen


def set_impls(conv_transpose: str, conv: str) -> None:
    """Select the implementations; read when a model is traced (``lower``)."""
    os.environ[ops.ENV_VAR] = conv_transpose
    os.environ[ops.CONV_ENV_VAR] = conv


def impl_label(dataset: str, conv_transpose: str, conv: str, dtype: str = "float32") -> str:
    """e.g. ``tolljax[convT fast, conv xla]``; layers the model does not have are left out.
    oneDNN takes float32 only: other dtypes run its layers on the GEMM path (``fast``), and
    are labelled so (bfloat16 rows used to say ``onednn`` with no oneDNN call compiled)."""
    model = build_model(dataset)
    classes = layer_classes(model, sample_shape(dataset))

    def as_run(impl: str) -> str:
        return "fast" if impl == "onednn" and dtype != "float32" else impl

    parts = []
    if "conv_transpose" in classes:
        parts.append(f"convT {as_run(ops.resolve_impl(conv_transpose))}")
    if "conv" in classes:
        parts.append(f"conv {as_run(ops.resolve_conv_impl(conv)) if classes['conv'] == 'tolljax.Conv' else 'xla'}")
    return f"tolljax[{', '.join(parts)}]" if parts else "tolljax"


class JaxRunner:
    """A compiled tolljax train step for one model, batch and choice of conv implementations."""

    def __init__(self, dataset: str, batch: np.ndarray, conv_transpose: str = "auto",
                 conv: str = "auto", seed: int = 0, scan: int = 1, dtype: str = "float32"):
        hp = PAPER_HYPERPARAMETERS[dataset]
        set_impls(conv_transpose, conv)
        self.steps_per_call, self.dtype = scan, dtype
        self.label = (impl_label(dataset, conv_transpose, conv, dtype)
                      + ("" if dtype == "float32" else f" {dtype}")
                      + (f" scan×{scan}" if scan > 1 else ""))
        model = build_model(dataset, dtype=jnp.dtype(dtype))
        self.state = create_train_state(model, jax.random.key(seed), sample_shape(dataset),
                                        optax.adam(hp["lr"]))
        self.n_params = count_params(self.state.params)
        self.batch = jnp.asarray(batch)
        self.beta = jnp.float32(hp["beta"])
        start = time.perf_counter()
        self.compiled = step_fn(scan).lower(self.state, self.batch, self.beta).compile()
        self.compile_s = time.perf_counter() - start

    def step(self):
        self.state, metrics = self.compiled(self.state, self.batch, self.beta)
        jax.block_until_ready((self.state, metrics))


def step_fn(scan: int = 1) -> Callable[..., Any]:
    """A fresh jit of ``train_step`` (the implementations are chosen at trace time); with
    ``scan > 1``, that many steps in one ``lax.scan``, as the protocol runs them."""
    if scan == 1:
        return jax.jit(lambda state, x, beta: train_step(state, x, beta), donate_argnums=0)

    def steps(state, x, beta):
        def body(s, _):
            return train_step(s, x, beta)

        return jax.lax.scan(body, state, None, length=scan)

    return jax.jit(steps, donate_argnums=0)


def step_flops(dataset: str, batch_size: int, z_dim: int | None = None) -> float:
    """FLOPs of one train step: XLA's cost analysis of the step compiled with XLA's plain layers.

    The plain program is used because the fast path's batch chunks are loops, whose bodies
    XLA's cost analysis counts once; at batch 64 (no chunks) the two counts agree within 1 %.
    ``z_dim``: the latent size (default: the paper's for ``dataset``).
    """
    set_impls("plain", "plain")
    model = build_model(dataset, z_dim)
    state = jax.eval_shape(lambda: create_train_state(
        model, jax.random.key(0), sample_shape(dataset), optax.adam(1e-3)))
    x = jax.ShapeDtypeStruct((batch_size, *sample_shape(dataset)), jnp.float32)
    beta = jax.ShapeDtypeStruct((), jnp.float32)
    return xla_flops(step_fn(), state, x, beta)


def on_host_cpu(tree: Any) -> Any:
    """``tree``'s shapes (``jax.ShapeDtypeStruct`` leaves) placed on the host CPU device."""
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=cpu), tree)


def xla_flops(fn: Callable[..., Any], *shapes: Any) -> float:
    """FLOPs of the jitted ``fn`` on arguments of these shapes, by XLA's cost analysis of the
    program compiled for the host CPU (NaN where XLA reports none).

    The CPU program is counted whatever the default backend: on GPUs XLA's cost analysis
    leaves out the convolutions, which run as cuDNN custom calls (measured on an H200: 10.1
    GFLOP for the MNIST step at batch 1000, against 2742 GFLOP counted on the CPU).
    """
    cost = fn.lower(*on_host_cpu(shapes)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # a list in some JAX versions
    return float(cost.get("flops", float("nan")))
