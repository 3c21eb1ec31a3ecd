"""Autoencoders of the paper's Appendix B as ``flax.linen`` modules, and a model registry.

Every model maps ``x -> (x_hat, z)`` and takes ``train`` to switch BatchNorm between batch
statistics (training) and running averages (evaluation and scoring).

Initialisation: ``init="torch"`` (default) reproduces PyTorch's default initialisation, which
the authors' numbers were produced with: every weight and bias ~ U(−1/√fan_in, 1/√fan_in).
``init="flax"`` uses flax's defaults (LeCun-normal kernels, zero biases).

BatchNorm follows PyTorch's defaults: running-average momentum 0.1 (flax ``momentum=0.9``)
and eps 1e-5. One difference is kept on purpose: PyTorch updates the running variance with
the unbiased batch variance (factor n/(n−1)), flax with the biased one; at the paper's batch
sizes (≥ 50) this changes the running variance by ≤ 2 %.
"""
from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable, ClassVar, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tolljax import prng  # noqa: F401  (CPU threefry lowering: same bits, faster compile)
from tolljax.errors import TollError, positive_int
from tolljax.ops import Conv, ConvTranspose

Dtype = Any
INIT_SCHEMES = ("torch", "flax")


def torch_uniform(fan_in: int) -> Callable:
    """PyTorch's default weight/bias initialiser for a layer with ``fan_in`` inputs.

    ``nn.Linear``/``nn.Conv*`` use ``kaiming_uniform_(a=√5)`` for weights, which is
    U(−1/√fan_in, 1/√fan_in), and the same bound for biases.
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        # Drawn flat and reshaped: the same values as drawing ``shape`` directly (threefry is
        # counter-based over the flat index), but XLA:CPU compiles the 1-D draw several times
        # faster for 4-D conv kernels (MNIST model init: ~13 s -> ~5 s on 2 cores).
        return jax.random.uniform(key, (math.prod(shape),), dtype, -bound, bound).reshape(shape)

    return init


def layer_inits(scheme: str, fan_in: int) -> dict[str, Callable]:
    """``kernel_init``/``bias_init`` keyword arguments for a layer under ``scheme``."""
    if scheme == "torch":
        return {"kernel_init": torch_uniform(fan_in), "bias_init": torch_uniform(fan_in)}
    if scheme == "flax":
        return {}
    raise TollError(f"unknown init scheme {scheme!r}; choose one of {INIT_SCHEMES}")


def batch_norm(train: bool, dtype: Dtype, name: str | None = None) -> nn.BatchNorm:
    """BatchNorm with PyTorch's defaults (momentum 0.1 → flax 0.9, eps 1e-5)."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        dtype=dtype, name=name)


class MLP(nn.Module):
    """Linear layers with BatchNorm + ReLU between them (none after the last layer)."""

    in_features: int
    widths: Sequence[int]
    init_scheme: str = "torch"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        fan_in = self.in_features
        for i, width in enumerate(self.widths):
            x = nn.Dense(width, dtype=self.dtype, **layer_inits(self.init_scheme, fan_in))(x)
            if i < len(self.widths) - 1:
                x = nn.relu(batch_norm(train, self.dtype)(x))
            fan_in = width
        return x


class Autoencoder(nn.Module):
    """The interface every tolljax autoencoder has: ``x -> (x_hat, z)``, ``encode``, ``decode``.

    Subclasses build ``self.encoder`` and ``self.decoder`` (called as ``f(x, train)``) in
    ``setup`` and may validate inputs in :meth:`check_input`. Outputs are cast to float32
    whatever the compute dtype, so losses and scores are always float32.
    """

    def check_input(self, x: jnp.ndarray) -> None:
        """Raise :class:`TollError` for inputs of the wrong shape (default: accept)."""

    def encode(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        self.check_input(x)
        return self.encoder(x, train)

    def decode(self, z: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        return self.decoder(z, train)

    def __call__(self, x: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, jnp.ndarray]:
        z = self.encode(x, train)
        return self.decode(z, train).astype(jnp.float32), z.astype(jnp.float32)


class MLPAutoencoder(Autoencoder):
    """Arrhythmia autoencoder (Appendix B.3).

    Encoder: Linear(256)-BN-ReLU-Linear(128)-BN-ReLU-Linear(z).
    Decoder: Linear(128)-BN-ReLU-Linear(256)-BN-ReLU-Linear(features).
    With 274 features and z = 16: 212,514 parameters, as the authors' PyTorch model.
    """

    features: int = 274
    z_dim: int = 16
    hidden: Sequence[int] = (256, 128)
    init_scheme: str = "torch"
    dtype: Dtype = jnp.float32

    def check_input(self, x: jnp.ndarray) -> None:
        # Without this, applying weights made for another feature count fails inside flax
        # (ScopeParamShapeError), and init silently builds a model for the wrong count.
        if x.ndim != 2 or x.shape[-1] != self.features:
            raise TollError(f"{type(self).__name__} expects inputs of shape (batch, "
                            f"{self.features}), got {tuple(x.shape)}")

    def setup(self):
        self.encoder = MLP(self.features, (*self.hidden, self.z_dim), self.init_scheme, self.dtype)
        self.decoder = MLP(self.z_dim, (*self.hidden[::-1], self.features), self.init_scheme, self.dtype)


# name -> (factory(z_dim, init, dtype) -> module, sample shape, default z_dim)
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], tuple[int, ...], int]] = {}


def register_model(name: str, factory: Callable[..., nn.Module], sample_shape: tuple[int, ...],
                   default_z_dim: int) -> None:
    """Add a dataset's model to the registry used by :func:`build_model`.

    ``factory(z_dim, init, dtype)`` returns a flax module mapping ``(x, train)`` to
    ``(x_hat, z)``; ``sample_shape`` is one sample's shape (no batch axis). Registering a
    name again replaces its entry."""
    if not isinstance(name, str) or not name:
        raise TollError(f"a model name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TollError(f"the factory of model {name!r} must be callable, got {factory!r}")
    try:
        shape = tuple(positive_int(f"every dimension of model {name!r}'s sample_shape", d)
                      for d in sample_shape)
    except TypeError:  # not iterable
        raise TollError(f"sample_shape of model {name!r} must be a tuple of positive "
                        f"integers, got {sample_shape!r}") from None
    if not shape:
        raise TollError(f"sample_shape of model {name!r} is empty; give one sample's shape")
    _REGISTRY[name] = (factory, shape, positive_int(f"default_z_dim of model {name!r}",
                                                    default_z_dim))


register_model("arrhythmia",
               lambda z_dim, init, dtype: MLPAutoencoder(274, z_dim, init_scheme=init, dtype=dtype),
               (274,), 16)


def model_names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def sample_shape(dataset: str) -> tuple[int, ...]:
    """Shape of one input sample (no batch axis) of ``dataset``'s model."""
    return _lookup(dataset)[1]


def _lookup(dataset: str):
    if not isinstance(dataset, str) or dataset not in _REGISTRY:  # a list is not even hashable
        raise TollError(f"unknown dataset {dataset!r}; choose one of: {', '.join(model_names())}")
    return _REGISTRY[dataset]


def build_model(dataset: str, z_dim: int | None = None, *, init: str = "torch",
                dtype: Dtype = jnp.float32) -> nn.Module:
    """The Appendix-B autoencoder for ``dataset`` with latent size ``z_dim`` (paper's default)."""
    factory, _, default_z = _lookup(dataset)
    if z_dim is None:
        z_dim = default_z
    # Integers only: int(2.7) would silently build z = 2, int("abc") raise a bare ValueError.
    if isinstance(z_dim, (bool, np.bool_)) or not isinstance(z_dim, numbers.Integral) or z_dim < 1:
        raise TollError(f"--z-dim must be a positive integer, got {z_dim!r}")
    if init not in INIT_SCHEMES:
        raise TollError(f"unknown init scheme {init!r}; choose one of {INIT_SCHEMES}")
    check_dtype(dtype)
    return factory(int(z_dim), init, dtype)


def check_dtype(dtype: Dtype) -> None:
    """:class:`TollError` unless ``dtype`` names a floating-point compute dtype.

    flax only resolves the dtype when the model first runs; checking here reports a typo
    (``"float33"``) at construction, not as a traceback from inside the first layer.
    """
    try:
        resolved = jnp.dtype(dtype)
    except Exception:  # TypeError for unknown names, others for arbitrary objects
        resolved = None
    if resolved is None:
        raise TollError(f"unknown compute dtype {dtype!r}; use a floating-point dtype such as "
                        "float32 or bfloat16")
    if not jnp.issubdtype(resolved, jnp.floating):
        raise TollError(f"compute dtype {resolved} is not floating-point; use float32 or bfloat16")


def init_variables(model: nn.Module, key: jax.Array, shape: tuple[int, ...]) -> dict:
    """``{"params", "batch_stats"}`` of ``model`` for inputs of per-sample ``shape``.

    A model without BatchNorm (e.g. one added with :func:`register_model`) gets an empty
    ``batch_stats``, so the training code needs no special case for it."""
    variables = _jit_init(model, key, tuple(shape))
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


@functools.partial(jax.jit, static_argnums=(0, 2))
def _jit_init(model: nn.Module, key: jax.Array, shape: tuple[int, ...]) -> dict:
    # One compiled program (cached per model config and shape) instead of eager op-by-op
    # init, which compiles every distinct layer shape separately: same values, ~2x faster
    # for the conv models. Inside an outer jit/vmap it is simply inlined.
    return model.init(key, jnp.zeros((2, *shape), jnp.float32), train=False)


def count_params(params: Any) -> int:
    """Number of trainable parameters (BatchNorm scale/bias included, running stats not)."""
    return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


def describe(model: nn.Module, shape: tuple[int, ...]) -> str:
    """A per-layer parameter table and the total, computed without running the model."""
    variables = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), shape))
    rows = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables["params"])[0]:
        name = "/".join(getattr(k, "key", str(k)) for k in path)
        rows.append((name, tuple(leaf.shape), int(np.prod(leaf.shape))))
    width = max(len(r[0]) for r in rows)
    lines = [f"{type(model).__name__} (input {shape}, z_dim {getattr(model, 'z_dim', '?')})"]
    lines += [f"  {n:<{width}}  {str(s):>16}  {c:>10,}" for n, s, c in rows]
    lines.append(f"  {'total parameters':<{width}}  {'':>16}  {sum(r[2] for r in rows):>10,}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Image autoencoders (Appendix B.1 MNIST/Fashion-MNIST, B.2 CIFAR-10/CIFAR-100), NHWC layout.
# --------------------------------------------------------------------------------------------


class ConvSpec(NamedTuple):
    """One Appendix-B layer: Conv(c, k, s) or, with ``transpose``, ConvT(c, k, s); VALID padding."""

    features: int
    kernel: int
    stride: int = 1
    bias: bool = True
    transpose: bool = False


def conv_transpose(features: int, kernel: int, stride: int, use_bias: bool, init_scheme: str,
                   dtype: Dtype, name: str | None = None) -> nn.Module:
    """The one place every transposed convolution is built (both decoders go through here).

    Output size (in − 1)·s + k per spatial axis, as PyTorch's ``ConvTranspose2d(padding=0)``.
    PyTorch takes fan_in from weight dim 1, i.e. ``out_channels·k·k`` — not the input channels —
    so the "torch" bound is 1/√(features·k·k). Kernel layout (k, k, in, out), not flipped
    (flax's ``transpose_kernel=False``): a PyTorch weight ``w`` (in, out, k, k) corresponds to
    ``w.transpose(2, 3, 0, 1)[::-1, ::-1]``. That only matters when porting weights; the i.i.d.
    initialisation is symmetric under the flip.

    The layer is :class:`tolljax.ops.ConvTranspose`: flax's ``nn.ConvTranspose`` parameters and
    numbers, with a fast CPU implementation chosen by backend (``$TOLLJAX_CONV_TRANSPOSE``
    overrides, see :mod:`tolljax.ops`).
    """
    return ConvTranspose(features, (kernel, kernel), strides=(stride, stride), padding="VALID",
                         use_bias=use_bias, dtype=dtype, name=name,
                         **layer_inits(init_scheme, features * kernel * kernel))


class ConvBlock(nn.Module):
    """Conv/ConvT of ``spec``, then BatchNorm-LReLU(``slope``); ``slope=None``: plain last layer."""

    spec: ConvSpec
    slope: float | None
    init_scheme: str = "torch"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        c, k, s, bias, transpose = self.spec
        if transpose:
            x = conv_transpose(c, k, s, bias, self.init_scheme, self.dtype, name="conv_t")(x)
        else:  # nn.Conv2d: fan_in = in_channels·k·k
            x = Conv(c, (k, k), strides=(s, s), padding="VALID", use_bias=bias, dtype=self.dtype,
                     name="conv", **layer_inits(self.init_scheme, x.shape[-1] * k * k))(x)
        if self.slope is not None:
            x = nn.leaky_relu(batch_norm(train, self.dtype, name="bn")(x), self.slope)
        return x


def _conv_stack(x: jnp.ndarray, specs: Sequence[ConvSpec], slope: float, train: bool,
                init_scheme: str, dtype: Dtype) -> jnp.ndarray:
    """Appendix-B pattern: every layer but the last is followed by BatchNorm-LReLU(slope).

    Called from a compact ``__call__``, so the blocks become submodules of the caller.
    """
    for i, spec in enumerate(specs):
        x = ConvBlock(spec, slope if i < len(specs) - 1 else None, init_scheme, dtype)(x, train)
    return x


class ConvEncoder(nn.Module):
    """Conv stack, Flatten, and (``linear``) a final Linear(z_dim) (Appendix B encoders).

    Flatten is over (H, W, C) of the NHWC activations, where PyTorch flattens (C, H, W): the two
    differ by a fixed permutation of the Linear layer's inputs, so the parameter count and the
    i.i.d. initial distribution are identical. (Porting PyTorch weights would permute them.)
    """

    specs: tuple[ConvSpec, ...]
    slope: float
    z_dim: int
    linear: bool
    init_scheme: str = "torch"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        x = _conv_stack(x, self.specs, self.slope, train, self.init_scheme, self.dtype)
        x = x.reshape(x.shape[0], -1)
        if self.linear:
            x = nn.Dense(self.z_dim, dtype=self.dtype,
                         **layer_inits(self.init_scheme, x.shape[-1]))(x)
        return x


class ConvDecoder(nn.Module):
    """[Linear(prod(unflatten))]-Unflatten(H, W, C)-conv stack-[per-pixel bias] (Appendix B).

    Unflatten fills (H, W, C) in NHWC order, the counterpart of :class:`ConvEncoder`'s Flatten.
    """

    specs: tuple[ConvSpec, ...]
    slope: float
    unflatten: tuple[int, int, int]
    linear: bool
    output_bias: tuple[int, ...] | None = None
    init_scheme: str = "torch"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jnp.ndarray, train: bool) -> jnp.ndarray:
        if self.linear:
            z = nn.Dense(int(np.prod(self.unflatten)), dtype=self.dtype,
                         **layer_inits(self.init_scheme, z.shape[-1]))(z)
        x = z.reshape(z.shape[0], *self.unflatten)
        x = _conv_stack(x, self.specs, self.slope, train, self.init_scheme, self.dtype)
        if self.output_bias is not None:
            # The authors' CIFAR decoder adds a learnable per-pixel bias, a plain
            # nn.Parameter(torch.zeros(3, 32, 32)) — zeros under either init scheme.
            bias = self.param("output_bias", nn.initializers.zeros_init(), self.output_bias,
                              jnp.float32)
            x = x + bias.astype(x.dtype)
        return x


class ConvAutoencoder(Autoencoder):
    """Shared interface of the image autoencoders: ``x -> (x_hat, z)``, ``encode``, ``decode``.

    Subclasses set ``input_shape`` and build ``self.encoder``/``self.decoder`` in ``setup``.
    Parameters stay float32; ``dtype`` is the compute dtype; outputs are cast to float32.
    """

    z_dim: int
    init_scheme: str = "torch"
    dtype: Dtype = jnp.float32

    input_shape: ClassVar[tuple[int, int, int]] = (0, 0, 0)

    def check_input(self, x: jnp.ndarray) -> None:
        if tuple(x.shape[1:]) != self.input_shape:
            raise TollError(f"{type(self).__name__} expects inputs of shape (batch, "
                            f"{', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")


_T = dict(transpose=True)
# Appendix B.1. Spatial sizes (VALID): 28→25→22→10→7→4, and back 4→7→10→22→25→28.
MNIST_ENCODER = (ConvSpec(64, 4), ConvSpec(128, 4), ConvSpec(256, 4, 2), ConvSpec(512, 4),
                 ConvSpec(64, 4))
MNIST_DECODER = (ConvSpec(512, 4, **_T), ConvSpec(256, 4, **_T), ConvSpec(128, 4, 2, **_T),
                 ConvSpec(64, 4, **_T), ConvSpec(1, 4, **_T))
# Appendix B.2, all bias-free except the encoder's last conv. Spatial sizes: 32→28→13→10→4→1
# (then 1×1 convs), and back 1→4→10→13→28→32 (then 1×1 convs).
CIFAR_ENCODER = (ConvSpec(32, 5, bias=False), ConvSpec(64, 4, 2, bias=False),
                 ConvSpec(128, 4, bias=False), ConvSpec(256, 4, 2, bias=False),
                 ConvSpec(512, 4, bias=False), ConvSpec(512, 1, bias=False))  # + Conv(z, 1, 1)
CIFAR_DECODER = (ConvSpec(256, 4, bias=False, **_T), ConvSpec(128, 4, 2, bias=False, **_T),
                 ConvSpec(64, 4, bias=False, **_T), ConvSpec(32, 4, 2, bias=False, **_T),
                 ConvSpec(32, 5, bias=False, **_T), ConvSpec(32, 1, bias=False),
                 ConvSpec(3, 1, bias=False))


class MnistAutoencoder(ConvAutoencoder):
    """MNIST / Fashion-MNIST autoencoder (Appendix B.1), LReLU(0.2), input (28, 28, 1).

    Encoder: Conv(64,4,1)-BN-LReLU-Conv(128,4,1)-BN-LReLU-Conv(256,4,2)-BN-LReLU-Conv(512,4,1)-
    BN-LReLU-Conv(64,4,1)-Flatten-Linear(z). Decoder: Linear(1024)-Unflatten(4,4,64)-
    ConvT(512,4,1)-BN-LReLU-ConvT(256,4,1)-BN-LReLU-ConvT(128,4,2)-BN-LReLU-ConvT(64,4,1)-BN-LReLU-
    ConvT(1,4,1). Parameters: 6,824,769 at z = 128 (MNIST), 7,087,041 at z = 256 (Fashion-MNIST),
    as the authors' PyTorch models.
    """

    z_dim: int = 128
    input_shape: ClassVar[tuple[int, int, int]] = (28, 28, 1)

    def setup(self):
        self.encoder = ConvEncoder(MNIST_ENCODER, 0.2, self.z_dim, True, self.init_scheme,
                                   self.dtype)
        self.decoder = ConvDecoder(MNIST_DECODER, 0.2, (4, 4, 64), True, None, self.init_scheme,
                                   self.dtype)


class CifarAutoencoder(ConvAutoencoder):
    """CIFAR-10 / CIFAR-100 autoencoder (Appendix B.2), LReLU(0.1), input (32, 32, 3).

    Encoder: Conv(32,5,1)-Conv(64,4,2)-Conv(128,4,1)-Conv(256,4,2)-Conv(512,4,1)-Conv(512,1,1),
    each bias-free and followed by BN-LReLU, then Conv(z,1,1) with bias and Flatten.
    Decoder: Unflatten(1,1,z)-ConvT(256,4,1)-ConvT(128,4,2)-ConvT(64,4,1)-ConvT(32,4,2)-
    ConvT(32,5,1)-Conv(32,1,1), each bias-free and followed by BN-LReLU, then a bias-free
    Conv(3,1,1) plus the authors' learnable per-pixel output bias (32, 32, 3) (Appendix B lists
    Conv(3,1,1) only). Parameters at z = 64: 4,066,816, as the authors' PyTorch model.
    """

    z_dim: int = 64
    input_shape: ClassVar[tuple[int, int, int]] = (32, 32, 3)

    def setup(self):
        self.encoder = ConvEncoder((*CIFAR_ENCODER, ConvSpec(self.z_dim, 1)), 0.1, self.z_dim,
                                   False, self.init_scheme, self.dtype)
        self.decoder = ConvDecoder(CIFAR_DECODER, 0.1, (1, 1, self.z_dim), False, (32, 32, 3),
                                   self.init_scheme, self.dtype)


def _image_factory(cls: type[ConvAutoencoder]) -> Callable[..., nn.Module]:
    return lambda z_dim, init, dtype: cls(z_dim=z_dim, init_scheme=init, dtype=dtype)


register_model("mnist", _image_factory(MnistAutoencoder), MnistAutoencoder.input_shape, 128)
register_model("fmnist", _image_factory(MnistAutoencoder), MnistAutoencoder.input_shape, 256)
register_model("cifar10", _image_factory(CifarAutoencoder), CifarAutoencoder.input_shape, 64)
register_model("cifar100", _image_factory(CifarAutoencoder), CifarAutoencoder.input_shape, 64)
