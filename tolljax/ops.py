"""Convolutions for the Appendix-B autoencoders: XLA's plain layers and two CPU paths (the GEMM
"fast" path here, oneDNN in :mod:`tolljax.onednn`).

Why: on CPU, XLA differentiates convolutions slowly. The kernel gradient of a transposed
convolution is the worst case — 12 s for the MNIST decoder's 512→256 layer (7×7 → 10×10,
batch 64) where its forward pass takes 65 ms — and XLA:CPU's regular convolutions (forward
and gradients) run at a fraction of its matrix-multiply (GEMM) speed. The fast path expresses
every convolution as GEMMs over im2col patches ("lowering to matrix multiplication", as
PyTorch does on CPU), with the same numbers up to float32 round-off (tested to ≤ 1e-5
relative, forward and gradients).

Conventions (flax, NHWC activations, kernel ``(kh, kw, in, out)``, VALID padding):

* regular convolution, stride s: ``y[i, j] = Σ_{a,b} x[i·s + a, j·s + b] · K[a, b]``;
* transposed convolution (flax ``nn.ConvTranspose``, ``transpose_kernel=False``)::

      y[i·s + a, j·s + b] += x[i, j] · K[k − 1 − a, k − 1 − b]     output (n − 1)·s + k

  (plus ``max(s − k, 0)`` trailing zeros when k < s, as flax's layer).

Other paddings (SAME, explicit ``(lo, hi)`` pairs, as flax/lax take them) reduce to these:
the regular convolution pads (or crops) its input, the transposed one pads or crops its
output (padding ``(lo, hi)`` of the dilated input instead of ``(k − 1, k − 1)``).

Fast path (``jax.custom_vjp`` each; residuals are just the input and the kernel):

* transposed conv, forward: strided layers as a sub-pixel (phase) decomposition, s² im2col
  GEMMs that multiply no inserted zeros (:func:`_ct_forward_phases`); stride-1 layers and
  layers with < 8 output channels as one GEMM ``x · W`` for all k² taps plus an overlap-add
  (col2im). No XLA convolution is used: on XLA:CPU its results change from run to run when
  several host devices run at once (MNIST test scores differed in about half of repeated
  runs with two devices; none with these GEMMs), which would break "same seed, same
  results";
* transposed conv, backward: one im2col matrix ``P`` of the output gradient (a gather of
  the stride-s windows, no dilation, taps in reverse order) gives both ``dx = P · Kᵀ`` and
  ``dK = xᵀ · P``, with no flipped copy of K;
* regular conv: forward ``patches(x) · K``; input gradient = the transposed convolution of dy
  (above); kernel gradient ``patches(x)ᵀ · dy``. Stride-1 layers with many fewer output than
  input channels are instead the centre crop of the transposed convolution with the same
  kernel (:func:`_conv_uses_transposed`), which materialises k²·out columns, not k²·in.

GEMM operands larger than :data:`CHUNK_BYTES` are processed in batch chunks (``lax.map`` /
``lax.scan``), so the paper's batch 1000 never materialises GBs of patches. Whole-step
measurements are in the README's Performance section; ``benchmarks/bench_train_step.py
--conv-transpose plain,fast,matmul --conv plain,fast`` compares the implementations.
:func:`conv_transpose_matmul` (pure matmul + overlap-add, differentiated by autodiff) is kept
as an alternative.

Selection: :class:`ConvTranspose` and :class:`Conv` are drop-in replacements for flax's
``nn.ConvTranspose`` / ``nn.Conv`` (same parameter names, shapes, creation order and
initialisers, so parameters interchange) that pick the implementation by backend. On CPU:
``onednn`` where its library is installed (a dependency on Linux x86-64): oneDNN
convolutions inside the XLA program (:mod:`tolljax.onednn`), with layers that are one GEMM
(1×1 kernels or outputs) and single-channel sides on the fast path; elsewhere (macOS, ARM)
the fast path itself. On GPU/TPU: XLA's plain layer (on an H200 the fastest of plain and the
GEMM path for MNIST: README, "Which layers on GPUs"). ``phases``
(:func:`conv_transpose_phases`, transposed convolutions only) keeps XLA's convolutions but
computes a strided layer as one stride-1 convolution over its s² output phases: XLA's GPU
compiler runs flax's strided transposed convolution, forward and kernel gradient, over the
zero-dilated input, multiplying every inserted zero. It is opt-in, not yet timed on a GPU.
Override per module with ``impl=`` or per process with ``$TOLLJAX_CONV_TRANSPOSE`` /
``$TOLLJAX_CONV`` (``plain|fast|onednn|auto``; the transposed convolution also accepts
``matmul`` and ``phases``); read at trace time. Batch-64 train steps on a 2-core CPU: oneDNN
MNIST 0.80× and CIFAR-10 0.60× the fast path's time (README, Performance).
"""
from __future__ import annotations

import collections.abc
import numbers
import os
from typing import Any, Callable, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from tolljax import onednn
from tolljax.errors import TollError

IMPLS = ("auto", "plain", "fast", "matmul", "onednn", "phases")
ENV_VAR = "TOLLJAX_CONV_TRANSPOSE"
CONV_IMPLS = ("auto", "plain", "fast", "onednn")
CONV_ENV_VAR = "TOLLJAX_CONV"
_DN = ("NHWC", "HWIO", "NHWC")

# Largest im2col / tap matrix materialised at once by the GEMM formulations; a batch that
# needs more is processed in chunks. 128 MiB keeps every layer at batch 64 in one chunk and
# the GEMMs large enough to run at full speed.
CHUNK_BYTES = 128 << 20


def _resolve(impl: str, choices: tuple[str, ...], env_var: str, backend: str | None) -> str:
    if impl not in choices:
        raise TollError(f"unknown convolution implementation {impl!r}; choose one of {choices}")
    if impl == "auto":
        env = os.environ.get(env_var, "").strip().lower() or "auto"
        if env not in choices:
            raise TollError(f"${env_var}={env!r} is not one of {choices}")
        impl = env
    if impl == "auto":
        backend = jax.default_backend() if backend is None else backend
        if backend != "cpu":
            impl = "plain"
        else:  # oneDNN where its library is installed (Linux x86-64), else the GEMM path
            impl = "onednn" if onednn.available() else "fast"
    return impl


def resolve_impl(impl: str = "auto", backend: str | None = None) -> str:
    """The transposed-convolution implementation ``impl`` stands for: plain, fast, matmul,
    onednn or phases.

    ``"auto"`` reads ``$TOLLJAX_CONV_TRANSPOSE`` and, if unset or ``auto``, chooses by
    ``backend`` (default ``jax.default_backend()``): on CPU ``"onednn"`` where its library is
    installed (:func:`tolljax.onednn.available`), else ``"fast"``; ``"plain"`` elsewhere.
    """
    return _resolve(impl, IMPLS, ENV_VAR, backend)


def resolve_conv_impl(impl: str = "auto", backend: str | None = None) -> str:
    """As :func:`resolve_impl`, for regular convolutions (``$TOLLJAX_CONV``; plain, fast or
    onednn)."""
    return _resolve(impl, CONV_IMPLS, CONV_ENV_VAR, backend)


# ----------------------------------------------------------------------------------- helpers


def _check(x: jnp.ndarray, kernel: jnp.ndarray) -> None:
    if x.ndim != 4 or kernel.ndim != 4 or kernel.shape[2] != x.shape[-1]:
        raise TollError(f"expected an NHWC input and a (kh, kw, in, out) kernel, got shapes "
                        f"{x.shape} and {kernel.shape}")


def _pair(v) -> tuple[int, int]:
    """A stride or kernel size as two positive ints (a stride < 1 gave an empty output or a
    ZeroDivisionError, a float was truncated)."""
    if isinstance(v, numbers.Integral):
        pair = (v, v)
    else:
        pair = tuple(v) if isinstance(v, collections.abc.Sequence) else ()
    if (len(pair) != 2 or any(isinstance(u, bool) or not isinstance(u, numbers.Integral) or u < 1
                              for u in pair)):
        raise TollError(f"expected a positive int or a pair of them for a 2-D convolution's "
                        f"strides / kernel size, got {v!r}")
    return int(pair[0]), int(pair[1])


Padding = Any  # "VALID", "SAME" or ((lo, hi), (lo, hi)), as flax/lax take it
Stride = int | tuple[int, int]  # one stride for both spatial axes, or (height, width)


def _explicit(padding: Padding, pairs: Callable[[str], Sequence[tuple[int, int]]]):
    if isinstance(padding, str):
        if padding.upper() not in ("VALID", "SAME"):
            raise TollError(f"padding {padding!r} is not supported (VALID, SAME or explicit "
                            f"(lo, hi) pairs)")
        return [tuple(p) for p in pairs(padding.upper())]
    pads = [tuple(int(v) for v in p) for p in padding]
    if len(pads) != 2 or any(len(p) != 2 for p in pads):
        raise TollError(f"expected two (lo, hi) padding pairs for a 2-D convolution, got "
                        f"{padding}")
    return pads


def _pad_hw(y: jnp.ndarray, pads) -> jnp.ndarray:
    """Pad (or, for negative amounts, crop) the two spatial axes of an NHWC array."""
    if not any(v for p in pads for v in p):
        return y
    return lax.pad(y, jnp.zeros((), y.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads),
                                               (0, 0, 0)])


def _conv_transpose_pads(kernel_hw, strides, padding: Padding):
    """The padding ``lax.conv_transpose`` applies to the stride-dilated input (its private
    ``_conv_transpose_padding`` for VALID/SAME; explicit pairs as given)."""

    def pairs(mode):
        out = []
        for k, s in zip(kernel_hw, strides):
            if mode == "SAME":
                pad_len = k + s - 2
                lo = k - 1 if s > k - 1 else -(-pad_len // 2)
            else:
                pad_len, lo = k + s - 2 + max(k - s, 0), k - 1
            out.append((lo, pad_len - lo))
        return out

    return _explicit(padding, pairs)


def _from_full_transposed(y: jnp.ndarray, kernel_hw, strides, padding: Padding) -> jnp.ndarray:
    """The transposed conv for ``padding`` from the full one (dilated input padded by k − 1 on
    both sides, (n − 1)·s + k per axis): padding (lo, hi) instead of (k − 1, k − 1) adds
    zeros (or crops) at each end. VALID: ``max(s − k, 0)`` trailing zeros when k < s."""
    pads = _conv_transpose_pads(kernel_hw, strides, padding)
    return _pad_hw(y, [(lo - (k - 1), hi - (k - 1)) for (lo, hi), k in zip(pads, kernel_hw)])


def _batch_chunks(n: int, per_sample_bytes: int) -> tuple[int, int]:
    """(number of chunks, chunk size) covering ``n`` samples with ≤ CHUNK_BYTES each."""
    max_size = max(1, CHUNK_BYTES // max(1, per_sample_bytes))
    count = -(-n // max_size)
    return count, -(-n // count)


def _split(a: jnp.ndarray, count: int, size: int) -> jnp.ndarray:
    """(n, ...) -> (count, size, ...), zero-padding the batch to count·size."""
    pad = count * size - a.shape[0]
    if pad:
        a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
    return a.reshape(count, size, *a.shape[1:])


def _over_batch(fn: Callable, arrays: Sequence[jnp.ndarray], per_sample_bytes: int):
    """``fn(*arrays) -> (per-sample output | None, batch sum | None)``, in batch chunks.

    Zero-padded samples must contribute zero to the sum (true for every use here: they are
    products with a zero input).
    """
    n = arrays[0].shape[0]
    count, size = _batch_chunks(n, per_sample_bytes)
    if count == 1:
        return fn(*arrays)
    chunks = [_split(a, count, size) for a in arrays]
    _, summed_shape = jax.eval_shape(fn, *[c[0] for c in chunks])

    def body(acc, chunk):
        mapped, summed = fn(*chunk)
        return (None if summed is None else acc + summed), mapped

    init = None if summed_shape is None else jnp.zeros(summed_shape.shape, summed_shape.dtype)
    total, mapped = lax.scan(body, init, chunks)
    if mapped is not None:
        mapped = mapped.reshape(count * size, *mapped.shape[2:])[:n]
    return mapped, total


def _patches(u: jnp.ndarray, kernel_hw, strides, out_hw, flip: bool = False) -> jnp.ndarray:
    """im2col: ``p[n·Ho·Wo + i·Wo + j, (a, b, c)] = u[n, i·s + a, j·s + b, c]``.

    With ``flip`` the taps come in reverse order,
    ``u[n, i·s + kh − 1 − a, j·s + kw − 1 − b, c]`` (free: only the static indices change), so
    that a flipped kernel needs no reversed copy.
    One gather with static indices: measured against k² strided slices stacked together, the
    train step is as fast or faster (MNIST/CIFAR, batch 64) and compiles in half the time (one
    kernel per layer instead of k² + 1).
    """
    n, h, w, c = u.shape
    (kh, kw), (sh, sw), (ho, wo) = kernel_hw, strides, out_hw
    order = -1 if flip else 1
    rows = np.arange(ho)[:, None, None, None] * sh + np.arange(kh)[::order][None, None, :, None]
    cols = np.arange(wo)[None, :, None, None] * sw + np.arange(kw)[::order][None, None, None, :]
    pixel = (rows * w + cols).reshape(-1)  # (i, j, a, b) -> flat input pixel
    return u.reshape(n, h * w, c)[:, pixel, :].reshape(n * ho * wo, kh * kw * c)


def _overlap_add(z: jnp.ndarray, strides, flip: bool = False) -> jnp.ndarray:
    """col2im: z (N, H, W, kh, kw, C) -> y with ``y[i·s + a, j·s + b] += z[i, j, a, b]``.

    ``flip``: ``z[i, j, kh − 1 − a, kw − 1 − b]`` instead (folded into the slices, no copy).

    Stride 1 (every GEMM-path layer but the thin last ones): each kernel row ``a`` is summed
    over ``b`` as padded rows, then added into its window of y in place
    (``dynamic_update_slice``). Measured against padding all k² taps to the full output and
    adding them (XLA:CPU makes each pad its own fusion, k² full-size temporaries): the MNIST
    train step at batch 64 went from 950 to ≈ 790 ms, CIFAR-10 from 293 to ≈ 265 ms. In-place
    updates per tap (k² of them) were in between for MNIST and slower for CIFAR's 5×5 layer.
    """
    n, h, w, kh, kw, c = z.shape
    sh, sw = strides
    zero = jnp.zeros((), z.dtype)
    if flip:
        z = z[:, :, :, ::-1, ::-1]
    if (sh, sw) == (1, 1):
        wo = w + kw - 1
        y = jnp.zeros((n, h + kh - 1, wo, c), z.dtype)
        for a in range(kh):
            row = None
            for b in range(kw):
                t = lax.pad(z[:, :, :, a, b, :], zero,
                            [(0, 0, 0), (0, 0, 0), (b, kw - 1 - b, 0), (0, 0, 0)])
                row = t if row is None else row + t
            window = lax.dynamic_slice(y, (0, a, 0, 0), (n, h, wo, c))
            y = lax.dynamic_update_slice(y, window + row, (0, a, 0, 0))
        return y
    y = None
    for a in range(kh):
        for b in range(kw):
            t = lax.pad(z[:, :, :, a, b, :], zero,
                        [(0, 0, 0), (a, kh - 1 - a, sh - 1), (b, kw - 1 - b, sw - 1), (0, 0, 0)])
            y = t if y is None else y + t
    return y


def _f32_matmul(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Kernel-gradient GEMMs accumulate in float32 whatever the compute dtype."""
    return jnp.matmul(a, b, preferred_element_type=jnp.float32)


# --------------------------------------------------------------------- transposed convolution


def conv_transpose_plain(x: jnp.ndarray, kernel: jnp.ndarray, stride: Stride = 1,
                         padding: Padding = "VALID") -> jnp.ndarray:
    """``lax.conv_transpose`` exactly as flax's ``nn.ConvTranspose`` calls it."""
    _check(x, kernel)
    return lax.conv_transpose(x, kernel, _pair(stride), padding, dimension_numbers=_DN)


def _ct_forward_uses_gemm(x_shape, k_shape, strides) -> bool:
    """GEMM + overlap-add forward (else the phase decomposition).

    At stride 1 there is one phase, and its im2col would multiply the (k − 1) zero padding
    (of the Ho·Wo·k² taps per output channel only H·W·k² touch the input); with < 8 output
    channels the phase GEMMs are too thin. Per-layer forward timings (batch 64, 2 cores,
    during development): phases ≈ XLA's convolution on the strided layers (MNIST 10→22:
    46.5 vs 47.9 ms), GEMM + overlap-add faster than phases at stride 1 (22→25: 84.5 vs
    157 ms). The whole-step effect is measured by ``benchmarks/bench_train_step.py``.
    """
    cout = k_shape[3]
    return cout < 8 or tuple(strides) == (1, 1)


def _gemm_overlap_add(x, wmat, taps_hw, strides, *, wmat_transposed: bool = False,
                      flip: bool = False):
    """``overlap_add((x · wmat).reshape(…, kh, kw, out), flip)`` in batch chunks (GEMM path).

    ``wmat`` is ``(in, kh·kw·out)``, or with ``wmat_transposed`` ``(kh·kw·out, in)``, which the
    GEMM contracts along its second axis without a transposed copy.
    """
    n, h, w, cin = x.shape
    kh, kw = taps_hw
    cout = wmat.shape[0 if wmat_transposed else 1] // (kh * kw)
    contract = ((1,), (1,) if wmat_transposed else (0,))

    def run(xc):
        m = xc.shape[0]
        z = lax.dot_general(xc.reshape(m * h * w, cin), wmat, (contract, ((), ())))
        return _overlap_add(z.reshape(m, h, w, kh, kw, cout), strides, flip), None

    return _over_batch(run, [x], h * w * kh * kw * cout * x.dtype.itemsize)[0]


def _ct_forward_gemm(x, kernel, strides):
    """z[…, a, b, o] = Σ_c x[…, c]·K[a, b, c, o], overlap-added with the taps flipped."""
    kh, kw, cin, cout = kernel.shape
    wmat = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(cin, kh * kw * cout)
    return _gemm_overlap_add(x, wmat, (kh, kw), strides, flip=True)


def _ct_phase_taps(k: int, s: int, p: int) -> list[int]:
    """Kernel indices of output phase ``p`` along one axis, in correlation order (see
    :func:`_ct_forward_phases`); empty when ``p ≥ k`` (a phase no tap reaches)."""
    taps = -(-(k - p) // s)
    return [k - 1 - (taps - 1 - u) * s - p for u in range(max(taps, 0))]


def _ct_forward_phases(x, kernel, strides):
    """Sub-pixel (phase) decomposition: s² im2col GEMMs with no multiplied zeros.

    The output pixels ``(q·s + p, q'·s + p')`` of one phase ``(p, p')`` are a regular VALID
    correlation of the input zero-padded by ``T − 1`` with ``T = ⌈(k − p)/s⌉`` taps per axis,
    ``K[k − 1 − (T − 1 − u)·s − p]`` for ``u < T`` (from ``y[i·s + a] += x[i]·K[k − 1 − a]``
    with ``a = t·s + p``). Each phase is one :func:`_patches` gather and one GEMM; the phases
    are interleaved by a reshape. Unlike XLA's lhs-dilated convolution it multiplies no
    inserted zeros, and it is deterministic on multi-device CPU (module doc).
    """
    n, h, w, cin = x.shape
    kh, kw, _, cout = kernel.shape
    sh, sw = strides
    ho, wo = (h - 1) * sh + kh, (w - 1) * sw + kw
    qh, qw = -(-ho // sh), -(-wo // sw)
    phases = [[(_ct_phase_taps(kh, sh, p), _ct_phase_taps(kw, sw, pp)) for pp in range(sw)]
              for p in range(sh)]

    # Phases with the same tap counts share one padded input and one im2col matrix, so they
    # are one GEMM with their kernels side by side (k divisible by s: all s² phases). In the
    # MNIST step profile (batch 64) the 10→22 layer's forward took 25 ms as one N = 512 GEMM
    # against 4 × 11 ms as four N = 128 GEMMs.
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for p, row in enumerate(phases):
        for pp, (th, tw) in enumerate(row):
            if th and tw:
                groups.setdefault((len(th), len(tw)), []).append((p, pp))

    def phase_kernel(p, pp):
        th, tw = phases[p][pp]
        return kernel[np.array(th)][:, np.array(tw)].reshape(len(th) * len(tw) * cin, cout)

    def run(xc):
        m = xc.shape[0]
        out = {}
        for (t, u), members in groups.items():
            g = jnp.concatenate([phase_kernel(p, pp) for p, pp in members], axis=1)
            xp = jnp.pad(xc, [(0, 0), (t - 1, t - 1), (u - 1, u - 1), (0, 0)])
            out_hw = (h - 1 + t, w - 1 + u)
            y = jnp.matmul(_patches(xp, (t, u), (1, 1), out_hw), g)
            y = y.reshape(m, *out_hw, len(members), cout)
            for i, key in enumerate(members):
                out[key] = jnp.pad(y[:, :, :, i], [(0, 0), (0, qh - out_hw[0]),
                                                    (0, qw - out_hw[1]), (0, 0)])
        zero = jnp.zeros((m, qh, qw, cout), x.dtype)  # phases no tap reaches (k < s)
        y = jnp.stack([jnp.stack([out.get((p, pp), zero) for pp in range(sw)], axis=3)
                       for p in range(sh)], axis=2)  # (m, qh, sh, qw, sw, cout)
        return y.reshape(m, qh * sh, qw * sw, cout)[:, :ho, :wo], None

    patch_bytes = sum((h - 1 + t) * (w - 1 + u) * (t * u * cin + len(members) * cout)
                      for (t, u), members in groups.items()) * x.dtype.itemsize
    return _over_batch(run, [x], patch_bytes)[0]


def _ct_forward(x, kernel, strides):
    """Transposed conv without the k < s trailing zeros: (n − 1)·s + k per axis."""
    if _ct_forward_uses_gemm(x.shape, kernel.shape, strides):
        return _ct_forward_gemm(x, kernel, strides)
    return _ct_forward_phases(x, kernel, strides)


def _ct_backward(x, kernel, strides, dy):
    """dx and dK of the transposed conv from one im2col matrix P of dy, in batch chunks.

    ``P[(n, i, j), (a, b, o)] = dy[n, i·s + a, j·s + b, o]``; ``dx = P · flip(K)ᵀ`` (the
    stride-s convolution of dy) and ``dK = flip(xᵀ · P)``: two GEMMs with exactly the
    transposed convolution's FLOPs — no zeros multiplied, no dilation.
    """
    n, h, w, cin = x.shape
    kh, kw, _, cout = kernel.shape
    # P is gathered with its taps in reverse order, so K enters unflipped (no reversed copy).
    kmat = jnp.transpose(kernel, (0, 1, 3, 2)).reshape(kh * kw * cout, cin)

    def run(xc, dyc):
        m = xc.shape[0]
        p = _patches(dyc, (kh, kw), strides, (h, w), flip=True)
        dxc = jnp.matmul(p, kmat).reshape(m, h, w, cin)
        return dxc, _f32_matmul(xc.reshape(m * h * w, cin).T, p)

    dx, dk = _over_batch(run, [x, dy], h * w * kh * kw * cout * dy.dtype.itemsize)
    dk = jnp.transpose(dk.reshape(cin, kh, kw, cout), (1, 2, 0, 3))
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


_ct_fast = jax.custom_vjp(_ct_forward, nondiff_argnums=(2,))
_ct_fast.defvjp(lambda x, kernel, strides: (_ct_forward(x, kernel, strides), (x, kernel)),
                lambda strides, res, dy: _ct_backward(*res, strides, dy))


def conv_transpose_fast(x: jnp.ndarray, kernel: jnp.ndarray, stride: Stride = 1,
                        padding: Padding = "VALID") -> jnp.ndarray:
    """Same values and gradients as :func:`conv_transpose_plain`, fast on CPU (module doc);
    any padding: the full transposed conv, then padded or cropped."""
    _check(x, kernel)
    strides = _pair(stride)
    return _from_full_transposed(_ct_fast(x, kernel, strides), kernel.shape[:2], strides, padding)


def conv_transpose_matmul(x: jnp.ndarray, kernel: jnp.ndarray, stride: Stride = 1,
                          padding: Padding = "VALID") -> jnp.ndarray:
    """Measured alternative: GEMM + overlap-add for all k² taps, differentiated by autodiff.

    Not chunked: materialises (N, H, W, k², out) in the forward and its gradient.
    """
    _check(x, kernel)
    strides = _pair(stride)
    n, h, w, cin = x.shape
    kh, kw, _, cout = kernel.shape
    wmat = jnp.transpose(kernel[::-1, ::-1], (2, 0, 1, 3)).reshape(cin, kh * kw * cout)
    z = jnp.matmul(x.reshape(n * h * w, cin), wmat).reshape(n, h, w, kh, kw, cout)
    return _from_full_transposed(_overlap_add(z, strides), (kh, kw), strides, padding)


def conv_transpose_onednn(x: jnp.ndarray, kernel: jnp.ndarray, stride: Stride = 1,
                          padding: Padding = "VALID") -> jnp.ndarray:
    """Same values and gradients as :func:`conv_transpose_plain`, by oneDNN
    (:mod:`tolljax.onednn`); non-float32 inputs, and geometries for which oneDNN has only
    its reference loops, take :func:`conv_transpose_fast`."""
    _check(x, kernel)
    strides = _pair(stride)
    if (x.dtype != jnp.float32 or kernel.dtype != jnp.float32
            or not onednn.conv_transpose_supported(x.shape[-4:], kernel.shape, strides)):
        return conv_transpose_fast(x, kernel, stride, padding)
    return _from_full_transposed(onednn.conv_transpose_full(x, kernel, strides),
                                 kernel.shape[:2], strides, padding)


def conv_transpose_phases(x: jnp.ndarray, kernel: jnp.ndarray, stride: Stride = 1,
                          padding: Padding = "VALID") -> jnp.ndarray:
    """Same values as :func:`conv_transpose_plain`, with XLA's convolutions but no
    base-dilated one: a strided layer is one stride-1 convolution over its s² output phases.

    Why (for GPUs; opt-in, not yet timed on one): flax's layer is an XLA convolution of the
    zero-dilated input with the kernel as stored, not reversed. XLA's GPU compiler hands a
    base-dilated convolution to cuDNN's backward-data kernels only when its kernel is a
    reverse (``MatchBackwardInput`` in ``xla/service/gpu/transforms/conv_rewriter.cc``), so
    flax's forward pass, and its kernel gradient (also base-dilated), stay forward
    convolutions, for which ``conv_padding_legalization.cc`` materialises the dilated input
    as a pad: they multiply every inserted zero, 4.8× the true FLOPs for MNIST's 10→22 layer
    (k = 4, s = 2). Here the input, padded by ``T − 1``
    (``T = ⌈k/s⌉`` taps per axis), is convolved once with all phases' kernels side by side
    (``T × T × in × s²·out``: the kernel zero-padded in front to ``s·T`` taps, split into its
    phases, as :func:`_ct_forward_phases` derives) and the phases are interleaved by a reshape.
    Forward and both gradients are then plain stride-1 convolutions. Stride-1 layers have one
    phase and stay :func:`conv_transpose_plain`.
    """
    _check(x, kernel)
    strides = _pair(stride)
    if strides == (1, 1):
        return conv_transpose_plain(x, kernel, strides, padding)
    n, h, w, cin = x.shape
    kh, kw, _, cout = kernel.shape
    sh, sw = strides
    th, tw = -(-kh // sh), -(-kw // sw)
    # phase p's taps are K[(u + 1)·s − 1 − p] of the front-padded kernel, u < T
    kz = jnp.pad(kernel, [(th * sh - kh, 0), (tw * sw - kw, 0), (0, 0), (0, 0)])
    kz = kz.reshape(th, sh, tw, sw, cin, cout)[:, ::-1, :, ::-1]
    phases = jnp.transpose(kz, (0, 2, 4, 1, 3, 5)).reshape(th, tw, cin, sh * sw * cout)
    y = lax.conv_general_dilated(x, phases, (1, 1), [(th - 1, th - 1), (tw - 1, tw - 1)],
                                 dimension_numbers=_DN)
    qh, qw = h - 1 + th, w - 1 + tw
    y = jnp.transpose(y.reshape(n, qh, qw, sh, sw, cout), (0, 1, 3, 2, 4, 5))
    y = y.reshape(n, qh * sh, qw * sw, cout)[:, :(h - 1) * sh + kh, :(w - 1) * sw + kw]
    return _from_full_transposed(y, (kh, kw), strides, padding)


IMPL_FUNCTIONS: dict[str, Callable] = {"plain": conv_transpose_plain, "fast": conv_transpose_fast,
                                       "matmul": conv_transpose_matmul,
                                       "onednn": conv_transpose_onednn,
                                       "phases": conv_transpose_phases}


def conv_transpose(x: jnp.ndarray, kernel: jnp.ndarray, stride: Stride = 1, impl: str = "auto",
                   padding: Padding = "VALID") -> jnp.ndarray:
    """Transposed convolution (flax convention) by ``impl`` (see :func:`resolve_impl`)."""
    return IMPL_FUNCTIONS[resolve_impl(impl)](x, kernel, stride, padding)


# ------------------------------------------------------------------------ regular convolution


def conv_plain(x: jnp.ndarray, kernel: jnp.ndarray, stride: Stride = 1,
               padding: Padding = "VALID") -> jnp.ndarray:
    """``lax.conv_general_dilated`` exactly as flax's ``nn.Conv`` calls it."""
    _check(x, kernel)
    strides = _pair(stride)
    _conv_pads(x.shape, kernel.shape, strides, padding)  # the same errors as the other paths
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DN)


def _conv_out_hw(x_shape, kernel_hw, strides) -> tuple[int, int]:
    return tuple((x_shape[1 + d] - kernel_hw[d]) // strides[d] + 1 for d in range(2))


def _conv_forward(x, kernel, strides):
    n, _, _, cin = x.shape
    kh, kw, _, cout = kernel.shape
    ho, wo = _conv_out_hw(x.shape, (kh, kw), strides)
    kmat = kernel.reshape(kh * kw * cin, cout)

    def run(xc):
        m = xc.shape[0]
        return jnp.matmul(_patches(xc, (kh, kw), strides, (ho, wo)), kmat).reshape(m, ho, wo, cout), None

    return _over_batch(run, [x], ho * wo * kh * kw * cin * x.dtype.itemsize)[0]


def _conv_backward(x, kernel, strides, dy):
    """dx = the transposed convolution of dy (same kernel); dK = patches(x)ᵀ · dy."""
    n, h, w, cin = x.shape
    kh, kw, _, cout = kernel.shape
    ho, wo = dy.shape[1:3]
    # dx[i·s + a] += dy[i] · K[a]ᵀ: a flax-convention transposed conv of dy with kernel
    # flip(K)ᵀ. On the GEMM path that is dy · K.reshape(k²·in, out)ᵀ overlap-added unflipped,
    # with no transposed or reversed copy of K (XLA:CPU made flip∘transpose∘flip∘transpose of
    # the 512→4096 kernels a 16 ms copy).
    if _ct_forward_uses_gemm(dy.shape, (kh, kw, cout, cin), strides):
        dx = _gemm_overlap_add(dy, kernel.reshape(kh * kw * cin, cout), (kh, kw), strides,
                               wmat_transposed=True)
    else:
        dx = _ct_forward_phases(dy, jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2)), strides)
    dx = _pad_hw(dx, [(0, h - dx.shape[1]), (0, w - dx.shape[2])])

    def run(xc, dyc):
        m = xc.shape[0]
        p = _patches(xc, (kh, kw), strides, (ho, wo))
        return None, _f32_matmul(p.T, dyc.reshape(m * ho * wo, cout))

    _, dk = _over_batch(run, [x, dy], ho * wo * kh * kw * cin * x.dtype.itemsize)
    return dx.astype(x.dtype), dk.reshape(kh, kw, cin, cout).astype(kernel.dtype)


_conv_fast = jax.custom_vjp(_conv_forward, nondiff_argnums=(2,))
_conv_fast.defvjp(lambda x, kernel, strides: (_conv_forward(x, kernel, strides), (x, kernel)),
                  lambda strides, res, dy: _conv_backward(*res, strides, dy))


def _conv_uses_transposed(x_shape, k_shape, strides) -> bool:
    """Compute a stride-1 convolution as the crop of a transposed one (else im2col).

    A VALID stride-1 correlation is the centre of the full transposed convolution with the
    same kernel: ``y[i] = Σ_a x[i + a]·K[a] = Y[i + k − 1]`` with ``Y`` as
    :func:`_ct_forward_gemm` builds it. That route materialises ``x · W`` (k²·out columns per
    *input* pixel) and, backward, patches of dy (also k²·out), where im2col materialises
    k²·in columns per *output* pixel, and it multiplies over the input's Hp·Wp pixels instead
    of the output's Ho·Wo. So it pays when the output has far fewer channels than the input
    and little is cropped. Measured here (batch 128/64, forward + gradients in a ``lax.scan``,
    2 cores): 3×3 SAME 28×28 32→1 7.1 vs 164 ms, 14×14 64→32 32 vs 39 ms; not taken for
    4×4 VALID 7×7 512→64 (35 vs 19 ms: 3× the FLOPs) or 25×25 64→128 (194 vs 118 ms). 1×1
    kernels are one GEMM either way (32×32 32→3: 1.95 vs 1.88 ms), so they keep im2col.
    """
    (hp, wp), (kh, kw, cin, cout) = x_shape[1:3], k_shape
    if tuple(strides) != (1, 1) or kh * kw == 1:
        return False
    ho, wo = hp - kh + 1, wp - kw + 1
    return cout * hp * wp < cin * ho * wo and 2 * hp * wp <= 3 * ho * wo


def _conv_pads(x_shape, k_shape, strides, padding: Padding):
    """A regular convolution's ``padding`` as explicit ``(lo, hi)`` pairs (SAME as lax/flax);
    :class:`TollError` where the kernel leaves no output position (lax returns an empty
    array there, the GEMM path could not reshape it)."""
    pads = _explicit(padding, lambda mode: lax.padtype_to_pads(x_shape[1:3], k_shape[:2],
                                                              strides, mode))
    padded = [x_shape[1 + d] + pads[d][0] + pads[d][1] for d in range(2)]
    if any(p < k for p, k in zip(padded, k_shape[:2])):
        raise TollError(f"a {k_shape[0]}×{k_shape[1]} kernel does not fit the "
                        f"{padded[0]}×{padded[1]} (padded) input: the convolution has no output "
                        "position; use a smaller kernel or more padding")
    return pads


def conv_fast(x: jnp.ndarray, kernel: jnp.ndarray, stride: Stride = 1,
              padding: Padding = "VALID") -> jnp.ndarray:
    """Same values and gradients as :func:`conv_plain`, as GEMMs (module doc); any padding:
    the input is padded (or cropped) first, then convolved VALID."""
    _check(x, kernel)
    strides = _pair(stride)
    pads = _conv_pads(x.shape, kernel.shape, strides, padding)
    x = _pad_hw(x, pads)
    if _conv_uses_transposed(x.shape, kernel.shape, strides):
        # The transposed conv with (0, 0) padding of its input crops k − 1 from each end of
        # the full one, which leaves exactly the VALID correlation (see the rule's docstring).
        return _from_full_transposed(_ct_fast(x, kernel, strides), kernel.shape[:2], strides,
                                     ((0, 0), (0, 0)))
    return _conv_fast(x, kernel, strides)


def conv_onednn(x: jnp.ndarray, kernel: jnp.ndarray, stride: Stride = 1,
                padding: Padding = "VALID") -> jnp.ndarray:
    """Same values and gradients as :func:`conv_plain`, by oneDNN (:mod:`tolljax.onednn`);
    negative padding crops first; non-float32 inputs, and geometries for which oneDNN has
    only its reference loops, take :func:`conv_fast`."""
    _check(x, kernel)
    strides = _pair(stride)
    pads = _conv_pads(x.shape, kernel.shape, strides, padding)
    cropped = _pad_hw(x, [(min(lo, 0), min(hi, 0)) for lo, hi in pads])
    zero_pads = tuple((max(lo, 0), max(hi, 0)) for lo, hi in pads)
    if (x.dtype != jnp.float32 or kernel.dtype != jnp.float32
            or not onednn.conv_supported(cropped.shape[-4:], kernel.shape, strides, zero_pads)):
        return conv_fast(x, kernel, stride, padding)
    return onednn.conv(cropped, kernel, strides, zero_pads)


CONV_FUNCTIONS: dict[str, Callable] = {"plain": conv_plain, "fast": conv_fast,
                                       "onednn": conv_onednn}


def conv(x: jnp.ndarray, kernel: jnp.ndarray, stride: Stride = 1, impl: str = "auto",
         padding: Padding = "VALID") -> jnp.ndarray:
    """Convolution (flax convention) by ``impl`` (see :func:`resolve_conv_impl`)."""
    return CONV_FUNCTIONS[resolve_conv_impl(impl)](x, kernel, stride, padding)


# ------------------------------------------------------------------------------ flax modules


class _ConvBase(nn.Module):
    """Shared fields of :class:`ConvTranspose` and :class:`Conv` (flax's names and defaults,
    ``padding="SAME"`` included; the functions of this module default to VALID)."""

    features: int
    kernel_size: int | Sequence[int]
    strides: int | Sequence[int] = 1
    padding: Any = "SAME"
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()
    impl: str = "auto"

    def _params(self, inputs):
        if inputs.ndim != 4:
            raise TollError(f"{type(self).__name__} takes NHWC inputs, got shape {inputs.shape}")
        kernel = self.param("kernel", self.kernel_init,
                            (*_pair(self.kernel_size), inputs.shape[-1], self.features),
                            self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        return nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)

    def _padding(self):
        if isinstance(self.padding, str):
            if self.padding.upper() not in ("VALID", "SAME"):
                raise TollError(f"{type(self).__name__}: padding {self.padding!r} is not "
                                f"supported (VALID, SAME or explicit pairs)")
            return self.padding.upper()
        return nn.linear.canonicalize_padding(self.padding, 2)

    # Set by each subclass: how ``impl`` is resolved, the implementations by name, and the
    # plain ``lax`` operation used for an explicit precision.
    _resolve: ClassVar[Callable[[str], str]]
    _functions: ClassVar[dict[str, Callable]]
    _plain: ClassVar[Callable]

    @nn.compact
    def __call__(self, inputs: jnp.ndarray) -> jnp.ndarray:
        inputs, kernel, bias = self._params(inputs)
        strides = _pair(self.strides)
        impl, padding = type(self)._resolve(self.impl), self._padding()
        if impl == "plain" or self.precision is not None:
            y = type(self)._plain(inputs, kernel, strides, padding, dimension_numbers=_DN,
                                  precision=self.precision)
        else:
            y = self._functions[impl](inputs, kernel, strides, padding)
        return y if bias is None else y + bias.reshape(1, 1, 1, -1)


class ConvTranspose(_ConvBase):
    """2-D ``flax.linen.ConvTranspose`` (``transpose_kernel=False``) with a CPU fast path.

    Parameters ``kernel`` ``(kh, kw, in, features)`` and ``bias`` ``(features,)`` as flax's
    layer (created in the same order, same default initialisers: a given key gives identical
    values); the same output for every padding. ``impl``: ``"auto"`` (:func:`resolve_impl`:
    ``onednn`` or ``fast`` on CPU, ``plain`` on GPU/TPU; ``$TOLLJAX_CONV_TRANSPOSE``
    overrides), ``"plain"``, ``"fast"``, ``"matmul"``, ``"onednn"``, ``"phases"``.
    Padding VALID, SAME or explicit ``(lo, hi)`` pairs on every path; an explicit
    ``precision`` always takes the plain layer.
    """

    _resolve = resolve_impl
    _functions = IMPL_FUNCTIONS
    _plain = lax.conv_transpose


class Conv(_ConvBase):
    """2-D ``flax.linen.Conv`` (no dilation, one feature group) with a CPU fast path.

    Same parameters, creation order and initialisers as flax's layer. ``impl``: ``"auto"``
    (:func:`resolve_conv_impl`: ``onednn`` or ``fast`` on CPU, ``plain`` on GPU/TPU;
    ``$TOLLJAX_CONV`` overrides), ``"plain"``, ``"fast"``, ``"onednn"``. Padding VALID, SAME
    or explicit ``(lo, hi)`` pairs on every path; an explicit ``precision`` always takes the
    plain layer.
    """

    _resolve = resolve_conv_impl
    _functions = CONV_FUNCTIONS
    _plain = lax.conv_general_dilated
