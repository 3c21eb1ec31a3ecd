"""tolljax.onednn: the oneDNN convolutions, the CPU default where installed (values are
checked against flax's layers, for every model geometry and padding, in test_ops.py; here:
kernels chosen, reproducibility, fallbacks and errors)."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tolljax import onednn, ops
from tolljax.errors import TollError
from tolljax.models import build_model, sample_shape
from tolljax.train import create_train_state, train_step
from tests.conftest import REPO

needs_onednn = pytest.mark.skipif(not onednn.available(),
                                  reason="oneDNN (onednn-cpu-gomp) is not installed")


def _use_onednn(monkeypatch):
    monkeypatch.setenv(ops.ENV_VAR, "onednn")
    monkeypatch.setenv(ops.CONV_ENV_VAR, "onednn")


@needs_onednn
@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_every_layer_of_the_models_runs_on_optimised_onednn_kernels(dataset, monkeypatch):
    """The large convolutions of the train step are oneDNN custom calls (no XLA convolution
    anywhere), and none of them falls to oneDNN's reference loops (the fallback would route
    those to the GEMM path instead)."""
    _use_onednn(monkeypatch)
    model = build_model(dataset)
    state = jax.eval_shape(lambda: create_train_state(model, jax.random.key(0),
                                                      sample_shape(dataset), optax.adam(1e-3)))
    x = jax.ShapeDtypeStruct((64, *sample_shape(dataset)), jnp.float32)
    onednn._plans.clear()
    hlo = jax.jit(lambda s, x: train_step(s, x, 1.0)).lower(state, x).as_text()
    assert "tolljax_onednn_conv_fwd" in hlo and "tolljax_onednn_ct_fwd" in hlo
    assert "stablehlo.convolution" not in hlo
    assert onednn._plans
    for g, p in onednn._plans.items():
        assert onednn._optimised(p), (g, p.implementations)


@needs_onednn
def test_only_layers_of_shapes_where_it_gains_run_on_onednn():
    """Per-layer measurements (tolljax.onednn.MIN_OUTPUT_PIXELS): layers with a spatial output
    and a k×k kernel go to oneDNN, first layers with 3 channels included; 1×1 outputs, 1×1
    kernels and single-channel sides stay on the GEMM path."""
    conv = lambda n, cin, cout, k, s: onednn.conv_supported((64, n, n, cin), (k, k, cin, cout),
                                                            (s, s), ((0, 0), (0, 0)))
    convt = lambda n, cin, cout, k, s: onednn.conv_transpose_supported(
        (64, n, n, cin), (k, k, cin, cout), (s, s))
    assert conv(25, 64, 128, 4, 1) and conv(22, 128, 256, 4, 2) and conv(13, 64, 128, 4, 1)
    assert conv(28, 32, 64, 4, 2) and conv(32, 3, 32, 5, 1) and conv(10, 128, 256, 4, 2)
    assert convt(22, 128, 64, 4, 1) and convt(28, 32, 32, 5, 1) and convt(13, 64, 32, 4, 2)
    assert convt(4, 256, 128, 4, 2)
    assert not conv(4, 256, 512, 4, 1) and not convt(1, 64, 256, 4, 1)  # 1×1 outputs
    assert not conv(10, 256, 512, 4, 1) and convt(7, 512, 256, 4, 1)  # regular: cout ≥ 512
    assert not conv(7, 256, 256, 4, 2)  # 2×2 output: under MIN_OUTPUT_PIXELS
    assert not conv(32, 32, 32, 1, 1) and not conv(1, 512, 512, 1, 1)  # 1×1 kernels
    assert not conv(28, 1, 64, 4, 1) and not convt(25, 64, 1, 4, 1)  # single channel
    with onednn.every_layer():  # the rule off, then restored
        assert conv(32, 32, 32, 1, 1) and conv(10, 256, 512, 4, 1) and convt(25, 64, 1, 4, 1)
    assert not conv(32, 32, 32, 1, 1) and not conv(10, 256, 512, 4, 1)


def repeated_runs(step, state0, x, repeats: int, steps: int = 2) -> list[np.ndarray]:
    """``repeats`` times ``steps`` train steps from ``state0``: each run's parameters and last
    metrics, flattened into one array (also used by the subprocess script below)."""
    runs = []
    for _ in range(repeats):
        state = state0
        for _ in range(steps):
            state, metrics = step(state, x)
        leaves = jax.tree_util.tree_leaves((state.params, metrics))
        runs.append(np.concatenate([np.ravel(a) for a in leaves]))
    return runs


@needs_onednn
def test_repeated_train_steps_are_bit_identical(monkeypatch):
    _use_onednn(monkeypatch)
    model = build_model("cifar10")
    state0 = create_train_state(model, jax.random.key(0), sample_shape("cifar10"),
                                optax.adam(1e-3))
    x = jnp.asarray(np.random.default_rng(0).random((8, *sample_shape("cifar10"))), jnp.float32)
    runs = repeated_runs(jax.jit(lambda s, x: train_step(s, x, 1.0)), state0, x, 2)
    np.testing.assert_array_equal(runs[0], runs[1])


# Several XLA host devices calling oneDNN at once (each call with its own OpenMP team), as the
# CLI runs seeds on CPU: XLA's own convolution was not reproducible this way (README,
# Reproducibility). Four repeats of two steps of the MNIST model, one seed per device.
_CONCURRENT = """
import jax, jax.numpy as jnp, numpy as np, optax
from tolljax.models import build_model, sample_shape
from tolljax.train import create_train_state, train_step
from tests.test_onednn import repeated_runs
assert jax.device_count() == 2
model = build_model("mnist")
init = lambda key: create_train_state(model, key, sample_shape("mnist"), optax.adam(1e-3))
states = jax.vmap(init)(jax.random.split(jax.random.key(0), 2))
x = jnp.asarray(np.random.default_rng(0).random((2, 8, *sample_shape("mnist"))), jnp.float32)
step = jax.pmap(lambda s, x: train_step(s, x, 1.0))
runs = repeated_runs(step, states, x, 4)
assert "tolljax_onednn" in step.lower(states, x).as_text()
print("differing repeats:", sum(not np.array_equal(runs[0], r) for r in runs[1:]))
"""


@needs_onednn
def test_train_steps_on_concurrent_host_devices_are_bit_identical():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           ops.ENV_VAR: "onednn", ops.CONV_ENV_VAR: "onednn"}
    proc = subprocess.run([sys.executable, "-c", _CONCURRENT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "differing repeats: 0" in proc.stdout, proc.stdout


@needs_onednn
def test_vmap_with_unbatched_operands_and_nested_axes_matches_the_fast_path(monkeypatch):
    """Under vmap an operand batched on no axis (shared data, shared kernel) is read in place
    at every index (vmap_method="expand_dims", stride 0), values and gradients as the fast
    path's; two nested vmap axes, each batching another operand."""
    monkeypatch.setattr(onednn, "MIN_OUTPUT_PIXELS", 1)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((3, 4, 9, 9, 16)), jnp.float32)      # (a, n, ...)
    k = jnp.asarray(0.1 * rng.standard_normal((2, 3, 3, 16, 16)), jnp.float32)  # (b, ...)

    def grads(impl, conv):
        f = lambda x, k: jnp.sum(conv(x, k, 2, impl) ** 2)
        g = jax.value_and_grad(f, argnums=(0, 1))
        # outer axis over kernels only, inner over inputs only
        return jax.jit(jax.vmap(jax.vmap(g, (0, None)), (None, 0)))(x, k)

    for conv in (ops.conv, ops.conv_transpose):
        got, want = grads("onednn", conv), grads("fast", conv)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
    hlo = jax.jit(jax.vmap(lambda k: ops.conv(x[0], k, 2, "onednn"))).lower(k).as_text()
    # x reaches the call once, with a unit vmap axis, not copied per kernel
    assert "(tensor<1x4x9x9x16xf32>, tensor<2x3x3x16x16xf32>) -> tensor<2x4x4x4x16xf32>" in hlo


@needs_onednn
def test_image_scores_in_chunks_match_the_fast_path(monkeypatch):
    """tolljax.train.score on oneDNN: 2.5 chunks of real batches (not per-sample vmaps, which
    would copy the kernels per sample), equal to the fast path's scores."""
    from tolljax.train import score
    model = build_model("mnist")
    state = create_train_state(model, jax.random.key(0), sample_shape("mnist"), optax.adam(1e-3))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    x = jnp.asarray(np.random.default_rng(4).random((20, *sample_shape("mnist"))), jnp.float32)
    scores = {}
    for impl in ("onednn", "fast"):
        monkeypatch.setenv(ops.ENV_VAR, impl)
        monkeypatch.setenv(ops.CONV_ENV_VAR, impl)
        scores[impl] = jax.jit(lambda v, x: score(model.apply, v, x, 10.0, chunk=8))(variables, x)
    np.testing.assert_allclose(scores["onednn"], scores["fast"], rtol=1e-5)


@needs_onednn
def test_non_float32_inputs_take_the_fast_path():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 9, 9, 3)), jnp.bfloat16)
    kernel = jnp.asarray(np.random.default_rng(2).standard_normal((4, 4, 3, 5)), jnp.bfloat16)
    hlo = jax.jit(lambda x, k: ops.conv_onednn(x, k, 2)).lower(x, kernel).as_text()
    assert "tolljax_onednn" not in hlo
    np.testing.assert_array_equal(ops.conv_onednn(x, kernel, 2), ops.conv_fast(x, kernel, 2))
    np.testing.assert_array_equal(ops.conv_transpose_onednn(x, kernel[..., :3], 2),
                                  ops.conv_transpose_fast(x, kernel[..., :3], 2))


def test_without_the_library_onednn_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(onednn, "_dnnl", lambda: None)
    assert not onednn.available()
    x, kernel = jnp.ones((1, 13, 11, 3)), jnp.ones((3, 2, 3, 7))  # a geometry no test plans
    with pytest.raises(TollError, match="pip install onednn-cpu-gomp"):
        ops.conv(x, kernel, 1, impl="onednn")
    with pytest.raises(TollError, match="TOLLJAX_ONEDNN_LIBRARY"):
        ops.ConvTranspose(4, 3, impl="onednn").init(jax.random.key(0), x)


def test_onednn_on_another_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    with pytest.raises(TollError, match="CPU only .backend here: gpu"):
        ops.conv(jnp.ones((1, 12, 11, 3)), jnp.ones((3, 2, 3, 7)), 1, impl="onednn")


def test_an_unloadable_library_path_means_unavailable(monkeypatch, tmp_path):
    bad = tmp_path / "libdnnl.so.3"
    bad.write_text("not a shared library")
    monkeypatch.setenv(onednn.LIBRARY_ENV_VAR, str(bad))
    onednn._dnnl.cache_clear()
    try:
        assert not onednn.available()
    finally:
        monkeypatch.delenv(onednn.LIBRARY_ENV_VAR)
        onednn._dnnl.cache_clear()
