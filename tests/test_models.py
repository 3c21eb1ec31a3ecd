"""Appendix-B autoencoders: parameter counts, shapes, PyTorch-default init, BatchNorm state.

Reference numbers (parameter counts, spatial sizes, PyTorch fan-ins) come from the authors'
PyTorch models; they are hard-coded here so that the tests never import torch.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tolljax.errors import TollError
from tolljax.models import (CifarAutoencoder, ConvBlock, ConvSpec, MnistAutoencoder, build_model,
                            conv_transpose, count_params, describe, init_variables, model_names,
                            sample_shape)

KEY = jax.random.key(0)


def _abstract_variables(model, shape):
    return jax.eval_shape(lambda: init_variables(model, KEY, shape))


@pytest.fixture(scope="module")
def mnist_vars():
    return init_variables(build_model("mnist"), KEY, (28, 28, 1))


@pytest.fixture(scope="module")
def cifar_vars():
    return init_variables(build_model("cifar10"), KEY, (32, 32, 3))


def _batch(shape, n=4, seed=1):
    return jax.random.normal(jax.random.key(seed), (n, *shape), jnp.float32)


# ---------------------------------------------------------------------------------- registry


@pytest.mark.parametrize("dataset,z_dim,shape,expected", [
    ("arrhythmia", 16, (274,), 212_514),
    ("mnist", 128, (28, 28, 1), 6_824_769),
    ("fmnist", 256, (28, 28, 1), 7_087_041),
    ("cifar10", 64, (32, 32, 3), 4_066_816),
    ("cifar100", 64, (32, 32, 3), 4_066_816),
])
def test_parameter_counts_match_authors_pytorch_models(dataset, z_dim, shape, expected):
    model = build_model(dataset)  # the paper's default z
    assert model.z_dim == z_dim and sample_shape(dataset) == shape
    assert count_params(_abstract_variables(model, shape)["params"]) == expected
    assert describe(model, shape).splitlines()[-1].split()[-1] == f"{expected:,}"


def test_all_image_datasets_registered():
    assert {"arrhythmia", "mnist", "fmnist", "cifar10", "cifar100"} <= set(model_names())
    assert isinstance(build_model("fmnist"), MnistAutoencoder)
    assert isinstance(build_model("cifar100"), CifarAutoencoder)


def test_z_dim_override_changes_latent_layers_only():
    # MNIST: the encoder's Linear(1024 -> z) and decoder's Linear(z -> 1024) scale with z.
    base = count_params(_abstract_variables(build_model("mnist", 128), (28, 28, 1))["params"])
    wide = count_params(_abstract_variables(build_model("mnist", 129), (28, 28, 1))["params"])
    assert wide - base == 1024 + 1 + 1024
    # CIFAR: Conv(z,1,1) with bias (512+1 per z) and ConvT(256,4,1) without (256·16 per z).
    base = count_params(_abstract_variables(build_model("cifar10", 64), (32, 32, 3))["params"])
    wide = count_params(_abstract_variables(build_model("cifar10", 65), (32, 32, 3))["params"])
    assert wide - base == 513 + 256 * 16


# ------------------------------------------------------------------------------------ shapes


def _block_shapes(model, shape):
    """Output shape of every ConvBlock, in order, per part (encoder/decoder)."""
    x = jnp.zeros((2, *shape))
    variables = _abstract_variables(model, shape)
    _, state = jax.eval_shape(lambda v: model.apply(
        v, x, train=False, capture_intermediates=lambda m, _: isinstance(m, ConvBlock)), variables)
    inter = state["intermediates"]
    return {part: [inter[part][f"ConvBlock_{i}"]["__call__"][0].shape
                   for i in range(len(inter[part]))] for part in ("encoder", "decoder")}


def test_mnist_spatial_sizes():
    shapes = _block_shapes(build_model("mnist"), (28, 28, 1))
    assert shapes["encoder"] == [(2, 25, 25, 64), (2, 22, 22, 128), (2, 10, 10, 256),
                                 (2, 7, 7, 512), (2, 4, 4, 64)]
    # decoder input is Unflatten(64, 4, 4) of Linear(1024)
    assert shapes["decoder"] == [(2, 7, 7, 512), (2, 10, 10, 256), (2, 22, 22, 128),
                                 (2, 25, 25, 64), (2, 28, 28, 1)]


def test_cifar_spatial_sizes():
    shapes = _block_shapes(build_model("cifar10"), (32, 32, 3))
    assert shapes["encoder"] == [(2, 28, 28, 32), (2, 13, 13, 64), (2, 10, 10, 128),
                                 (2, 4, 4, 256), (2, 1, 1, 512), (2, 1, 1, 512), (2, 1, 1, 64)]
    assert shapes["decoder"] == [(2, 4, 4, 256), (2, 10, 10, 128), (2, 13, 13, 64),
                                 (2, 28, 28, 32), (2, 32, 32, 32), (2, 32, 32, 32), (2, 32, 32, 3)]


@pytest.mark.parametrize("k,s,n", [(4, 1, 4), (4, 2, 10), (4, 2, 3), (5, 1, 28), (1, 1, 5),
                                   (3, 3, 2)])
def test_conv_transpose_output_size_is_pytorchs(k, s, n):
    module = conv_transpose(7, k, s, True, "torch", jnp.float32)
    out = jax.eval_shape(lambda: module.init_with_output(KEY, jnp.zeros((1, n, n, 2)))[0])
    assert out.shape == (1, (n - 1) * s + k, (n - 1) * s + k, 7)


@pytest.mark.parametrize("dataset", ["fmnist", "cifar100"])
def test_forward_shapes_abstract(dataset):
    model, shape = build_model(dataset), sample_shape(dataset)
    variables = _abstract_variables(model, shape)
    for train in (True, False):
        (x_hat, z), _ = jax.eval_shape(lambda v: model.apply(
            v, jnp.zeros((3, *shape)), train=train, mutable=["batch_stats"]), variables)
        assert (x_hat.shape, x_hat.dtype) == ((3, *shape), jnp.float32)
        assert (z.shape, z.dtype) == ((3, model.z_dim), jnp.float32)


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_forward_train_and_eval(dataset, request):
    variables = request.getfixturevalue(f"{dataset[:5]}_vars")
    model, shape = build_model(dataset), sample_shape(dataset)
    x = _batch(shape)
    (x_hat, z), _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    x_hat_eval, z_eval = model.apply(variables, x, train=False)
    for a, dims in [(x_hat, x.shape), (x_hat_eval, x.shape), (z, (4, model.z_dim)),
                    (z_eval, (4, model.z_dim))]:
        assert a.shape == dims and a.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(a)))
    # encode/decode are the two halves of __call__
    z2 = model.apply(variables, x, method="encode")
    np.testing.assert_allclose(z2, z_eval, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(model.apply(variables, z2, method="decode"), x_hat_eval,
                               rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_outputs(cifar_vars):
    model = build_model("cifar10", dtype=jnp.bfloat16)
    abstract = _abstract_variables(model, (32, 32, 3))
    assert {p.dtype for p in jax.tree_util.tree_leaves(abstract)} == {jnp.dtype(jnp.float32)}
    # same parameter tree as float32, so the float32 variables apply directly
    assert jax.tree_util.tree_structure(abstract) == jax.tree_util.tree_structure(cifar_vars)
    x = _batch((32, 32, 3), n=2)
    x_hat, z = model.apply(cifar_vars, x, train=False)
    x_hat32, z32 = build_model("cifar10").apply(cifar_vars, x, train=False)
    assert x_hat.dtype == z.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(x_hat)))
    assert float(jnp.abs(z - z32).max()) < 0.05 * float(jnp.abs(z32).max())


# -------------------------------------------------------------------------------------- init


def _leaves(params):
    return {"/".join(k.key for k in path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def _torch_fan_in(name, leaves):
    """PyTorch's fan_in of the layer owning ``name``: Conv2d in·k·k, ConvTranspose2d out·k·k."""
    layer = name.rsplit("/", 1)[0]
    kernel = leaves[f"{layer}/kernel"]
    if layer.endswith("conv_t"):
        return kernel.shape[0] * kernel.shape[1] * kernel.shape[3]
    if layer.endswith("conv"):
        return kernel.shape[0] * kernel.shape[1] * kernel.shape[2]
    return kernel.shape[0]  # Dense


# fan_ins as computed by torch.nn.init._calculate_fan_in_and_fan_out on the authors' layers
MNIST_TORCH_FAN_INS = {
    "encoder/ConvBlock_0/conv": 16, "encoder/ConvBlock_1/conv": 1024,
    "encoder/ConvBlock_2/conv": 2048, "encoder/ConvBlock_3/conv": 4096,
    "encoder/ConvBlock_4/conv": 8192, "encoder/Dense_0": 1024, "decoder/Dense_0": 128,
    "decoder/ConvBlock_0/conv_t": 8192, "decoder/ConvBlock_1/conv_t": 4096,
    "decoder/ConvBlock_2/conv_t": 2048, "decoder/ConvBlock_3/conv_t": 1024,
    "decoder/ConvBlock_4/conv_t": 16,
}
CIFAR_TORCH_FAN_INS = {
    "encoder/ConvBlock_0/conv": 75, "encoder/ConvBlock_1/conv": 512,
    "encoder/ConvBlock_2/conv": 1024, "encoder/ConvBlock_3/conv": 2048,
    "encoder/ConvBlock_4/conv": 4096, "encoder/ConvBlock_5/conv": 512,
    "encoder/ConvBlock_6/conv": 512, "decoder/ConvBlock_0/conv_t": 4096,
    "decoder/ConvBlock_1/conv_t": 2048, "decoder/ConvBlock_2/conv_t": 1024,
    "decoder/ConvBlock_3/conv_t": 512, "decoder/ConvBlock_4/conv_t": 800,
    "decoder/ConvBlock_5/conv": 32, "decoder/ConvBlock_6/conv": 32,
}


@pytest.mark.parametrize("dataset,table", [("mnist", MNIST_TORCH_FAN_INS),
                                           ("cifar10", CIFAR_TORCH_FAN_INS)])
def test_torch_init_bounds_per_layer(dataset, table, request):
    leaves = _leaves(request.getfixturevalue(f"{dataset[:5]}_vars")["params"])
    checked = set()
    for name, value in leaves.items():
        layer, kind = name.rsplit("/", 1)
        if layer.endswith("/bn"):  # PyTorch BatchNorm: weight 1, bias 0
            np.testing.assert_array_equal(value, 1.0 if kind == "scale" else 0.0)
            continue
        if kind == "output_bias":  # the authors' nn.Parameter(torch.zeros(3, 32, 32))
            assert value.shape == (32, 32, 3) and not value.any()
            continue
        fan_in = _torch_fan_in(name, leaves)
        assert fan_in == table[layer], name
        bound = 1.0 / math.sqrt(fan_in)
        peak = np.abs(value).max()
        assert peak <= bound * (1 + 1e-6), name
        if value.size >= 64:  # enough draws that the maximum is close to the bound
            assert peak >= 0.9 * bound, name
            assert abs(value.mean()) < 0.2 * bound, name  # symmetric around 0
        checked.add(layer)
    assert checked == set(table)


@pytest.mark.parametrize("transpose", [False, True])
def test_flax_init_differs(transpose):
    spec = ConvSpec(256, 4, 1, True, transpose)
    x = jnp.zeros((1, 6, 6, 128))
    leaves = {scheme: _leaves(ConvBlock(spec, 0.1, scheme).init(KEY, x, train=False)["params"])
              for scheme in ("torch", "flax")}
    conv = "conv_t" if transpose else "conv"
    torch_k, flax_k = leaves["torch"][f"{conv}/kernel"], leaves["flax"][f"{conv}/kernel"]
    assert not np.allclose(torch_k, flax_k)
    # LeCun normal (std ≈ 1/√fan_in) is wider than U(±1/√fan_in) (std 1/√(3·fan_in))
    assert flax_k.std() > 1.4 * torch_k.std()
    assert not leaves["flax"][f"{conv}/bias"].any() and leaves["torch"][f"{conv}/bias"].any()


@pytest.mark.parametrize("dataset,slope", [("mnist", 0.2), ("cifar10", 0.1)])
def test_block_settings_reach_every_layer(dataset, slope):
    """init scheme, compute dtype and Appendix-B LReLU slope reach every ConvBlock."""
    model = build_model(dataset, init="flax", dtype=jnp.bfloat16)
    shape, blocks = sample_shape(dataset), []

    def record(mdl, _):
        if isinstance(mdl, ConvBlock):
            blocks.append((mdl.slope, mdl.init_scheme, mdl.dtype))
        return False

    jax.eval_shape(lambda: model.init(KEY, jnp.zeros((1, *shape)), capture_intermediates=record))
    assert len(blocks) == (10 if dataset == "mnist" else 14)
    assert {b[0] for b in blocks} == {slope, None}  # None: the plain last layer of each half
    assert sum(b[0] is None for b in blocks) == 2
    assert {b[1:] for b in blocks} == {("flax", jnp.bfloat16)}


# -------------------------------------------------------------------------------- batch norm


def test_batch_stats_update_in_train_mode_only(cifar_vars):
    model = build_model("cifar10")
    stats = cifar_vars["batch_stats"]
    assert len(stats["encoder"]) == 6 and len(stats["decoder"]) == 6  # BN after all but last
    x = _batch((32, 32, 3)) + 1.0  # non-zero mean so the running mean must move
    _, new = model.apply(cifar_vars, x, train=True, mutable=["batch_stats"])
    moved = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), stats, new["batch_stats"])
    assert all(jax.tree_util.tree_leaves(moved))
    # PyTorch momentum 0.1: running mean = 0.9·0 + 0.1·batch mean (mean starts at 0)
    first = _leaves(new["batch_stats"])["encoder/ConvBlock_0/bn/mean"]
    assert np.abs(first).max() > 0
    _, same = model.apply(cifar_vars, x, train=False, mutable=["batch_stats"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, stats, same["batch_stats"])


def test_mnist_batch_stats_cover_every_bn_layer(mnist_vars):
    stats = _leaves(mnist_vars["batch_stats"])
    assert sorted({k.rsplit("/", 2)[0] for k in stats}) == sorted(
        [f"encoder/ConvBlock_{i}" for i in range(4)] + [f"decoder/ConvBlock_{i}" for i in range(4)])


# ------------------------------------------------------------------------------------ errors


def test_unknown_dataset_or_init_raises_toll_error():
    with pytest.raises(TollError, match="unknown dataset"):
        build_model("svhn")
    with pytest.raises(TollError, match=r"unknown dataset \['mnist'\]"):  # was "unhashable"
        build_model(["mnist"])
    with pytest.raises(TollError, match="unknown init scheme"):
        build_model("mnist", init="xavier")
    with pytest.raises(TollError, match="z-dim"):
        build_model("cifar10", 0)
    with pytest.raises(TollError, match="unknown init scheme"):  # module built directly
        CifarAutoencoder(init_scheme="xavier").init(KEY, jnp.zeros((1, 32, 32, 3)))


def test_wrong_input_shape_raises_toll_error():
    model = build_model("mnist")
    with pytest.raises(TollError, match=r"\(batch, 28, 28, 1\)"):
        jax.eval_shape(lambda: model.init(KEY, jnp.zeros((2, 32, 32, 3))))


@pytest.mark.parametrize("z_dim", [2.7, "abc", "16", True, -3])
def test_z_dim_must_be_a_positive_integer(z_dim):
    # 2.7 used to build z = 2 silently; "abc" raised a bare ValueError from int().
    with pytest.raises(TollError, match=r"--z-dim must be a positive integer, got"):
        build_model("mnist", z_dim)


def test_z_dim_numpy_integer_is_accepted():
    assert build_model("arrhythmia", np.int64(8)).z_dim == 8


@pytest.mark.parametrize("dtype, message", [("float33", "unknown compute dtype 'float33'"),
                                            ("int32", "compute dtype int32 is not floating-point"),
                                            (object(), "unknown compute dtype")])
def test_bad_compute_dtype_is_a_toll_error(dtype, message):
    with pytest.raises(TollError, match=message):
        build_model("mnist", dtype=dtype)


def test_good_compute_dtypes_are_passed_through():
    assert build_model("mnist", dtype="bfloat16").dtype == "bfloat16"
    assert build_model("cifar10", dtype=jnp.bfloat16).dtype is jnp.bfloat16


def test_mlp_wrong_feature_count_raises_toll_error():
    # As the conv models: a clear error, not flax's ScopeParamShapeError at apply time (nor a
    # model silently initialised for 273 features).
    model = build_model("arrhythmia")
    variables = jax.eval_shape(lambda: init_variables(model, KEY, (274,)))
    for shape in ((2, 273), (2, 2, 274), (274,)):
        with pytest.raises(TollError, match=r"MLPAutoencoder expects inputs of shape \(batch, 274\)"):
            jax.eval_shape(lambda: model.apply(variables, jnp.zeros(shape)))
        with pytest.raises(TollError, match=r"\(batch, 274\)"):
            jax.eval_shape(lambda: model.init(KEY, jnp.zeros(shape)))


def test_conv_block_is_conv_then_pytorch_batchnorm_then_leaky_relu():
    """One ConvBlock in train mode against a hand-written reference: its own convolution
    (flax's XLA convolution on its parameters), BatchNorm with batch statistics and eps 1e-5,
    LeakyReLU(0.2); and the running statistics with PyTorch's momentum 0.1 (flax 0.9)."""
    from jax import lax

    block = ConvBlock(ConvSpec(6, 3, 1), slope=0.2)
    x = _batch((9, 9, 4), n=8) * 3.0 + 2.0
    variables = block.init(jax.random.key(0), x, train=True)
    y, new = block.apply(variables, x, train=True, mutable=["batch_stats"])
    kernel, bias = variables["params"]["conv"]["kernel"], variables["params"]["conv"]["bias"]
    conv = np.asarray(lax.conv_general_dilated(x, kernel, (1, 1), "VALID",
                                               dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias,
                      np.float64)
    mean, var = conv.mean(axis=(0, 1, 2)), conv.var(axis=(0, 1, 2))
    normed = (conv - mean) / np.sqrt(var + 1e-5)
    reference = np.where(normed >= 0, normed, 0.2 * normed)
    np.testing.assert_allclose(np.asarray(y), reference, rtol=1e-4, atol=1e-4)
    stats = new["batch_stats"]["bn"]
    np.testing.assert_allclose(stats["mean"], 0.1 * mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * var, rtol=1e-4)


def test_readme_own_autoencoder_example_runs(monkeypatch):
    # The README's "Your own autoencoder" block, with 40 steps instead of 2000.
    import re
    from pathlib import Path

    from tolljax import models

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Your own autoencoder (library API)", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "steps=2000" in code
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))  # keep the registry clean
    scope = {}
    exec(compile(code.replace("steps=2000", "steps=40"), "README.md", "exec"), scope)
    out = scope["out"]
    assert out["test_metric"].shape == (3,) and np.all(np.isfinite(out["test_metric"]))
    assert np.all(out["nonfinite_step"] == -1) and out["val_curve"].shape == (3, 2)
    assert "arrhythmia-linear" in models.model_names()


@pytest.mark.parametrize("args, message", [
    (("", lambda *a: None, (3,), 4), "non-empty string"),
    (("m", "not callable", (3,), 4), "must be callable"),
    (("m", lambda *a: None, 3, 4), "tuple of positive integers"),
    (("m", lambda *a: None, (3, 0), 4), "sample_shape must be a positive integer"),
    (("m", lambda *a: None, (), 4), "is empty"),
    (("m", lambda *a: None, (3,), 2.5), "default_z_dim of model 'm' must be a positive integer"),
])
def test_register_model_checks_its_arguments(args, message):
    from tolljax.models import model_names, register_model

    with pytest.raises(TollError, match=message):
        register_model(*args)
    assert "m" not in model_names()


def test_arrhythmia_mlp_torch_init_and_forward_by_hand():
    """Appendix B.3 by hand in NumPy: Linear-BN-ReLU-Linear-BN-ReLU-Linear per half, every
    Linear ~ U(±1/√fan_in) with PyTorch's fan_in = its input width."""
    model = build_model("arrhythmia")
    variables = init_variables(model, jax.random.key(3), (274,))
    params = jax.tree_util.tree_map(np.asarray, variables["params"])
    fan_ins = {"encoder": (274, 256, 128), "decoder": (16, 128, 256)}
    widths = {"encoder": (256, 128, 16), "decoder": (128, 256, 274)}
    for half in ("encoder", "decoder"):
        for i, (fan_in, width) in enumerate(zip(fan_ins[half], widths[half])):
            dense = params[half][f"Dense_{i}"]
            assert dense["kernel"].shape == (fan_in, width)
            bound = 1 / np.sqrt(fan_in)
            for value in (dense["kernel"], dense["bias"]):
                assert bound * 0.9 <= np.abs(value).max() <= bound * (1 + 1e-6), (half, i)

    def half_by_hand(h, p, train):
        for i in range(3):
            h = h @ p[f"Dense_{i}"]["kernel"] + p[f"Dense_{i}"]["bias"]
            if i < 2:  # BN (fresh: scale 1, bias 0, running mean 0, var 1; eps 1e-5) + ReLU
                mean, var = (h.mean(0), h.var(0)) if train else (0.0, 1.0)
                h = np.maximum((h - mean) / np.sqrt(var + 1e-5), 0.0)
        return h

    x = np.random.default_rng(0).normal(size=(8, 274)).astype(np.float32) * 3 - 1
    for train in (False, True):
        kwargs = {"mutable": ["batch_stats"]} if train else {}
        out = model.apply(variables, jnp.asarray(x), train=train, **kwargs)
        x_hat, z = out[0] if train else out
        z_ref = half_by_hand(x.astype(np.float64), params["encoder"], train)
        np.testing.assert_allclose(z, z_ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(x_hat, half_by_hand(z_ref, params["decoder"], train),
                                   rtol=1e-4, atol=1e-4)
