import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import optax
import pytest

from tolljax.errors import TollError
from tolljax.models import build_model
from tolljax.train import (ProtocolConfig, TrainState, checkpoint_keys, compile_protocol,
                           create_train_state, map_in_chunks, protocol, sample_batch_indices,
                           score, train_and_select, train_step)

SHORT = dict(beta=10.0, lr=1e-3, batch_size=100, steps=60, eval_every=20, metric="f1")


@pytest.fixture(scope="module")
def data(arrhythmia):
    s = arrhythmia
    return {"train": jnp.asarray(s.train), "val_x": jnp.asarray(s.val_x),
            "val_y": jnp.asarray(s.val_y), "test_x": jnp.asarray(s.test_x),
            "test_y": jnp.asarray(s.test_y)}


@pytest.fixture(scope="module")
def three_seeds(data):
    run = compile_protocol(build_model("arrhythmia"), ProtocolConfig(**SHORT), data, 3)
    return run, run([0, 1, 2], data, SHORT["beta"])


def test_train_steps_lower_the_loss(data):
    model = build_model("arrhythmia")
    state = create_train_state(model, jax.random.key(0), (274,), optax.adam(1e-3))
    batch = data["train"][:100]
    step = jax.jit(train_step)
    losses = []
    for _ in range(50):
        state, metrics = step(state, batch, 10.0)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.95 * losses[0]
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 45  # descends almost every step
    assert int(state.step) == 50
    # BatchNorm running statistics are part of the state and move during training.
    fresh = create_train_state(model, jax.random.key(0), (274,), optax.adam(1e-3))
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()),
                                   state.batch_stats, fresh.batch_stats)
    assert min(jax.tree_util.tree_leaves(moved)) > 0


def test_map_in_chunks_feeds_whole_batches_then_the_remainder():
    x = jnp.arange(23.0)[:, None] * jnp.ones((1, 3))
    seen = lambda b: b.sum(axis=1) + 1000.0 * b.shape[0]  # reveals the batch each row was in
    rows = np.arange(23.0) * 3
    np.testing.assert_array_equal(jax.jit(lambda x: map_in_chunks(seen, x, 5))(x),
                                  rows + np.where(np.arange(23) < 20, 5000.0, 3000.0))
    np.testing.assert_array_equal(map_in_chunks(seen, x[:20], 5), rows[:20] + 5000.0)
    np.testing.assert_array_equal(map_in_chunks(seen, x, 30), rows + 23000.0)


def test_score_is_eval_mode_and_chunking_does_not_change_it(data):
    model = build_model("arrhythmia")
    state = create_train_state(model, jax.random.key(1), (274,), optax.adam(1e-3))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    x = data["test_x"]
    whole = score(model.apply, variables, x, 10.0)
    chunked = score(model.apply, variables, x, 10.0, chunk=16)
    np.testing.assert_allclose(whole, chunked, rtol=1e-5)
    # Eval mode: a sample's score does not depend on the rest of the batch.
    np.testing.assert_allclose(score(model.apply, variables, x[:5], 10.0), whole[:5], rtol=1e-5)


def test_sample_batch_indices_are_distinct_and_respect_padding():
    for i in range(20):
        idx = np.asarray(sample_batch_indices(jax.random.key(i), 150, 232, 100))
        assert len(set(idx.tolist())) == 100
        assert idx.min() >= 0 and idx.max() < 150
    counts = np.zeros(10)
    for i in range(2000):
        counts[np.asarray(sample_batch_indices(jax.random.key(i), 10, 12, 3))] += 1
    np.testing.assert_allclose(counts / 2000, 0.3, atol=0.03)  # uniform inclusion probability


def test_vmapped_seeds_equal_each_seed_alone(data, three_seeds):
    # Same computation, but XLA picks different matmul kernels for a batch of 1, 2 or more
    # seeds, so the last bits differ (see train.compile_protocol): equal to float tolerance.
    _, together = three_seeds
    for i, seed in enumerate([0, 1, 2]):
        alone = compile_protocol(build_model("arrhythmia"), ProtocolConfig(**SHORT), data, 1,
                                 devices=jax.devices()[:1])([seed], data, SHORT["beta"])
        np.testing.assert_allclose(alone["loss_curve"][0], together["loss_curve"][i], rtol=2e-3)


def test_same_seed_twice_is_identical(data, three_seeds):
    run, first = three_seeds
    second = run([0, 1, 2], data, SHORT["beta"])
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    assert len(set(np.round(first["loss_curve"][:, 0], 6))) == 3  # seeds really differ


def test_best_checkpoint_is_the_first_strict_maximum(three_seeds):
    _, out = three_seeds
    for val_curve, best_val, best_step in zip(out["val_curve"], out["best_val_metric"],
                                              out["best_step"]):
        assert best_val == val_curve.max()
        assert best_step == (int(np.argmax(val_curve)) + 1) * SHORT["eval_every"]
    assert np.all(out["nonfinite_step"] == -1)


class _Clock(nn.Module):
    """x̂ = x and z = c: the loss is β·|c|, whose Adam steps move c by exactly -lr (constant
    gradient), so c tells which step a checkpoint was taken at."""

    @nn.compact
    def __call__(self, x, train: bool = True):
        self.variable("batch_stats", "unused", lambda: jnp.zeros(()))
        c = self.param("c", lambda key: jnp.float32(1.0))
        return x, jnp.broadcast_to(c, (x.shape[0], 1))


def test_selection_keeps_the_first_of_tied_maxima_and_its_parameters():
    """A scripted validation curve with a tie at its maximum (.5, .7, .7, .6): the kept
    checkpoint is the first .7 (step 40; strictly better only), with step 40's parameters,
    not the last checkpoint's."""
    from tolljax.train import TrainState, train_and_select

    lr, every, script = 0.01, 20, jnp.array([0.5, 0.7, 0.7, 0.6])
    model = _Clock()
    state = TrainState.create(apply_fn=model.apply, params={"c": jnp.float32(1.0)},
                              tx=optax.adam(lr), batch_stats={"unused": jnp.zeros(())})

    def select(variables):
        step = jnp.round((1.0 - variables["params"]["c"]) / lr).astype(jnp.int32)
        return script[step // every - 1]

    best, values, _, bad_step = jax.jit(lambda st: train_and_select(
        st, jax.random.key(0), jnp.zeros((10, 3)), 10, select, batch_size=4, steps=80,
        eval_every=every, beta=1.0))(state)
    np.testing.assert_allclose(values, script)
    assert int(best["step"]) == 40 and float(best["val"]) == pytest.approx(0.7)
    assert float(best["variables"]["params"]["c"]) == pytest.approx(1.0 - 40 * lr, abs=1e-4)
    assert int(bad_step) == -1


@pytest.mark.parametrize("override, message", [
    (dict(steps=50), "not a multiple of --eval-every"),
    (dict(batch_size=0), "--batch-size must be a positive integer"),
    (dict(beta=-1.0), "--beta must be"),
    (dict(lr=float("nan")), "--lr must be"),
    (dict(lr=1e-50), "--lr=1e-50 is 0 in the float32 arithmetic"),  # trained nothing, silently
    (dict(beta=1e39), "--beta=1e[+]39 is beyond the float32 range"),  # "every run failed"
    (dict(norm="3"), "unknown latent norm"),
    (dict(metric="accuracy"), "unknown metric"),
])
def test_bad_protocol_config(override, message):
    with pytest.raises(TollError, match=message):
        ProtocolConfig(**{**SHORT, **override})


def test_nonfinite_loss_fails_the_run_without_a_metric(data):
    # A learning rate this large makes the loss overflow within a few steps.
    config = ProtocolConfig(**{**SHORT, "lr": 1e30})
    out = compile_protocol(build_model("arrhythmia"), config, data, 2)([0, 1], data, 10.0)
    assert np.all(out["nonfinite_step"] > 0)
    assert np.all(np.isnan(out["test_metric"]))
    assert np.all(out["best_val_metric"] == -np.inf) or np.all(out["best_step"] < out["nonfinite_step"])


def test_constant_scores_are_flagged(data):
    # β so large that the score is β·||z|| with z collapsed: here we flag instead by making
    # every test sample identical, which makes any model's scores constant.
    same = dict(data, test_x=jnp.broadcast_to(data["test_x"][:1], data["test_x"].shape))
    out = compile_protocol(build_model("arrhythmia"), ProtocolConfig(**SHORT), same, 2)(
        [0, 1], same, 10.0)
    assert np.all(out["constant_test_scores"])
    assert not np.any(compile_protocol(build_model("arrhythmia"), ProtocolConfig(**SHORT), data, 2)(
        [0, 1], data, 10.0)["constant_test_scores"])


def test_results_do_not_depend_on_the_number_of_devices(data):
    # Chunks of `width` seeds are the unit of work: 1 device runs them in rounds, 2 devices
    # side by side, each with the same per-device program, so every output is bit-identical.
    model, config = build_model("arrhythmia"), ProtocolConfig(**SHORT)
    one = compile_protocol(model, config, data, devices=jax.devices()[:1], width=2)
    two = compile_protocol(model, config, data, devices=jax.devices()[:2], width=2)
    assert one.num_devices == 1 and two.num_devices == 2
    a, b = one([0, 1, 2], data, 10.0), two([0, 1, 2], data, 10.0)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


FOUR_DEVICES = """
import json, sys, numpy as np, jax, jax.numpy as jnp
from tolljax.data import load_arrhythmia
from tolljax.models import build_model
from tolljax.train import ProtocolConfig, compile_protocol
s = load_arrhythmia()
data = {k: jnp.asarray(getattr(s, k)) for k in ("train", "val_x", "val_y", "test_x", "test_y")}
config = ProtocolConfig(beta=10.0, lr=1e-3, batch_size=100, steps=40, eval_every=20, metric="f1")
model = build_model("arrhythmia")
seeds = list(range(7))
runs = [compile_protocol(model, config, data, devices=jax.devices()[:n], width=2)
        for n in (1, 4)]
assert runs[1].num_devices == 4 and len(jax.devices()) == 4
a, b = (r.run_chunks([(seeds[i:i + 2], data) for i in range(0, 7, 2)], 10.0) for r in runs)
same = all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
print(json.dumps({"bit_identical": bool(same), "chunks": len(b)}))
"""


def test_sharded_over_four_forced_host_devices_matches_one():
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    proc = subprocess.run([sys.executable, "-c", FOUR_DEVICES], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"bit_identical": True, "chunks": 4}


def test_a_seed_is_the_same_key_in_the_compiled_protocol_and_in_python():
    """seed_array's uint32 seeds, keyed inside the program as compile_protocol does, are
    ``jax.random.key(seed)`` of the Python int that TollDetector and the CANCE runner use."""
    from tolljax.train import seed_array

    seeds = [0, 7, 2**31 - 1, 2**31, 2**32 - 1]
    traced = jax.jit(jax.vmap(jax.random.key))(seed_array(seeds))
    for seed, key in zip(seeds, traced):
        np.testing.assert_array_equal(jax.random.key_data(key),
                                      jax.random.key_data(jax.random.key(seed)))


def test_compiled_protocol_checks_seeds_and_beta_and_pads_safely(data, three_seeds):
    run, first = three_seeds
    # A lone seed is padded to the program's width by repeating it; its numbers are those of
    # the same seed among others (the padding seed used to be max + 1, which overflowed int32
    # for seed 2**31 - 1).
    alone = run([0], data, SHORT["beta"])
    for key in ("loss_curve", "val_curve", "test_metric", "best_step"):
        np.testing.assert_array_equal(alone[key][0], first[key][0])
    assert run([2**32 - 1], data, SHORT["beta"])["test_metric"].shape == (1,)
    # the detector's range: -1 was accepted, the same key as 2**32 - 1
    for seeds, message in (([1.5], "seeds must be integers"), ([], "no seeds to run"),
                           ([-1], r"seeds must be integers in 0..2\*\*32-1, got \[-1\]"),
                           ([2**32], r"in 0..2\*\*32-1, got \[4294967296\]")):
        with pytest.raises(TollError, match=message):  # 1.5 was truncated to seed 1
            run(seeds, data, SHORT["beta"])
    for beta in (-3.0, float("nan"), 1e39):  # the β trained with was never checked
        with pytest.raises(TollError, match="beta"):
            run([0], data, beta)


@pytest.mark.parametrize("override, message", [
    (dict(batch_size=2.5), "--batch-size must be a positive integer, got 2.5"),
    (dict(steps="40"), "--steps must be a positive integer, got '40'"),
    (dict(batch_size=True), "--batch-size must be a positive integer, got True"),
    (dict(beta=None), "--beta must be a finite number >= 0, got None"),
    (dict(beta=10**400), "--beta must be a finite number >= 0, got 1000"),  # was OverflowError
    (dict(lr=10**400), "--lr must be a positive number, got 1000"),  # was a NumPy TypeError
])
def test_protocol_config_refuses_non_integer_counts_and_non_numbers(override, message):
    with pytest.raises(TollError, match=message):  # were TypeErrors from inside JAX / NumPy
        ProtocolConfig(**{**SHORT, **override})


def test_batch_larger_than_the_rows_is_an_error_not_a_smaller_batch():
    key = jax.random.key(0)
    assert sample_batch_indices(key, 8, 8, 8).shape == (8,)
    with pytest.raises(TollError, match="batch_size 8 is larger than the 5 training rows"):
        sample_batch_indices(key, 5, 5, 8)  # returned 5 indices
    with pytest.raises(TollError, match="batch_size 4 is larger than the 2 training rows"):
        sample_batch_indices(key, 2, 10, 4)  # drew padding rows


def test_chunk_and_checkpoint_sizes_are_checked():
    x = jnp.ones((4, 3))
    for chunk in (0, -1, 2.5):
        with pytest.raises(TollError, match="chunk must be a positive integer"):
            map_in_chunks(lambda b: b[:, 0], x, chunk)
    key = jax.random.key(0)
    assert checkpoint_keys(key, 40, 20).shape == (2, 20)
    with pytest.raises(TollError, match="steps 30 is not a multiple of eval_every 20"):
        checkpoint_keys(key, 30, 20)
    with pytest.raises(TollError, match="eval_every must be a positive integer"):
        checkpoint_keys(key, 20, 0)


class _LinearAutoencoder(nn.Module):
    """An autoencoder without BatchNorm, as a user might register one."""

    @nn.compact
    def __call__(self, x, train):
        z = nn.Dense(4)(x)
        return nn.Dense(x.shape[-1])(z), z


def test_a_model_without_batchnorm_trains_and_is_selected(data):
    model = _LinearAutoencoder()
    state = create_train_state(model, jax.random.key(0), (274,), optax.adam(1e-3))
    assert state.batch_stats == {}
    select = lambda v: -jnp.mean(score(model.apply, v, data["val_x"], 1.0))
    best, values, losses, bad = jax.jit(
        lambda s: train_and_select(s, jax.random.key(1), data["train"], data["train"].shape[0],
                                   select, batch_size=50, steps=60, eval_every=20, beta=1.0))(state)
    assert int(bad) == -1 and best["variables"]["batch_stats"] == {}
    assert float(losses[-1]) < float(losses[0])
    assert float(best["val"]) == float(jnp.max(values))


def test_train_and_select_accepts_numpy_training_data(data):
    # Was a TracerArrayConversionError from inside the scan (called outside jit).
    model = build_model("arrhythmia", z_dim=4)
    state = create_train_state(model, jax.random.key(0), (274,), optax.adam(1e-3))
    select = lambda v: -jnp.mean(score(model.apply, v, data["val_x"], 1.0))
    run = lambda train: train_and_select(state, jax.random.key(1), train, 232, select,
                                         batch_size=16, steps=4, eval_every=2, beta=1.0)
    a, b = run(np.asarray(data["train"])), run(data["train"])
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, a, b))


def test_batch_size_beta_and_empty_batches_are_checked(data):
    # Were accepted: batch_size -1 trained on all rows but one (argsort(...)[:-1]), 0 gave NaN
    # losses reported as divergence, an empty batch NaN BatchNorm statistics, and a negative
    # or NaN beta trained (or scored) silently.
    model = build_model("arrhythmia", z_dim=4)
    state = create_train_state(model, jax.random.key(0), (274,), optax.adam(1e-3))
    select = lambda v: jnp.float32(0)
    for size in (-1, 0):
        with pytest.raises(TollError, match=f"batch_size must be a positive integer, got {size}"):
            train_and_select(state, jax.random.key(1), data["train"], 232, select,
                             batch_size=size, steps=2, eval_every=1, beta=1.0)
        with pytest.raises(TollError, match="batch_size must be a positive integer"):
            sample_batch_indices(jax.random.key(0), 10, 10, size)
    with pytest.raises(TollError, match="train_step: the batch is empty"):
        train_step(state, data["train"][:0], 1.0)
    config = ProtocolConfig(**{**SHORT, "steps": 20})
    for beta in (-1.0, float("nan")):
        with pytest.raises(TollError, match="beta must be a finite number >= 0"):
            train_step(state, data["train"][:8], beta)
        with pytest.raises(TollError, match="beta must be a finite number >= 0"):
            score(model.apply, {"params": state.params, "batch_stats": state.batch_stats},
                  data["val_x"], beta)
        with pytest.raises(TollError, match="beta must be a finite number >= 0"):
            protocol(jax.random.key(0), data, beta, model=model, config=config)
    # a traced beta (a vmapped sweep) is not checked, and trains as before
    losses = jax.vmap(lambda b: train_step(state, data["train"][:8], b)[1]["loss"])(
        jnp.array([0.0, 10.0]))
    assert losses.shape == (2,) and bool(jnp.all(jnp.isfinite(losses)))


def test_compile_protocol_refuses_a_width_below_one(data):
    for width in (0, -2):  # 0 was a ZeroDivisionError
        with pytest.raises(TollError, match=f"width must be a positive integer, got {width}"):
            compile_protocol(build_model("arrhythmia"), ProtocolConfig(**SHORT), data, 2,
                             width=width)


def test_protocol_without_a_selectable_checkpoint_reports_no_metric(data):
    # One NaN in val_x makes every validation F1 NaN, so no checkpoint is selected. The test
    # metric was the untrained network's (an F1 that looked like a result).
    config = ProtocolConfig(**{**SHORT, "steps": 40})
    model = build_model("arrhythmia", z_dim=4)
    bad = {**data, "val_x": data["val_x"].at[5, 0].set(jnp.nan)}
    out = jax.jit(lambda d: protocol(jax.random.key(0), d, 10.0, model=model, config=config))(bad)
    assert int(out["best_step"]) == 0 and int(out["nonfinite_step"]) == -1
    assert np.isnan(np.asarray(out["val_curve"])).all() and np.isnan(float(out["test_metric"]))
    good = protocol(jax.random.key(0), data, 10.0, model=model, config=config)
    assert int(good["best_step"]) > 0 and np.isfinite(float(good["test_metric"]))


def test_protocol_names_missing_data_and_accepts_numpy(data):
    config = ProtocolConfig(**{**SHORT, "steps": 20})
    model = build_model("arrhythmia", z_dim=4)
    with pytest.raises(TollError, match="protocol data lacks val_y, test_y"):
        protocol(jax.random.key(0), {k: v for k, v in data.items() if not k.endswith("_y")},
                 10.0, model=model, config=config)
    # Called outside jit, NumPy data is indexed by the traced batch indices (was a
    # TracerArrayConversionError).
    # It computes what the same eager call computes from device arrays, bit for bit.
    host = {k: np.asarray(v) for k, v in data.items()}
    eager = protocol(jax.random.key(0), host, 10.0, model=model, config=config)
    reference = protocol(jax.random.key(0), data, 10.0, model=model, config=config)
    assert eager.keys() == reference.keys()
    for name in eager:
        np.testing.assert_array_equal(eager[name], reference[name], err_msg=name)
    # Under jit the whole protocol is one XLA program, which fuses and so rounds differently
    # from the eager call's separate ones: after 20 Adam steps the test scores agreed to 8e-8
    # (relative) with jax 0.10.2 and to 1.1e-3 with jax 0.12.0.1.
    jitted = jax.jit(lambda d: protocol(jax.random.key(0), d, 10.0, model=model, config=config))(data)
    np.testing.assert_allclose(eager["test_scores"], jitted["test_scores"], rtol=1e-2)
    assert int(eager["best_step"]) == int(jitted["best_step"])


class _LaxConvInNestedJit(nn.Module):
    """A model whose only convolution is a raw lax call inside a jit (a nested jaxpr)."""

    @nn.compact
    def __call__(self, x, train=False):
        w = self.param("w", nn.initializers.ones, (3, 3, 1, 2))
        conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
        return conv(x, w)


def test_runs_xla_convolutions_finds_convolutions_in_nested_jaxprs(monkeypatch):
    from tolljax import ops
    from tolljax.train import runs_xla_convolutions

    # The GPU's layers (XLA's own); on CPU the default is tolljax's oneDNN calls.
    monkeypatch.setenv(ops.ENV_VAR, "plain")
    monkeypatch.setenv(ops.CONV_ENV_VAR, "plain")
    assert runs_xla_convolutions(build_model("mnist"), (28, 28, 1))
    assert runs_xla_convolutions(_LaxConvInNestedJit(), (5, 5, 1))
    assert not runs_xla_convolutions(build_model("arrhythmia"), (274,))


def test_default_width_runs_convolutional_seeds_one_at_a_time_on_gpus_only(monkeypatch):
    from tolljax import ops
    from tolljax.train import default_width

    monkeypatch.setenv(ops.ENV_VAR, "plain")
    monkeypatch.setenv(ops.CONV_ENV_VAR, "plain")
    conv, mlp = build_model("mnist"), build_model("arrhythmia")
    assert default_width(10, 1, 1, model=conv, sample_shape=(28, 28, 1), platform="gpu") == 1
    assert default_width(10, 1, 1, model=mlp, sample_shape=(274,), platform="gpu") == 10
    assert default_width(10, 1, 1, model=conv, sample_shape=(28, 28, 1), platform="cpu") == 10
    assert default_width(10, 1, 4, model=conv, sample_shape=(28, 28, 1), platform="tpu") == 3
    assert default_width(10, 1, 4) == 3  # no model: the seeds are only split over devices
    with pytest.raises(TollError, match="sample_shape"):
        default_width(10, model=conv)


class _GridCodeAutoencoder(nn.Module):
    """A code with two non-batch axes, (batch, 2, 3), as image models have."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        z = nn.Dense(6)(x).reshape(x.shape[0], 2, 3)
        return nn.Dense(x.shape[-1])(z.reshape(x.shape[0], 6)), z


@pytest.mark.parametrize("norm", [1, 2, "inf"])
def test_train_step_loss_and_latent_norm_in_the_trained_norm_of_the_whole_code(data, norm):
    # The metric used to be jnp.linalg.norm(z, axis=-1): L2 whatever the norm, and over the
    # last axis only (here 3 of the code's 6 entries per row). The loss is the batch mean of
    # the score (a mutation audit found a sum or another norm went unnoticed). Reference:
    # NumPy norms of the model's own outputs (no BatchNorm: train = eval mode).
    model = _GridCodeAutoencoder()
    state = create_train_state(model, jax.random.key(0), (274,), optax.adam(1e-3))
    batch = data["train"][:16]
    x_hat, z = model.apply({"params": state.params}, batch)
    order = {1: 1, 2: 2, "inf": np.inf}[norm]
    code_norm = np.linalg.norm(np.asarray(z, np.float64).reshape(16, 6), ord=order, axis=1)
    residual = np.linalg.norm(np.asarray(x_hat, np.float64) - np.asarray(batch, np.float64),
                              axis=1)
    _, metrics = train_step(state, batch, 3.0, norm)
    np.testing.assert_allclose(float(metrics["latent_norm"]), code_norm.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss"]), (residual + 3.0 * code_norm).mean(),
                               rtol=1e-5)


def test_compiled_protocol_checks_its_arguments(data, three_seeds):
    # JAX's "Argument types differ" / "pytree does not match", and "'int' object is not
    # iterable" for a bare seed, were the errors; a padded n_train below the batch size drew
    # padding rows silently
    run, _ = three_seeds
    with pytest.raises(TollError, match=r"seeds must be a list of integers, got 3 \(one seed: \[3\]\)"):
        run(3, data, 10.0)
    with pytest.raises(TollError, match=r"val_x has shape \(50, 274\) and dtype float32, but the "
                                        r"program was compiled for \(90, 274\) float32"):
        run([0], {**data, "val_x": data["val_x"][:50]}, 10.0)
    with pytest.raises(TollError, match=r"test_y has shape \(90,\) and dtype float32"):
        run([0], {**data, "test_y": data["test_y"].astype(jnp.float32)}, 10.0)
    with pytest.raises(TollError, match=r"compiled for data with keys \['test_x', 'test_y', "
                                        r"'train', 'val_x', 'val_y'\], got \['n_train'"):
        run([0], {**data, "n_train": 100}, 10.0)
    with pytest.raises(TollError, match=r"chunk 1: the program was compiled for data with keys"):
        run.run_chunks([([0], data), ([1], {k: data[k] for k in ("train", "val_x")})], 10.0)
    padded = {**data, "n_train": np.int32(232)}
    config = ProtocolConfig(**{**SHORT, "steps": 20, "batch_size": 16})
    small = compile_protocol(build_model("arrhythmia", z_dim=4), config, padded, 1)
    for n_train in (8, 233):
        with pytest.raises(TollError, match=f"n_train {n_train} must lie between the batch size "
                                            "16 and the 232 rows of train"):
            small([0], {**padded, "n_train": np.int32(n_train)}, 10.0)
    # float64 NumPy data is what JAX makes float32 anyway: accepted, the same result
    as64 = {k: np.asarray(v, np.float64 if v.dtype == jnp.float32 else v.dtype)
            for k, v in padded.items()}
    np.testing.assert_array_equal(small([0], as64, 10.0)["test_metric"],
                                  small([0], padded, 10.0)["test_metric"])


# ------------------------------------------------------------------ audit: closed-form checks
# The models below make the loss a known function of the step count (Adam's first steps on a
# constant gradient g move a parameter by exactly -lr·sign(g)), so the loss curve, the selected
# checkpoint, the failure step and the test scores can be checked against hand-computed values.


class _CountingClock(nn.Module):
    """x̂ = x (+ NaN once c < ``fail_below``; 0.745 is from the 27th step on at lr 0.01) and
    z = c: the loss is β·|c| until then. ``batch_stats['count']`` counts the training steps, so
    a selection function can read the step even after the parameters have become NaN."""

    fail_below: float = -1.0  # never

    @nn.compact
    def __call__(self, x, train: bool = True):
        count = self.variable("batch_stats", "count", lambda: jnp.zeros((), jnp.int32))
        if train and not self.is_initializing():
            count.value = count.value + 1
        c = self.param("c", lambda key: jnp.float32(1.0))
        x_hat = x + jnp.where(c < self.fail_below, jnp.nan, 0.0)
        return x_hat, jnp.broadcast_to(c, (x.shape[0], 1))


def _counting_state(lr=0.01, fail_below=-1.0):
    model = _CountingClock(fail_below)
    return model, TrainState.create(apply_fn=model.apply, params={"c": jnp.float32(1.0)},
                                    tx=optax.adam(lr),
                                    batch_stats={"count": jnp.zeros((), jnp.int32)})


def test_loss_curve_is_the_mean_training_loss_of_each_checkpoint():
    # loss of step k (1-based) = β·(1 − (k − 1)·lr): checkpoint means 1 − 0.095 and 1 − 0.295
    _, state = _counting_state()
    select = lambda v: jnp.float32(0.5)  # noqa: E731
    _, values, losses, bad = jax.jit(lambda st: train_and_select(
        st, jax.random.key(0), jnp.zeros((10, 3)), 10, select, batch_size=4, steps=40,
        eval_every=20, beta=1.0))(state)
    np.testing.assert_allclose(losses, [0.905, 0.705], rtol=1e-4)
    assert int(bad) == -1


def test_a_failed_run_selects_nothing_after_the_first_nonfinite_step():
    """The loss is NaN from step 27 on; the scripted validation values keep rising (.5, .7, .9)
    but checkpoints 40 and 60 are failed: value -inf, never selected; the failure is reported
    at the first non-finite step (27), not the last (60)."""
    _, state = _counting_state(fail_below=0.745)
    script = jnp.array([0.5, 0.7, 0.9])
    select = lambda v: script[v["batch_stats"]["count"] // 20 - 1]  # noqa: E731
    best, values, _, bad = jax.jit(lambda st: train_and_select(
        st, jax.random.key(0), jnp.zeros((10, 3)), 10, select, batch_size=4, steps=60,
        eval_every=20, beta=1.0))(state)
    assert int(bad) == 27
    np.testing.assert_array_equal(np.asarray(values), [0.5, -np.inf, -np.inf])
    assert int(best["step"]) == 20 and float(best["val"]) == 0.5
    assert float(best["variables"]["params"]["c"]) == pytest.approx(1.0 - 20 * 0.01, abs=1e-4)


def test_padding_rows_beyond_n_train_are_never_drawn():
    # Rows 4..9 are NaN padding: one drawn row would make the loss NaN (x̂ − x = NaN).
    _, state = _counting_state()
    train = jnp.concatenate([jnp.zeros((4, 3)), jnp.full((6, 3), jnp.nan)])
    select = lambda v: jnp.float32(0.5)  # noqa: E731
    _, _, losses, bad = jax.jit(lambda st: train_and_select(
        st, jax.random.key(0), train, 4, select, batch_size=4, steps=20, eval_every=10,
        beta=1.0))(state)
    assert int(bad) == -1 and np.isfinite(np.asarray(losses)).all()


def test_protocol_scores_the_test_set_with_the_selected_checkpoint_and_honours_n_train():
    """Constant scores give AUROC 0.5 at every checkpoint, so the first (step 20) is kept; its
    test scores are β·c = 2·(1 − 20·0.01) = 1.6 (the final state would give 2·0.6, the initial
    one 2·1). ``n_train`` = 4 valid rows of a NaN-padded ``train``: padding never drawn."""
    model = _CountingClock()
    config = ProtocolConfig(beta=2.0, lr=0.01, batch_size=4, steps=40, eval_every=20,
                            metric="auroc")
    y = jnp.array([0, 0, 1, 1])
    data = {"train": jnp.concatenate([jnp.zeros((4, 3)), jnp.full((6, 3), jnp.nan)]),
            "n_train": jnp.int32(4), "val_x": jnp.zeros((4, 3)), "val_y": y,
            "test_x": jnp.zeros((4, 3)), "test_y": y}
    out = jax.jit(lambda d: protocol(jax.random.key(0), d, 2.0, model=model, config=config))(data)
    assert int(out["nonfinite_step"]) == -1 and int(out["best_step"]) == 20
    np.testing.assert_allclose(out["test_scores"], np.full(4, 1.6), rtol=1e-4)
    assert float(out["test_metric"]) == 0.5 and bool(out["constant_test_scores"])


def test_a_zero_learning_rate_is_refused():
    with pytest.raises(TollError, match="--lr must be a positive number, got 0"):
        ProtocolConfig(**{**SHORT, "lr": 0.0})


def test_protocol_reports_no_metric_for_a_run_that_failed_after_its_best_checkpoint():
    # The loss is NaN from step 27 on; the checkpoint at step 20 (finite, AUROC 0.5) stays the
    # selected one, but a failed run reports no test metric (its test scores are still those
    # of step 20: β·c = 2·0.8).
    model = _CountingClock(fail_below=0.745)
    config = ProtocolConfig(beta=2.0, lr=0.01, batch_size=4, steps=60, eval_every=20,
                            metric="auroc")
    y = jnp.array([0, 0, 1, 1])
    data = {"train": jnp.zeros((4, 3)), "val_x": jnp.zeros((4, 3)), "val_y": y,
            "test_x": jnp.zeros((4, 3)), "test_y": y}
    out = jax.jit(lambda d: protocol(jax.random.key(0), d, 2.0, model=model, config=config))(data)
    assert int(out["nonfinite_step"]) == 27 and int(out["best_step"]) == 20
    np.testing.assert_array_equal(np.asarray(out["val_curve"]), [0.5, -np.inf, -np.inf])
    np.testing.assert_allclose(out["test_scores"], np.full(4, 1.6), rtol=1e-4)
    assert np.isnan(float(out["test_metric"]))


class _Projector(nn.Module):
    """x̂ = x and z = c·x[:, :2] (c = 1 stays: zero training data give a zero gradient)."""

    @nn.compact
    def __call__(self, x, train: bool = True):
        c = self.param("c", lambda key: jnp.float32(1.0))
        return x, c * x[:, :2]


def test_protocol_scores_validation_and_test_in_the_configured_norm():
    # normal z = (1, 1), anomalous z = (1.9, 0): ||·||_1 gives 2 > 1.9 (AUROC 0), the L2 norm
    # gives 1.41 < 1.9 (AUROC 1). With norm=1 every checkpoint's validation AUROC is 0.
    x = jnp.array([[1.0, 1.0, 0.0], [1.9, 0.0, 0.0]])
    y = jnp.array([0, 1])
    data = {"train": jnp.zeros((4, 3)), "val_x": x, "val_y": y, "test_x": x, "test_y": y}
    config = ProtocolConfig(beta=1.0, lr=0.01, batch_size=2, steps=40, eval_every=20,
                            metric="auroc", norm=1)
    out = jax.jit(lambda d: protocol(jax.random.key(0), d, 1.0, model=_Projector(),
                                     config=config))(data)
    np.testing.assert_array_equal(np.asarray(out["val_curve"]), [0.0, 0.0])
    np.testing.assert_allclose(out["test_scores"], [2.0, 1.9], rtol=1e-6)
    assert float(out["test_metric"]) == 0.0
