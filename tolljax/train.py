"""Training: a pure ``train_step`` and the paper's whole protocol as one compiled program.

Protocol (paper §4.1 and the authors' code, see SPEC): ``steps`` Adam steps, each on
``batch_size`` distinct normal training samples drawn at random; every ``eval_every`` steps
the model (BatchNorm in eval mode) is scored on the validation set and kept if its metric is
strictly better than the best so far; the kept model is scored on the test set.

Everything after the data transfer runs on the device: the steps are a ``lax.scan`` nested
in a ``lax.scan`` over checkpoints, the best checkpoint is selected with ``jnp.where``, and
seeds are a ``jax.vmap`` axis, so a 10-seed run is a single XLA program.
"""
from __future__ import annotations

import dataclasses
import functools
import numbers
import time
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from tolljax.errors import TollError, check_float32, finite_float, positive_int
from tolljax.losses import Norm, check_beta, latent_norm, parse_norm, toll_score
from tolljax.metrics import METRICS
from tolljax.models import init_variables


class TrainState(train_state.TrainState):
    """Flax ``TrainState`` plus BatchNorm running statistics."""

    batch_stats: Any = None


@dataclasses.dataclass(frozen=True)
class ProtocolConfig:
    """Hyperparameters of one protocol run (the paper's values live in ``tolljax.configs``)."""

    beta: float
    lr: float
    batch_size: int
    steps: int = 2000
    eval_every: int = 20
    norm: Norm = 2
    metric: str = "auroc"
    score_chunk: int = 1000  # samples scored at once: bounds activation memory on big sets

    def __post_init__(self):
        parse_norm(self.norm)
        if self.metric not in METRICS:
            raise TollError(f"unknown metric {self.metric!r}; choose one of {sorted(METRICS)}")
        for name in ("batch_size", "steps", "eval_every", "score_chunk"):
            positive_int(f"--{name.replace('_', '-')}", getattr(self, name))  # not 2.5 or "40"
        if self.steps % self.eval_every:
            raise TollError(f"--steps {self.steps} is not a multiple of --eval-every "
                            f"{self.eval_every}; checkpoints are taken every eval-every steps")
        check_beta("--beta", self.beta)
        lr = finite_float(self.lr)
        if lr is None or lr <= 0:
            raise TollError(f"--lr must be a positive number, got {self.lr!r}")
        check_float32("--lr", lr)

    @property
    def num_checkpoints(self) -> int:
        return self.steps // self.eval_every


def create_train_state(model: nn.Module, key: jax.Array, sample_shape: tuple[int, ...],
                       tx: optax.GradientTransformation) -> TrainState:
    """Initialise parameters, BatchNorm statistics and optimizer state."""
    variables = init_variables(model, key, sample_shape)
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                             batch_stats=variables["batch_stats"])


def train_step(state: TrainState, batch: jnp.ndarray, beta: float | jnp.ndarray,
               norm: Norm = 2) -> tuple[TrainState, dict[str, jnp.ndarray]]:
    """One Adam step on the Toll loss ``mean(||x̂ − x||₂ + β·||z||_p)`` (paper eq. 1).

    BatchNorm uses batch statistics and its running averages are updated. ``beta`` may be a
    traced value (so a β sweep can be vmapped); ``norm`` is static. A concrete ``beta`` is
    checked as :func:`check_beta` checks it. Metrics: the batch loss and the batch mean of
    ``||z||_p`` in the trained norm, over all of a code's axes.
    """
    if batch.shape[0] == 0:  # the mean of nothing: a NaN loss and NaN BatchNorm statistics
        raise TollError("train_step: the batch is empty; pass at least one sample")
    check_beta("beta", beta)

    def loss_fn(params):
        (x_hat, z), updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, batch, train=True,
            mutable=["batch_stats"])
        scores = toll_score(batch, x_hat, z, beta, norm)
        return jnp.mean(scores), (updates["batch_stats"], z)

    (loss, (batch_stats, z)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return state, {"loss": loss, "latent_norm": jnp.mean(latent_norm(z, norm))}


def map_in_chunks(fn: Callable[[jnp.ndarray], jnp.ndarray], x: jnp.ndarray,
                  chunk: int) -> jnp.ndarray:
    """``fn(x)`` computed ``chunk`` rows at a time: a ``lax.map`` over the full chunks, then
    the remainder; ``fn`` maps a batch to per-row results (leading axis = batch).

    Each chunk is one real batch, not ``chunk`` vmapped single samples (``lax.map``'s
    ``batch_size``): the per-sample form sends batch-1 convolutions to the layers and, for
    custom calls such as :mod:`tolljax.onednn`'s, copies the weights per sample.
    """
    chunk = positive_int("chunk", chunk)
    n = x.shape[0]
    if n <= chunk:
        return fn(x)
    full = n - n % chunk
    out = jax.lax.map(fn, x[:full].reshape(n // chunk, chunk, *x.shape[1:]))
    out = out.reshape(full, *out.shape[2:])
    return out if full == n else jnp.concatenate([out, fn(x[full:])])


def score(apply_fn: Callable, variables: dict, x: jnp.ndarray, beta: float | jnp.ndarray,
          norm: Norm = 2, chunk: int = 1000) -> jnp.ndarray:
    """Anomaly scores of ``x`` in eval mode (BatchNorm running statistics), paper eq. 1.

    Samples are scored ``chunk`` at a time (:func:`map_in_chunks`) so that scoring 10,000
    images does not hold all their activations at once. A concrete ``beta`` is checked as
    :func:`check_beta` checks it.
    """
    check_beta("beta", beta)

    def score_batch(xb):
        x_hat, z = apply_fn(variables, xb, train=False)
        return toll_score(xb, x_hat, z, beta, norm)

    return map_in_chunks(score_batch, x, chunk)


def sample_batch_indices(key: jax.Array, n_valid: int | jnp.ndarray, n_rows: int,
                         batch_size: int) -> jnp.ndarray:
    """``batch_size`` distinct indices drawn uniformly from ``range(n_valid)``.

    ``n_valid`` may be traced and smaller than the static row count ``n_rows``: training sets
    of different sizes (normal classes) are padded to one shape so that one compiled program
    serves them all. Sorting 32-bit random keys is how ``jax.random.permutation`` works too;
    padded rows get the largest key and are never drawn while ``n_valid >= batch_size``.
    """
    batch_size = positive_int("batch_size", batch_size)  # -1 drew all rows but one, 0 none
    available = n_rows if isinstance(n_valid, jax.core.Tracer) else min(n_rows, int(n_valid))
    if batch_size > available:  # argsort(...)[:batch_size] would give fewer or padding rows
        raise TollError(f"batch_size {batch_size} is larger than the {available} training rows; "
                        "each step draws batch_size distinct rows")
    bits = jax.random.bits(key, (n_rows,), jnp.uint32)
    bits = jnp.where(jnp.arange(n_rows) < n_valid, bits >> 1, jnp.uint32(2**31))
    return jnp.argsort(bits)[:batch_size]


def tree_where(pred: jnp.ndarray, new: Any, old: Any) -> Any:
    """``new`` where the scalar ``pred`` holds, else ``old``, leaf by leaf (on-device checkpoint
    selection, no host round-trip)."""
    return jax.tree_util.tree_map(lambda n, o: jnp.where(pred, n, o), new, old)


def checkpoint_keys(key: jax.Array, steps: int, eval_every: int) -> jax.Array:
    """One PRNG key per step, shaped ``(steps // eval_every, eval_every)``: the keys of each
    checkpoint's inner ``lax.scan`` over ``eval_every`` steps."""
    steps, eval_every = positive_int("steps", steps), positive_int("eval_every", eval_every)
    if steps % eval_every:
        raise TollError(f"steps {steps} is not a multiple of eval_every {eval_every}")
    keys = jax.random.split(key, steps)
    return keys.reshape(steps // eval_every, eval_every, *keys.shape[1:])


def train_and_select(state: TrainState, key: jax.Array, train: jnp.ndarray,
                     n_train: int | jnp.ndarray, select: Callable[[dict], jnp.ndarray], *,
                     batch_size: int, steps: int, eval_every: int,
                     beta: float | jnp.ndarray, norm: Norm = 2
                     ) -> tuple[dict[str, Any], jax.Array, jax.Array, jax.Array]:
    """The paper's training loop with checkpoint selection, all on the device (§4.1).

    ``steps`` Adam steps (``lax.scan``), each on ``batch_size`` distinct rows drawn from the
    first ``n_train`` rows of ``train``; every ``eval_every`` steps ``select(variables)``
    (higher = better) is evaluated and the checkpoint kept if strictly better than the best
    so far (``jnp.where``, no host round-trip). Once a step's loss is not finite the run is
    failed: no checkpoint from then on is selected, so ``best`` is the best one before it.

    Returns ``(best, values, mean_losses, nonfinite_step)`` where ``best`` holds the kept
    ``variables``, its selection value ``val`` and ``step``; ``values`` and ``mean_losses``
    have one entry per checkpoint; ``nonfinite_step`` is −1 when every loss was finite.
    """
    # NumPy arrays cannot be indexed by the traced batch indices (called outside jit).
    train = jnp.asarray(train)
    n_rows = train.shape[0]

    def step(carry, step_key):
        state, bad_step = carry
        idx = sample_batch_indices(step_key, n_train, n_rows, batch_size)
        state, metrics = train_step(state, train[idx], beta, norm)
        bad_step = jnp.where((bad_step < 0) & ~jnp.isfinite(metrics["loss"]), state.step, bad_step)
        return (state, bad_step), metrics["loss"]

    def checkpoint(carry, step_keys):
        state, bad_step, best = carry
        (state, bad_step), losses = jax.lax.scan(step, (state, bad_step), step_keys)
        failed = bad_step >= 0
        # A failed run keeps training on non-finite parameters, but no later checkpoint can be
        # selected (value −inf) and the caller reports no metric for it. Restoring the last
        # good state instead would keep a second copy of the training state alive through
        # every inner scan (measured: ~0.3 s of 14 s on Arrhythmia) for no change in results.
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        value = jnp.where(failed, -jnp.inf, select(variables))
        better = value > best["val"]  # strict, as the authors; NaN is never better
        best = tree_where(better, {"variables": variables, "val": value, "step": state.step}, best)
        return (state, bad_step, best), (value, jnp.mean(losses))

    step_keys = checkpoint_keys(key, steps, eval_every)
    best0 = {"variables": {"params": state.params, "batch_stats": state.batch_stats},
             "val": jnp.array(-jnp.inf, jnp.float32), "step": jnp.array(0, jnp.int32)}
    (_, bad_step, best), (values, losses) = jax.lax.scan(
        checkpoint, (state, jnp.array(-1, jnp.int32), best0), step_keys)
    return best, values, losses, bad_step


PROTOCOL_DATA_KEYS = ("train", "val_x", "val_y", "test_x", "test_y")


def protocol(key: jax.Array, data: dict[str, jnp.ndarray], beta: float | jnp.ndarray, *,
             model: nn.Module, config: ProtocolConfig) -> dict[str, jnp.ndarray]:
    """One seed of the paper's protocol; pure, so it can be ``jit``-ed and ``vmap``-ped.

    ``data`` holds ``train`` (normal samples), ``val_x``, ``val_y``, ``test_x``, ``test_y``
    and optionally ``n_train``, the number of valid rows of a zero-padded ``train``.
    Returns the test metric of the best validation checkpoint, its step and validation
    metric, the per-sample test scores, the validation metric and mean training loss per
    checkpoint, the first step whose loss was not finite (−1 if none) and whether the test
    scores are (near-)constant.

    Failure handling: once a step's loss is not finite the run is failed: later checkpoints
    are never selected and the test metric is NaN, so a diverged model never reports a
    metric. Where no checkpoint had a validation metric (all NaN), ``best_step`` is 0 and
    the test metric is NaN too: the untrained network's would not be a result. Constant test
    scores (spread ≤ 1e-6 of their magnitude) make AUROC a meaningless 0.5; they are flagged
    rather than silently reported.
    """
    check_beta("beta", beta)  # (a concrete one; config.beta is not what this run trains with)
    missing = [k for k in PROTOCOL_DATA_KEYS if k not in data]
    if missing:
        raise TollError(f"protocol data lacks {', '.join(missing)}; it needs "
                        f"{', '.join(PROTOCOL_DATA_KEYS)} (and optionally n_train)")
    # NumPy arrays cannot be indexed by the traced batch indices (called outside jit).
    data = {k: jnp.asarray(v) for k, v in data.items()}
    metric = METRICS[config.metric]
    norm = config.norm
    init_key, data_key = jax.random.split(key)
    state = create_train_state(model, init_key, data["train"].shape[1:], optax.adam(config.lr))
    n_train = data.get("n_train", data["train"].shape[0])

    def validation_metric(variables):
        scores = score(state.apply_fn, variables, data["val_x"], beta, norm, config.score_chunk)
        return metric(scores, data["val_y"])

    best, val_curve, loss_curve, bad_step = train_and_select(
        state, data_key, data["train"], n_train, validation_metric, batch_size=config.batch_size,
        steps=config.steps, eval_every=config.eval_every, beta=beta, norm=norm)
    test_scores = score(state.apply_fn, best["variables"], data["test_x"], beta, norm,
                        config.score_chunk)
    spread = jnp.max(test_scores) - jnp.min(test_scores)
    magnitude = jnp.max(jnp.abs(test_scores))
    return {
        # No metric for a failed run, nor where no checkpoint was selected (step 0: every
        # validation value NaN, e.g. from non-finite validation scores): that would be the
        # untrained network's.
        "test_metric": jnp.where((bad_step >= 0) | (best["step"] == 0), jnp.nan,
                                 metric(test_scores, data["test_y"])),
        "best_step": best["step"],
        "best_val_metric": best["val"],
        "test_scores": test_scores,
        "val_curve": val_curve,
        "loss_curve": loss_curve,
        "nonfinite_step": bad_step,
        "constant_test_scores": spread <= 1e-6 * magnitude,
    }


@dataclasses.dataclass
class CompiledProtocol:
    """The protocol compiled as one program per *round* over the devices.

    Work is cut into chunks: one chunk = up to ``width`` seeds of one dataset (normal class),
    vmapped together. A round runs one chunk on each device of ``mesh`` (``shard_map``), each
    device holding only its own chunk's data. A seed's initialisation and batches depend on
    the seed alone, and every device runs the same per-device program, so at a fixed
    ``width`` the results are bit-identical on 1, 2 or 4 devices (tested). ``width`` itself
    is part of the program: XLA's batched matmul and reduction kernels round differently for
    a different number of vmapped seeds, so changing it changes the last float bits.
    """

    executable: Any
    mesh: Mesh
    width: int
    compile_seconds: float
    # name -> (shape, dtype) of one dataset, as compiled; batch_size bounds a chunk's n_train
    data_spec: dict[str, tuple[tuple[int, ...], np.dtype]] = dataclasses.field(default_factory=dict)
    batch_size: int = 1

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    def run_chunks(self, chunks: list[tuple[list[int], dict]], beta: float) -> list[dict]:
        """Run ``[(seeds, data), ...]`` (each ≤ ``width`` seeds) in rounds; results per chunk.

        ``beta`` is the β the program trains with (``ProtocolConfig.beta`` is not read here):
        it is checked as the config's is."""
        check_beta("beta", beta)
        for index, (_, data) in enumerate(chunks):
            self._check_data(data, f"chunk {index}" if len(chunks) > 1 else "data")
        results = []
        n_dev = self.num_devices
        for start in range(0, len(chunks), n_dev):
            batch = chunks[start:start + n_dev]
            padded = batch + [batch[-1]] * (n_dev - len(batch))  # idle devices repeat a chunk
            # Seeds, data and β go in as host (NumPy) arrays: every eager jnp/jax.random call
            # here would compile a small program of its own (measured ~0.2 s on first use).
            seed_grid = np.stack([seed_array(_pad_seeds(s, self.width)) for s, _ in padded])
            data = jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]),
                                          *[d for _, d in padded])
            sharding = NamedSharding(self.mesh, P("dev"))
            out = self.executable(jax.device_put(seed_grid, sharding),
                                  jax.device_put(data, sharding), np.float32(beta))
            out = _to_host(out)
            for i, (seeds, _) in enumerate(batch):
                results.append({k: v[i, : len(seeds)] for k, v in out.items()})
        return results

    def _check_data(self, data: dict, what: str) -> None:
        """:class:`TollError` unless ``data`` has the compiled keys, shapes and dtypes (it was
        JAX's "Argument types differ" or "pytree does not match") and a usable ``n_train``."""
        if not isinstance(data, dict) or set(data) != set(self.data_spec):
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise TollError(f"{what}: the program was compiled for data with keys "
                            f"{sorted(self.data_spec)}, got {got}")
        for name, (shape, dtype) in self.data_spec.items():
            value = data[name]
            got_shape = tuple(np.shape(value))
            got_dtype = _canonical_dtype(value)
            if got_shape != shape or got_dtype != dtype:
                raise TollError(f"{what}: {name} has shape {got_shape} and dtype {got_dtype}, but "
                                f"the program was compiled for {shape} {dtype}; compile_protocol "
                                "again with data of this shape (or pad it to the compiled one)")
        if "n_train" in data:  # traced inside the program, where padding rows would be drawn
            n_train, rows = int(np.asarray(data["n_train"])), self.data_spec["train"][0][0]
            if not self.batch_size <= n_train <= rows:
                raise TollError(f"{what}: n_train {n_train} must lie between the batch size "
                                f"{self.batch_size} and the {rows} rows of train")

    def __call__(self, seeds, data: dict, beta: float) -> dict[str, np.ndarray]:
        """All ``seeds`` on one dataset: chunks of ``width`` seeds, results stacked over seeds."""
        seeds = seed_array(seeds).tolist()
        if not seeds:
            raise TollError("no seeds to run; pass at least one")
        groups = [seeds[i:i + self.width] for i in range(0, len(seeds), self.width)]
        parts = self.run_chunks([(g, data) for g in groups], beta)
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _canonical_dtype(value) -> np.dtype:
    """The dtype JAX gives ``value`` as a program argument (float64 → float32 without x64)."""
    dtype = value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype
    return jax.dtypes.canonicalize_dtype(dtype)


def _to_host(out: dict) -> dict[str, np.ndarray]:
    """The round's outputs as NumPy arrays. On a multi-process mesh (``jax.distributed``)
    each process holds only its own devices' rows; they are gathered so that every process
    sees all results."""
    if all(v.is_fully_addressable for v in out.values()):
        return {k: np.asarray(v) for k, v in out.items()}
    from jax.experimental import multihost_utils

    return {k: np.asarray(v) for k, v in multihost_utils.process_allgather(out, tiled=True).items()}


def _pad_seeds(seeds: list[int], width: int) -> list[int]:
    # Padded lanes repeat the last seed: their results are dropped, and a seed's result does
    # not depend on its neighbours (max(seeds) + 1 overflowed for the largest seed).
    return list(seeds) + [seeds[-1]] * (width - len(seeds))


# Backends on which a convolutional model runs its seeds one at a time (default_width).
SEQUENTIAL_CONV_PLATFORMS = ("gpu", "cuda", "rocm")


def subjaxprs(eqn: jax.extend.core.JaxprEqn) -> Iterator[jax.extend.core.Jaxpr]:
    """The jaxprs nested in a jaxpr equation's parameters (a scan's or jit's body, a cond's
    branches...), each as a plain ``Jaxpr``."""
    for value in eqn.params.values():
        for sub in value if isinstance(value, (list, tuple)) else [value]:
            if hasattr(sub, "jaxpr") and hasattr(sub, "consts"):  # a ClosedJaxpr
                yield sub.jaxpr
            elif type(sub).__name__ == "Jaxpr":
                yield sub


def runs_xla_convolutions(model: nn.Module, sample_shape: Sequence[int]) -> bool:
    """Whether ``model`` runs an XLA convolution (``lax.conv_general_dilated``, however it is
    wrapped), read from the jaxpr of its ``init`` with the layers this backend selects (on
    CPUs, tolljax's oneDNN calls are not XLA convolutions; there the answer is not used)."""
    # model.init itself, not init_variables: that one's jit cache may hold a trace made with
    # other layers (the implementation is chosen when a model is traced).
    x = jax.ShapeDtypeStruct((1, *sample_shape), jnp.float32)
    closed = jax.make_jaxpr(lambda x: model.init(jax.random.key(0), x, train=False))(x)

    def walk(jaxpr) -> bool:
        return any(eqn.primitive.name == "conv_general_dilated"
                   or any(walk(sub) for sub in subjaxprs(eqn)) for eqn in jaxpr.eqns)

    return walk(closed.jaxpr)


def default_width(num_seeds: int, num_datasets: int = 1, num_devices: int | None = None, *,
                  model: nn.Module | None = None, sample_shape: Sequence[int] | None = None,
                  platform: str | None = None) -> int:
    """Seeds vmapped together: all of them, unless that would leave devices idle (e.g. one
    dataset on several CPU devices), in which case the seeds are split over the devices.

    On GPUs (``platform``, default ``jax.default_backend()``) a ``model`` that runs
    convolutions on ``sample_shape`` samples (:func:`runs_xla_convolutions`) runs its seeds
    one at a time instead (width 1): vmapped over seeds, each convolution becomes a grouped
    convolution (one group per seed), and cuDNN's grouped kernels are slower than the seeds
    in turn. Measured on an H200 (``benchmarks/bench_sweep.py``, MNIST Table-1 protocol,
    class 0, 10 seeds × 200 steps, batch 1000): run time 84.1 s vmapped against 54.6 s one
    at a time in float32, 44.7 s against 28.4 s in bfloat16. On CPUs and TPUs the seeds stay
    vmapped (not measured on TPUs).
    """
    if model is not None and sample_shape is None:
        raise TollError("default_width: a model needs its sample_shape")
    platform = platform or jax.default_backend()
    if (model is not None and platform in SEQUENTIAL_CONV_PLATFORMS
            and runs_xla_convolutions(model, sample_shape)):
        return 1
    num_devices = num_devices or len(jax.devices())
    per_dataset = max(1, num_devices // max(1, num_datasets))
    return -(-num_seeds // per_dataset)


def compile_protocol(model: nn.Module, config: ProtocolConfig, data: dict[str, jnp.ndarray],
                     num_seeds: int | None = None, devices: Sequence[jax.Device] | None = None,
                     width: int | None = None) -> CompiledProtocol:
    """Ahead-of-time compile :func:`protocol`: ``width`` seeds vmapped per device, one chunk
    per device per call (``shard_map`` over a 1-D mesh of ``devices``).

    ``data`` is an example dataset (shapes only matter). ``width`` defaults to
    :func:`default_width` for ``num_seeds`` seeds of one dataset. On CPU the CLI exposes one
    host device per core (``--xla_force_host_platform_device_count``): per-seed matmuls are
    small, and running seeds on separate cores beats one device's multithreaded kernels
    (measured: Arrhythmia, 2 cores, 20.3 s → 14.5 s of run time). Compiling ahead of time lets callers
    report compile and run time apart.
    """
    devices = list(devices or jax.devices())
    if width is None:
        width = default_width(num_seeds or 1, 1, len(devices), model=model,
                              sample_shape=np.shape(data["train"])[1:],
                              platform=devices[0].platform)
    width = positive_int("width", width)  # (0 was a ZeroDivisionError)
    n_chunks_hint = -(-(num_seeds or width) // width)
    n_dev = max(1, min(len(devices), n_chunks_hint)) if num_seeds else len(devices)
    mesh = Mesh(np.array(devices[:n_dev]), ("dev",))
    one_chunk = jax.vmap(functools.partial(protocol, model=model, config=config),
                         in_axes=(0, None, None))

    def per_device(seeds, data, beta):
        keys = jax.vmap(jax.random.key)(seeds[0])  # jax.random.key(seed), inside the program
        out = one_chunk(keys, jax.tree_util.tree_map(lambda a: a[0], data), beta)
        return jax.tree_util.tree_map(lambda a: a[None], out)

    fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("dev"), P("dev"), P()),
                               out_specs=P("dev"), check_vma=False))
    seeds = jax.ShapeDtypeStruct((n_dev, width), np.uint32)
    data_spec = {k: (tuple(np.shape(a)), _canonical_dtype(a)) for k, a in data.items()}
    shapes = {k: jax.ShapeDtypeStruct((n_dev, *shape), dtype) for k, (shape, dtype) in data_spec.items()}
    start = time.perf_counter()
    executable = fn.lower(seeds, shapes, jax.ShapeDtypeStruct((), jnp.float32)).compile()
    return CompiledProtocol(executable, mesh, width, time.perf_counter() - start, data_spec,
                            config.batch_size)


def seed_array(seeds: Sequence[int] | np.ndarray) -> np.ndarray:
    """Seeds as the uint32 array the compiled protocol takes (each becomes
    ``jax.random.key(seed)`` inside the program); a clear error outside 0 .. 2**32 − 1.

    That range is :class:`tolljax.TollDetector`'s too, and on it ``jax.random.key`` of the
    Python int, of the uint32 and of the int32 are the same key, so a seed means the same run
    in the CLI, the detector and the CANCE runner. Negative seeds were once accepted here (the
    detector refused them) and aliased: an int32 −1 is the key of 2**32 − 1."""
    if np.ndim(seeds) == 0:  # `for s in 3` was "'int' object is not iterable"
        hint = f" (one seed: [{seeds!r}])" if isinstance(seeds, numbers.Integral) else ""
        raise TollError(f"seeds must be a list of integers, got {seeds!r}{hint}")
    if any(isinstance(s, (bool, np.bool_)) or not isinstance(s, numbers.Integral) for s in seeds):
        raise TollError(f"seeds must be integers, got {list(seeds)[:5]}")  # 1.5 became seed 1
    seeds = [int(s) for s in seeds]
    bad = [s for s in seeds if not 0 <= s < 2**32]
    if bad:
        raise TollError(f"seeds must be integers in 0..2**32-1, got {bad[:3]}")
    return np.asarray(seeds, np.uint32)

