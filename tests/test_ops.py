"""tolljax.ops: the fast convolutions equal XLA's plain layers (values and gradients).

Every transposed convolution of the Appendix-B decoders (and every regular convolution of the
encoders) is checked, forward and gradients with respect to the input, the kernel and the
bias, against flax's own layer with the same parameters: relative norm error ≤ 1e-5 in
float32. Channel counts are reduced (the formulation does not depend on them, except the
forward branch, which is covered both ways); spatial sizes, kernels and strides are the
models'. Then whole MNIST and CIFAR autoencoders, plain vs fast, and the backend selection.
"""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from tolljax import onednn, ops
from tolljax.errors import TollError
from tolljax.losses import toll_loss
from tolljax.models import build_model, conv_transpose, init_variables, layer_inits, sample_shape

TOL = 1e-5
KEY = jax.random.key(0)
# The oneDNN path runs every check the fast path does, where the library is installed (a
# dependency on Linux x86-64).
ONEDNN = pytest.param("onednn", marks=pytest.mark.skipif(
    not onednn.available(), reason="oneDNN (onednn-cpu-gomp) is not installed"))
CPU_PATHS = ["fast", ONEDNN]


@pytest.fixture(autouse=True)
def _every_layer_on_onednn():
    """The oneDNN path leaves small layers on the GEMM path (tolljax.onednn._worthwhile); the
    layers here are small, so send every one of them to oneDNN to check its numbers."""
    with onednn.every_layer():
        yield


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _random(shape, seed):
    # numpy, not jax.random: threefry programs are slow to compile on CPU (~0.5 s each)
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _value_and_grads(layer, variables, x, dy):
    """y, and the gradients of <y, dy> w.r.t. the input and every parameter."""

    def f(params, x):
        y = layer.apply({"params": params}, x)
        return jnp.vdot(y, dy), y

    (_, y), (gp, gx) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(variables["params"], x)
    return y, gx, gp


def _assert_layers_agree(cases):
    """``cases``: (label, flax reference layer, our layer, input). One compilation for all."""

    @jax.jit
    def init(xs):
        return [(reference.init(KEY, x), candidate.init(KEY, x))
                for (_, reference, candidate, _), x in zip(cases, xs)]

    @jax.jit
    def grads(variables, xs, dys):
        return [(_value_and_grads(reference, v, x, dy), _value_and_grads(candidate, v, x, dy))
                for (_, reference, candidate, _), v, x, dy in zip(cases, variables, xs, dys)]

    xs = [c[3] for c in cases]
    params = init(xs)
    variables = [p[0] for p in params]
    dys = [_random(jax.eval_shape(ref.apply, v, x).shape, 3)
           for (_, ref, _, x), v in zip(cases, variables)]
    results = [(v, ours, *r) for (v, ours), r in zip(params, grads(variables, xs, dys))]

    for (label, *_), (variables, ours, ref, got) in zip(cases, results):
        # parameters interchange: same names, shapes and, for the same key, the same values
        assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(variables)
        for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(variables)):
            np.testing.assert_array_equal(a, b, err_msg=label)
        (y0, gx0, gp0), (y1, gx1, gp1) = ref, got
        assert y1.shape == y0.shape, label
        assert rel_err(y1, y0) <= TOL, f"{label}: output"
        assert rel_err(gx1, gx0) <= TOL, f"{label}: input gradient"
        assert set(gp1) == set(gp0), label
        for name in gp0:
            assert rel_err(gp1[name], gp0[name]) <= TOL, f"{label}: {name} gradient"


# (input size, in channels, out channels, kernel, stride): every decoder layer's geometry
# (MNIST 4→7→10→22→25→28, CIFAR 1→4→10→13→28→32), channels reduced but both forward
# branches (GEMM + overlap-add, phase decomposition) exercised; then k < s edge cases.
TRANSPOSED = [
    (4, 16, 32, 4, 1), (7, 32, 16, 4, 1), (10, 16, 8, 4, 2), (22, 8, 8, 4, 1), (25, 8, 1, 4, 1),
    (1, 8, 16, 4, 1), (4, 16, 8, 4, 2), (10, 8, 8, 4, 1), (13, 8, 8, 4, 2), (28, 8, 8, 5, 1),
    (5, 3, 4, 1, 2), (4, 2, 3, 3, 3), (3, 4, 9, 2, 3),
]
# Every encoder layer's geometry: MNIST 28→25→22→10→7→4, CIFAR 32→28→13→10→4→1 and 1×1.
REGULAR = [
    (28, 1, 16, 4, 1), (25, 8, 16, 4, 1), (22, 16, 8, 4, 2), (10, 16, 8, 4, 1), (7, 8, 8, 4, 1),
    (32, 3, 8, 5, 1), (28, 8, 8, 4, 2), (13, 8, 16, 4, 1), (10, 8, 16, 4, 2), (4, 16, 8, 4, 1),
    (1, 16, 8, 1, 1), (32, 8, 3, 1, 1), (9, 4, 5, 3, 2),
]


def _cases(geometries, make, fan_in):
    cases = []
    for n, cin, cout, k, s in geometries:
        kw = dict(strides=(s, s), padding="VALID", **layer_inits("torch", fan_in(cin, cout, k)))
        cases.append((f"{n}x{n}x{cin}->{cout} k{k} s{s}", *make(cout, k, kw),
                      _random((2, n, n, cin), n + cin)))
    return cases


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("shape,kernel_hw,strides", [((2, 5, 6, 3), (2, 3), (1, 1)),
                                                     ((3, 9, 8, 2), (4, 4), (2, 3))])
def test_patches_match_a_loop_over_output_pixels(shape, kernel_hw, strides, flip):
    u = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    (kh, kw), (sh, sw) = kernel_hw, strides
    ho, wo = (shape[1] - kh) // sh + 1, (shape[2] - kw) // sw + 1
    step = -1 if flip else 1
    want = np.stack([u[n, i * sh:i * sh + kh, j * sw:j * sw + kw, :][::step, ::step].reshape(-1)
                     for n in range(shape[0]) for i in range(ho) for j in range(wo)])
    got = np.asarray(ops._patches(jnp.asarray(u), kernel_hw, strides, (ho, wo), flip=flip))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("shape,strides", [((2, 3, 4, 4, 4, 3), (1, 1)),
                                           ((2, 5, 3, 5, 2, 2), (1, 1)),
                                           ((1, 3, 4, 4, 3, 2), (2, 3))])
def test_overlap_add_matches_a_loop_over_taps(shape, strides, flip):
    # both branches: stride 1 (row sums added in place) and strided (padded taps)
    z = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    n, h, w, kh, kw, c = shape
    (sh, sw) = strides
    want = np.zeros((n, (h - 1) * sh + kh, (w - 1) * sw + kw, c), np.float32)
    for i in range(h):
        for j in range(w):
            for a in range(kh):
                for b in range(kw):
                    src = z[:, i, j, kh - 1 - a, kw - 1 - b] if flip else z[:, i, j, a, b]
                    want[:, i * sh + a, j * sw + b] += src
    got = np.asarray(ops._overlap_add(jnp.asarray(z), strides, flip=flip))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", [*CPU_PATHS, "phases"])
def test_conv_transpose_paths_match_flax_on_every_decoder_geometry(impl):
    _assert_layers_agree(_cases(TRANSPOSED, lambda c, k, kw: (
        nn.ConvTranspose(c, (k, k), **kw), ops.ConvTranspose(c, (k, k), impl=impl, **kw)),
        lambda cin, cout, k: cout * k * k))


def test_both_forward_branches_are_covered():
    branches = {ops._ct_forward_uses_gemm((2, n, n, cin), (k, k, cin, cout), (s, s))
                for n, cin, cout, k, s in TRANSPOSED}
    assert branches == {True, False}


@pytest.mark.parametrize("n,k,s", [(7, 4, 2), (4, 5, 2), (5, 3, 3), (3, 2, 3), (4, 1, 2), (6, 5, 1),
                                   (5, 4, (2, 3))])
def test_phase_decomposition_matches_lax_conv_transpose(n, k, s):
    # every residue of k mod s, k < s (phases no tap reaches), stride 1 and unequal strides
    x = _random((2, n, n + 1, 3), n)
    kernel = _random((k, k, 3, 4), k + 10)
    strides = ops._pair(s)
    want = lax.conv_transpose(x, kernel, strides, "VALID", dimension_numbers=ops._DN)
    got = ops._from_full_transposed(ops._ct_forward_phases(x, kernel, strides), (k, k), strides, "VALID")
    assert got.shape == want.shape
    assert rel_err(got, want) <= TOL


def test_phases_match_flax_on_every_padding_with_no_dilated_convolution():
    """The phase path (XLA convolutions, for GPUs): flax's values and gradients for VALID,
    SAME and explicit pads, and no base-dilated (``lhs_dilate``) convolution in the
    differentiated program of a strided layer, where flax's own layer has one."""
    cases = []
    for shape, k, s in PADDING_GEOMETRIES:
        x = _random(shape, 1)
        for padding in ("SAME", "VALID", [(1, k - 1), (0, 1)]):
            cases.append((f"{shape} k{k} s{s} {padding}",
                          nn.ConvTranspose(4, (k, k), strides=(s, s), padding=padding),
                          ops.ConvTranspose(4, k, s, padding=padding, impl="phases"), x))
    _assert_layers_agree(cases)
    x = _random((2, 10, 10, 8), 2)  # MNIST's strided decoder layer, channels reduced

    def program(impl):
        layer = ops.ConvTranspose(4, 4, 2, padding="VALID", impl=impl)
        variables = layer.init(KEY, x)
        loss = lambda v, x: jnp.sum(layer.apply(v, x) ** 2)  # noqa: E731
        return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(variables, x).as_text()

    def dilations(hlo):
        return re.findall(r"lhs_dilate = \[(\d+), (\d+)\]", hlo)

    assert dilations(program("plain")).count(("2", "2")) == 2  # forward and kernel gradient
    assert set(dilations(program("phases"))) == {("1", "1")}


def test_phases_under_vmap_over_kernels_and_in_bfloat16():
    """Seeds vmapped (kernels batched, as on CPUs and TPUs) give each seed's own gradients;
    in bfloat16 the phase path stays within bfloat16 round-off of the plain layer."""
    x = _random((2, 10, 10, 8), 1)
    kernels = _random((3, 4, 4, 8, 6), 2)

    def loss(kernel, impl, dtype=jnp.float32):
        y = ops.conv_transpose(x.astype(dtype), kernel.astype(dtype), 2, impl=impl)
        return jnp.sum(jnp.sin(y.astype(jnp.float32)))

    grads = jax.vmap(jax.grad(lambda k: loss(k, "phases")))(kernels)
    for i in range(3):
        assert rel_err(grads[i], jax.grad(lambda k: loss(k, "plain"))(kernels[i])) <= TOL
    y16 = ops.conv_transpose(x.astype(jnp.bfloat16), kernels[0].astype(jnp.bfloat16), 2,
                             impl="phases")
    assert y16.dtype == jnp.bfloat16
    assert rel_err(y16, ops.conv_transpose_plain(x, kernels[0], 2)) <= 1e-2
    g16 = jax.grad(lambda k: loss(k, "phases", jnp.bfloat16))(kernels[0])
    assert rel_err(g16, jax.grad(lambda k: loss(k, "plain"))(kernels[0])) <= 3e-2


@pytest.mark.parametrize("impl", CPU_PATHS)
@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_cpu_paths_use_no_xla_convolution(name, impl, monkeypatch):
    # XLA:CPU's convolution is not run-to-run deterministic with several host devices (ops
    # module doc); the CPU paths express every layer, forward and backward, as GEMMs or
    # oneDNN calls.
    monkeypatch.setenv(ops.ENV_VAR, impl)
    monkeypatch.setenv(ops.CONV_ENV_VAR, impl)
    model = build_model(name)
    shape = sample_shape(name)
    variables = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), shape))
    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)

    def loss(params, batch_stats, x):
        (x_hat, z), _ = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                    train=True, mutable=["batch_stats"])
        return jnp.sum(x_hat) + jnp.sum(z)

    hlo = jax.jit(jax.grad(loss)).lower(variables["params"], variables["batch_stats"],
                                        x).as_text()
    assert ("stablehlo.dot_general" if impl == "fast" else "tolljax_onednn") in hlo
    assert "stablehlo.convolution" not in hlo


def test_conv_transpose_matmul_alternative_and_defaults_match_flax():
    cases = _cases([(7, 32, 16, 4, 1), (10, 16, 8, 4, 2), (4, 2, 3, 3, 3)],
                   lambda c, k, kw: (nn.ConvTranspose(c, (k, k), **kw),
                                     ops.ConvTranspose(c, (k, k), impl="matmul", **kw)),
                   lambda cin, cout, k: cout * k * k)
    x = _random((3, 7, 7, 12), 1)
    for use_bias in (True, False):  # flax's default initialisers, with and without bias
        cases.append((f"default init, bias {use_bias}",
                      nn.ConvTranspose(10, (4, 4), padding="VALID", use_bias=use_bias),
                      ops.ConvTranspose(10, 4, padding="VALID", use_bias=use_bias, impl="fast"), x))
    _assert_layers_agree(cases)


@pytest.mark.parametrize("impl", CPU_PATHS)
def test_conv_fast_matches_flax_on_every_encoder_geometry(impl):
    _assert_layers_agree(_cases(REGULAR, lambda c, k, kw: (
        nn.Conv(c, (k, k), **kw), ops.Conv(c, (k, k), impl=impl, **kw)),
        lambda cin, cout, k: cin * k * k))


# Stride-1 convolutions with fewer output than input channels, computed as the centre crop
# of a transposed convolution: the CANCE budget AE's decoder layers (3×3 SAME 28×28 32→1 and
# 14×14 64→32, channels reduced), VALID and asymmetric explicit pads.
CROPPED = [((2, 28, 28, 8), 1, 3, "SAME"), ((2, 14, 14, 16), 8, 3, "SAME"),
           ((2, 12, 12, 8), 1, 3, "VALID"), ((2, 14, 15, 6), 2, 4, [(2, 1), (1, 2)])]


def test_stride1_convs_with_few_output_channels_take_the_transposed_route_and_match_flax(
        monkeypatch):
    def no_im2col(*args):
        raise AssertionError("im2col route taken")

    monkeypatch.setattr(ops, "_conv_fast", no_im2col)
    cases = [(f"{shape} ->{cout} k{k} {padding}", nn.Conv(cout, (k, k), padding=padding),
              ops.Conv(cout, k, padding=padding, impl="fast"), _random(shape, 4))
             for shape, cout, k, padding in CROPPED]
    _assert_layers_agree(cases)


def test_route_choice_for_stride1_convolutions():
    """Taken where measured faster (see ``_conv_uses_transposed``), not where it multiplies
    much more (small outputs) or materialises more (more output than input channels)."""
    uses = ops._conv_uses_transposed
    assert uses((128, 30, 30, 32), (3, 3, 32, 1), (1, 1))  # 28×28 SAME 32→1
    assert uses((128, 16, 16, 64), (3, 3, 64, 32), (1, 1))  # 14×14 SAME 64→32
    assert not uses((64, 7, 7, 512), (4, 4, 512, 64), (1, 1))  # 7→4: 3× the FLOPs
    assert not uses((64, 25, 25, 64), (4, 4, 64, 128), (1, 1))  # more output channels
    assert not uses((128, 30, 30, 32), (3, 3, 32, 1), (2, 2))  # strided
    assert not uses((64, 32, 32, 32), (1, 1, 32, 3), (1, 1))  # 1×1: one GEMM either way


@pytest.mark.parametrize("which", ["transpose", "regular"])
def test_batch_chunking_gives_the_same_numbers(which, monkeypatch):
    x = _random((7, 10, 10, 6), 5)
    if which == "transpose":  # < 8 output channels: the forward is a GEMM too
        ref, fast, kernel = ops.conv_transpose_plain, ops.conv_transpose_fast, _random((4, 4, 6, 5), 6)
        per_sample = 10 * 10 * 16 * 5 * 4  # bytes of x·W and of dy's patches per sample
    else:
        ref, fast, kernel = ops.conv_plain, ops.conv_fast, _random((4, 4, 6, 9), 6)
        per_sample = 4 * 4 * 16 * 6 * 4  # bytes of x's patches per sample
    y0, vjp0 = jax.vjp(lambda x, k: ref(x, k, 2), x, kernel)
    dy = _random(y0.shape, 7)
    monkeypatch.setattr(ops, "CHUNK_BYTES", 2 * per_sample)  # chunks of 2, the last padded
    assert ops._batch_chunks(7, per_sample) == (4, 2)
    y1, vjp1 = jax.vjp(lambda x, k: fast(x, k, 2), x, kernel)
    assert rel_err(y1, y0) <= TOL
    for g1, g0 in zip(vjp1(dy), vjp0(dy)):
        assert rel_err(g1, g0) <= TOL


@pytest.mark.parametrize("impl", CPU_PATHS)
def test_fast_path_under_vmap_over_parameters(impl):
    """The protocol vmaps seeds: batched kernels (and, for the regular convolution, batched
    inputs too) must give each seed's own values and gradients."""
    x = _random((2, 7, 7, 8), 1)
    xs = _random((3, 2, 7, 7, 8), 3)
    kernels = _random((3, 4, 4, 8, 16), 2)

    def loss(kernel, impl):
        return jnp.sum(jnp.sin(ops.conv_transpose(x, kernel, 1, impl=impl)))

    def conv_loss(x, kernel, impl):
        return jnp.sum(jnp.sin(ops.conv(x, kernel, 2, impl=impl)))

    g_fast = jax.vmap(jax.grad(lambda k: loss(k, impl)))(kernels)
    gx, gk = jax.vmap(jax.grad(lambda x, k: conv_loss(x, k, impl), (0, 1)))(xs, kernels)
    for i in range(3):
        assert rel_err(g_fast[i], jax.grad(lambda k: loss(k, "plain"))(kernels[i])) <= TOL
        gx0, gk0 = jax.grad(lambda x, k: conv_loss(x, k, "plain"), (0, 1))(xs[i], kernels[i])
        assert rel_err(gx[i], gx0) <= TOL and rel_err(gk[i], gk0) <= TOL


# ---------------------------------------------------------------------------- whole models


def _numpy_variables(model, shape, seed=0):
    """Variables of ``model`` drawn with numpy at PyTorch-like scales (BatchNorm: 1 and 0).

    Cheaper than ``init_variables``, whose XLA:CPU random-number program takes seconds to
    compile for the MNIST model; the comparison does not depend on the exact initial values.
    """
    rng = np.random.default_rng(seed)
    abstract = jax.eval_shape(lambda: init_variables(model, KEY, shape))

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if name.endswith("['scale']") or name.endswith("['var']"):
            return jnp.ones(leaf.shape, leaf.dtype)
        if "['bn']" in name or name.endswith("['mean']"):
            return jnp.zeros(leaf.shape, leaf.dtype)
        bound = 1.0 / np.sqrt(max(1, int(np.prod(leaf.shape[:-1]))))
        return jnp.asarray(rng.uniform(-bound, bound, leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


@pytest.mark.parametrize("impl", [*CPU_PATHS, "phases"])
@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_autoencoders_same_outputs_and_gradients(dataset, impl, monkeypatch):
    model, shape = build_model(dataset), sample_shape(dataset)
    variables = _numpy_variables(model, shape)
    # Batch 8, not 2: with 2 samples the encoder's last BatchNorm (1×1 spatial) maps every
    # channel to ±1 and its backward pass cancels almost exactly, amplifying float32 round-off
    # of either implementation to ~1e-3 of the encoder gradients.
    x = _random((8, *shape), 11)

    def run(params):
        def loss(p):
            (x_hat, z), upd = model.apply({"params": p, "batch_stats": variables["batch_stats"]},
                                          x, train=True, mutable=["batch_stats"])
            return toll_loss(x, x_hat, z, 10.0), (x_hat, z, upd["batch_stats"])

        return jax.value_and_grad(loss, has_aux=True)(params)

    results = {}
    for name in ("plain", impl):
        monkeypatch.setenv(ops.ENV_VAR, name)
        monkeypatch.setenv(ops.CONV_ENV_VAR, name if name in ops.CONV_IMPLS else "plain")
        results[name] = jax.jit(lambda p: run(p))(variables["params"])  # fresh trace per impl
    (l0, (xh0, z0, bs0)), g0 = results["plain"]
    (l1, (xh1, z1, bs1)), g1 = results[impl]
    assert rel_err(l1, l0) <= TOL and rel_err(xh1, xh0) <= TOL and rel_err(z1, z0) <= TOL
    for a, b in zip(jax.tree_util.tree_leaves(bs1), jax.tree_util.tree_leaves(bs0)):
        assert rel_err(a, b) <= TOL
    leaves0, leaves1 = jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)
    assert rel_err(np.concatenate([np.ravel(g) for g in leaves1]),
                   np.concatenate([np.ravel(g) for g in leaves0])) <= TOL
    scale = np.sqrt(sum(float(jnp.sum(jnp.square(g))) for g in leaves0))
    for path, g in jax.tree_util.tree_flatten_with_path(g1)[0]:
        ref = dict(jax.tree_util.tree_flatten_with_path(g0)[0])[path]
        # A conv bias followed by train-mode BatchNorm has an exactly zero gradient: both
        # sides are round-off there (~1e-7 of the whole gradient), so compare to the total.
        floor = 1e-5 * scale
        err = float(jnp.linalg.norm(g - ref))
        assert err <= TOL * float(jnp.linalg.norm(ref)) or float(jnp.linalg.norm(ref)) < floor \
            and err < floor, jax.tree_util.keystr(path)


def test_models_build_transposed_convs_with_ops_layer():
    layer = conv_transpose(8, 4, 2, True, "torch", jnp.float32, name="conv_t")
    assert isinstance(layer, ops.ConvTranspose) and layer.impl == "auto"
    assert layer.padding == "VALID" and tuple(layer.strides) == (2, 2)


@pytest.mark.parametrize("dataset", ["mnist", "cifar10", "fmnist"])
def test_models_build_every_convolution_with_ops_layers(dataset):
    seen = set()

    def record(next_fun, args, kwargs, context):
        seen.add(type(context.module))
        return next_fun(*args, **kwargs)

    model = build_model(dataset)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, *sample_shape(dataset))),
                                          train=False))
    assert {ops.Conv, ops.ConvTranspose} <= seen
    assert not seen & {nn.Conv, nn.ConvTranspose}


# ------------------------------------------------------------------------- backend selection


def test_selection_by_backend(monkeypatch):
    monkeypatch.delenv(ops.ENV_VAR, raising=False)
    monkeypatch.delenv(ops.CONV_ENV_VAR, raising=False)
    available = onednn.available
    for installed, cpu_impl in ((True, "onednn"), (False, "fast")):
        monkeypatch.setattr(onednn, "available", lambda: installed)
        assert ops.resolve_impl("auto", backend="cpu") == cpu_impl
        assert ops.resolve_conv_impl("auto", backend="cpu") == cpu_impl
        assert ops.resolve_impl("auto", backend="gpu") == "plain"
        assert ops.resolve_impl("auto", backend="tpu") == "plain"
        assert ops.resolve_conv_impl("auto", backend="cuda") == "plain"
    monkeypatch.setattr(onednn, "available", available)
    on_cpu = "onednn" if available() else "fast"
    assert ops.resolve_impl() == (on_cpu if jax.default_backend() == "cpu" else "plain")
    for impl in ("plain", "fast", "matmul", "phases"):  # explicit choices ignore the backend
        assert ops.resolve_impl(impl, backend="gpu") == impl


def test_environment_override(monkeypatch):
    monkeypatch.setenv(ops.ENV_VAR, "plain")
    assert ops.resolve_impl("auto", backend="cpu") == "plain"
    assert ops.resolve_impl("fast", backend="cpu") == "fast"  # the module field wins
    monkeypatch.setenv(ops.ENV_VAR, " FAST ")
    assert ops.resolve_impl("auto", backend="gpu") == "fast"
    monkeypatch.setenv(ops.ENV_VAR, "auto")
    assert ops.resolve_impl("auto", backend="gpu") == "plain"
    monkeypatch.setenv(ops.CONV_ENV_VAR, "plain")
    assert ops.resolve_conv_impl("auto", backend="cpu") == "plain"
    monkeypatch.setenv(ops.ENV_VAR, "cudnn")
    with pytest.raises(TollError, match="TOLLJAX_CONV_TRANSPOSE"):
        ops.resolve_impl("auto")
    monkeypatch.setenv(ops.CONV_ENV_VAR, "matmul")  # no matmul variant for regular convs
    with pytest.raises(TollError, match="TOLLJAX_CONV"):
        ops.resolve_conv_impl("auto")
    with pytest.raises(TollError, match="unknown convolution implementation"):
        ops.resolve_impl("fastest")


def test_module_uses_the_selected_implementation(monkeypatch):
    calls = []
    for name in ("plain", "fast", "matmul", "onednn"):
        fn = ops.IMPL_FUNCTIONS[name]
        monkeypatch.setitem(ops.IMPL_FUNCTIONS, name,
                            lambda *a, _n=name, _f=fn: calls.append(_n) or _f(*a))
    x = jnp.ones((1, 4, 4, 3))
    layer = ops.ConvTranspose(5, 4)
    variables = layer.init(KEY, x)
    calls.clear()
    monkeypatch.setenv(ops.ENV_VAR, "matmul")
    layer.apply(variables, x)
    ops.ConvTranspose(5, 4, impl="fast").apply(variables, x)
    monkeypatch.delenv(ops.ENV_VAR)
    layer.apply(variables, x)
    assert calls == ["matmul", "fast", ops.resolve_impl()]
    on_this_backend = ("onednn", "fast") if jax.default_backend() == "cpu" else ("plain",)
    assert ops.resolve_impl() in on_this_backend


PADDING_GEOMETRIES = (((2, 5, 6, 3), 3, 2), ((2, 7, 7, 3), 4, 1), ((2, 4, 5, 2), 2, 3))


def _layer_pair(transpose: bool, k: int, s: int, padding, impl: str):
    if transpose:
        return (nn.ConvTranspose(4, (k, k), strides=(s, s), padding=padding),
                ops.ConvTranspose(4, k, s, padding=padding, impl=impl))
    return (nn.Conv(4, (k, k), strides=(s, s), padding=padding),
            ops.Conv(4, k, s, padding=padding, impl="fast" if impl == "matmul" else impl))


@pytest.mark.parametrize("impl", ["fast", "matmul", ONEDNN])
def test_every_padding_matches_flax_without_xla_convolutions(impl):
    """SAME and explicit (lo, hi) pairs (asymmetric, zero) on the GEMM paths: flax's values
    and gradients, and no XLA convolution in the differentiated program."""
    cases = []
    for shape, k, s in PADDING_GEOMETRIES:
        x = _random(shape, 1)
        for padding in ("SAME", "VALID", [(1, k - 1), (0, 1)]):
            for transpose in ((True,) if impl == "matmul" else (True, False)):
                ref, ours = _layer_pair(transpose, k, s, padding, impl)
                cases.append((f"{type(ref).__name__} {shape} k{k} s{s} {padding}", ref, ours, x))
    _assert_layers_agree(cases)
    x = _random((2, 5, 6, 3), 1)
    for layer in (ops.ConvTranspose(4, 3, 2, padding="SAME", impl=impl),
                  ops.Conv(4, 3, 2, padding=[(1, 2), (0, 1)],
                           impl="fast" if impl == "matmul" else impl)):
        variables = layer.init(KEY, x)
        hlo = jax.jit(jax.grad(lambda v: jnp.sum(layer.apply(v, x) ** 2))).lower(variables).as_text()
        assert "convolution" not in hlo, layer


@pytest.mark.parametrize("impl", CPU_PATHS)
@pytest.mark.parametrize("transpose", [True, False])
def test_paddings_beyond_the_kernel_and_negative_match_exact_linear_references(transpose, impl):
    """Pads larger than k − 1 or negative (crops). Reference for the gradients: the layer is
    linear in its input and in its kernel, so the gradient of <y, dy> is <y(basis), dy> over
    basis inputs / kernels, from flax's *forward* alone. (XLA:CPU's own gradient of a plain
    transposed convolution with such pads, un-jitted, returned values that changed from run to
    run, up to 1e35, with jax 0.10.2.)"""
    for shape, k, s in PADDING_GEOMETRIES:
        x = _random(shape, 1)
        for padding in ([(k + 1, 0), (2, k)], [(-1, 1), (1, -1)]):
            ref, ours = _layer_pair(transpose, k, s, padding, impl)
            variables = ref.init(KEY, x)
            y, gx, gp = _value_and_grads(ours, variables, x, dy := _random(
                jax.eval_shape(ref.apply, variables, x).shape, 3))
            assert rel_err(y, ref.apply(variables, x)) <= TOL, padding
            n_in = int(np.prod(shape[1:]))
            basis = jnp.eye(n_in, dtype=jnp.float32).reshape(n_in, *shape[1:])
            no_bias = {"params": {**variables["params"],
                                  "bias": jnp.zeros_like(variables["params"]["bias"])}}
            y_basis = ref.apply(no_bias, basis)  # (n_in, Ho, Wo, out): T e_i
            gx_ref = jnp.einsum("ihwo,bhwo->bi", y_basis, dy).reshape(shape)
            assert rel_err(gx, gx_ref) <= TOL, (padding, "input gradient")
            kernel = variables["params"]["kernel"]
            n_k = kernel.size
            y_kernels = jax.vmap(lambda kk: ref.apply(
                {"params": {"kernel": kk.reshape(kernel.shape), "bias": no_bias["params"]["bias"]}},
                x))(jnp.eye(n_k, dtype=jnp.float32))
            gk_ref = jnp.einsum("jbhwo,bhwo->j", y_kernels, dy).reshape(kernel.shape)
            assert rel_err(gp["kernel"], gk_ref) <= TOL, (padding, "kernel gradient")
            assert rel_err(gp["bias"], dy.sum((0, 1, 2))) <= TOL, (padding, "bias gradient")


def test_unsupported_padding_is_reported():
    x = _random((2, 5, 5, 3), 1)
    with pytest.raises(TollError, match="CIRCULAR"):
        ops.ConvTranspose(4, 3, padding="CIRCULAR", impl="fast").init(KEY, x)
    with pytest.raises(TollError, match="two .lo, hi. padding pairs"):
        ops.conv_fast(x, jnp.ones((3, 3, 3, 4)), 1, [(1, 1)])


def test_bad_shapes_are_reported():
    with pytest.raises(TollError, match="NHWC"):
        ops.conv_transpose_fast(jnp.ones((4, 4, 3)), jnp.ones((2, 2, 3, 5)))
    with pytest.raises(TollError, match="kernel"):
        ops.conv_fast(jnp.ones((1, 4, 4, 3)), jnp.ones((2, 2, 4, 5)))


@pytest.mark.parametrize("flax_layer, ops_layer", [(nn.Conv, ops.Conv),
                                                   (nn.ConvTranspose, ops.ConvTranspose)])
def test_modules_default_to_flax_padding(flax_layer, ops_layer):
    # The modules defaulted to VALID where flax defaults to SAME: (2, 6, 6, 4) against
    # (2, 8, 8, 4) for a 3×3 Conv on 8×8 (ConvTranspose: 10×10 against 8×8).
    x = _random((2, 8, 8, 3), 0)
    params = flax_layer(4, (3, 3)).init(jax.random.key(0), x)
    want = flax_layer(4, (3, 3)).apply(params, x)
    for impl in ("plain", "fast"):
        got = ops_layer(4, (3, 3), impl=impl).apply(params, x)
        assert got.shape == want.shape == (2, 8, 8, 4)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["plain", "fast", ONEDNN])
def test_bad_strides_and_a_kernel_larger_than_the_input_are_toll_errors(impl):
    x, k3 = _random((2, 8, 8, 3), 0), _random((3, 3, 3, 5), 1)
    for stride in (0, -1, 1.5, (1,), (2, 0)):  # were: empty output, ZeroDivisionError, truncation
        with pytest.raises(TollError, match="positive int or a pair of them"):
            ops.conv(x, k3, stride, impl=impl)
    # fast/onednn raised a reshape TypeError (lax returns an empty array)
    with pytest.raises(TollError, match="a 6×6 kernel does not fit the 4×4 \\(padded\\) input"):
        ops.conv(_random((2, 4, 4, 3), 2), _random((6, 6, 3, 5), 3), impl=impl)
    with pytest.raises(TollError, match="positive int or a pair of them"):
        ops.conv_transpose(x, _random((3, 3, 3, 5), 4), 0, impl=impl)
