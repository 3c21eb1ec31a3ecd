"""oneDNN convolutions inside XLA:CPU programs: ``impl="onednn"`` of :mod:`tolljax.ops`, the
CPU default wherever the library is installed.

Why: XLA:CPU's own convolutions are slow to differentiate, and the GEMM formulation in
:mod:`tolljax.ops` spends most of its time in XLA's GEMMs and im2col gathers. oneDNN (the
library PyTorch's CPU convolutions use) runs forward, input-gradient and kernel-gradient
convolutions directly on NHWC tensors with JIT-generated AVX-512 kernels: forward and both
gradients of CIFAR-10's transposed 28→32 5×5 layer at batch 64 take 22.9 ms against 75.5 ms
on the GEMM path (PyTorch: 28.1 ms; README, ``bench_conv_layers.py``). Layers that are one
GEMM (1×1 kernels or outputs) and single-channel sides stay on the GEMM path
(:data:`MIN_OUTPUT_PIXELS`), as do regular
convolutions with ≥ 512 output channels (:data:`CONV_GEMM_OUT_CHANNELS`). Whole train steps at
batch 64 (scan×5): MNIST 0.80×, CIFAR-10 0.60× the GEMM path's time (README, Performance).

How: each convolution geometry gets three oneDNN primitives (forward, backward-data,
backward-weights), created once and cached, all on oneDNN's preferred blocked kernel layout
(the plain HWIO kernel is reordered to it, and the kernel gradient back, at each call); a
jitted program calls them through XLA custom calls (:mod:`tolljax._ffi`: a ctypes
trampoline, no compiled extension), with zero-copy access to XLA's buffers. The library is
the ``onednn-cpu-gomp`` wheel (oneDNN 3.2, GNU OpenMP threading; Apache-2.0; a dependency on
Linux x86-64), loaded with ctypes; the constants below are from its headers
(``dnnl_types.h``, ``dnnl_common_types.h``).

Conventions are :mod:`tolljax.ops`'s (NHWC, kernel ``(kh, kw, in, out)``). A transposed
convolution (flax convention) is the backward-data pass of the regular convolution that
maps its *output* back onto its input: kernel ``flip(K)`` with in/out swapped
(:func:`_flip_io`), VALID, stride s, which yields the full ``(n − 1)·s + k`` output.
Leading (``vmap``) axes are looped over inside the call (an operand not batched along one is
read in place, not broadcast). float32 only.
"""
from __future__ import annotations

import contextlib
import ctypes as C
import functools
import importlib.metadata
import os
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tolljax import _ffi
from tolljax.errors import TollError

LIBRARY_ENV_VAR = "TOLLJAX_ONEDNN_LIBRARY"
DISTRIBUTION = "onednn-cpu-gomp"

_F32 = 3                                       # dnnl_f32
_TAG_ANY, _TAG_NHWC = 1, 22                    # dnnl_format_tag_any, dnnl_acdb
_TAG_HWIO = 28                                 # dnnl_cdba
_ENGINE_CPU, _STREAM_IN_ORDER = 1, 1
_FORWARD_TRAINING, _CONVOLUTION_DIRECT = 64, 1
_ARG_SRC, _ARG_DST, _ARG_WEIGHTS = 1, 17, 33
_ARG_DIFF_SRC, _ARG_DIFF_DST, _ARG_DIFF_WEIGHTS = 129, 145, 161
_QUERY_IMPL_INFO_STR, _QUERY_SCRATCHPAD_MD = 8, 136
_QUERY_WEIGHTS_MD, _QUERY_DIFF_WEIGHTS_MD = 131, 132
_ARG_SCRATCHPAD, _SCRATCHPAD_USER = 80, 1
_Dims = C.c_int64 * 12                         # dnnl_dims_t
_P = C.c_void_p


class _ExecArg(C.Structure):  # dnnl_exec_arg_t
    _fields_ = [("arg", C.c_int), ("memory", _P)]


def _library_path() -> str | None:
    path = os.environ.get(LIBRARY_ENV_VAR)
    if path:
        return path
    try:
        files = importlib.metadata.files(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == "libdnnl.so.3":
            return str(f.locate())
    return None


class _Dnnl:
    def __init__(self, path: str):
        self.lib = lib = C.CDLL(path)
        lib.dnnl_primitive_desc_query_md.restype = _P
        lib.dnnl_memory_desc_get_size.restype = C.c_size_t
        lib.dnnl_memory_desc_equal.restype = C.c_int
        self.engine = _P()
        self.check(lib.dnnl_engine_create(C.byref(self.engine), _ENGINE_CPU, C.c_size_t(0)),
                   "engine creation")
        # Scratch memory is ours (per calling thread), not the library's: XLA runs custom
        # calls from several threads at once.
        self.attr = _P()
        self.check(lib.dnnl_primitive_attr_create(C.byref(self.attr)), "attribute")
        self.check(lib.dnnl_primitive_attr_set_scratchpad_mode(self.attr,
                                                                C.c_int(_SCRATCHPAD_USER)),
                   "scratchpad mode")
        self._thread = threading.local()

    @staticmethod
    def check(status: int, what: str) -> None:
        if status != 0:
            raise TollError(f"oneDNN: {what} failed (dnnl_status_t {status})")

    def stream(self) -> _P:
        # A stream is not thread-safe and XLA calls from several worker threads.
        s = getattr(self._thread, "stream", None)
        if s is None:
            s = _P()
            self.check(self.lib.dnnl_stream_create(C.byref(s), self.engine,
                                                   C.c_uint(_STREAM_IN_ORDER)), "stream")
            self._thread.stream = s
        return s

    def md(self, dims, tag: int) -> _P:
        d = _P()
        self.check(self.lib.dnnl_memory_desc_create_with_tag(
            C.byref(d), C.c_int(len(dims)), _Dims(*dims), C.c_int(_F32), C.c_int(tag)),
            f"memory descriptor {list(dims)}")
        return d

    def primitive(self, pd: _P) -> _P:
        p = _P()
        self.check(self.lib.dnnl_primitive_create(C.byref(p), pd), "primitive creation")
        return p

    def implementation(self, pd: _P) -> str:
        s = C.c_char_p()
        self.check(self.lib.dnnl_primitive_desc_query(pd, C.c_int(_QUERY_IMPL_INFO_STR),
                                                      C.c_int(0), C.byref(s)), "query")
        return s.value.decode()

    def scratchpad(self, pd: _P) -> tuple[_P, int]:
        """The scratchpad descriptor of ``pd`` and its size in bytes."""
        md = _P(self.lib.dnnl_primitive_desc_query_md(pd, C.c_int(_QUERY_SCRATCHPAD_MD),
                                                      C.c_int(0)))
        return md, self.lib.dnnl_memory_desc_get_size(md)

    def scratch(self, nbytes: int) -> int:
        """A pointer to ≥ ``nbytes`` of this thread's scratch memory (grown as needed)."""
        buf = getattr(self._thread, "scratch", None)
        if buf is None or buf.nbytes < nbytes:
            buf = self._thread.scratch = np.empty(max(nbytes, 1 << 20) // 8 + 1, np.float64)
        return buf.ctypes.data

    def execute(self, primitive: _P, args, scratchpad: tuple[_P, int]) -> None:
        """Run ``primitive`` on ``args``: (DNNL_ARG_*, memory descriptor, data pointer)."""
        lib, handles = self.lib, []
        md, nbytes = scratchpad
        args = [*args, (_ARG_SCRATCHPAD, md, self.scratch(nbytes))]
        try:
            for _, md, ptr in args:
                h = _P()
                self.check(lib.dnnl_memory_create(C.byref(h), md, self.engine, _P(ptr)),
                           "memory")
                handles.append(h)
            exec_args = (_ExecArg * len(args))(
                *[_ExecArg(a, h) for (a, _, _), h in zip(args, handles)])
            s = self.stream()
            self.check(lib.dnnl_primitive_execute(primitive, s, C.c_int(len(args)),
                                                  exec_args), "execution")
            self.check(lib.dnnl_stream_wait(s), "stream wait")
        finally:
            for h in handles:
                lib.dnnl_memory_destroy(h)


@functools.cache
def _dnnl() -> _Dnnl | None:
    path = _library_path()
    if path is None:
        return None
    try:
        return _Dnnl(path)
    except OSError:
        return None


def available() -> bool:
    """Whether oneDNN can be loaded (the ``onednn-cpu-gomp`` wheel or
    ``$TOLLJAX_ONEDNN_LIBRARY``)."""
    return _dnnl() is not None


class _Version(C.Structure):  # dnnl_version_t
    _fields_ = [("major", C.c_int), ("minor", C.c_int), ("patch", C.c_int),
                ("hash", C.c_char_p), ("cpu_runtime", C.c_uint), ("gpu_runtime", C.c_uint)]


def version() -> str | None:
    """The loaded oneDNN's version, e.g. ``"3.2.0"``, or None where it is not installed."""
    d = _dnnl()
    if d is None:
        return None
    d.lib.dnnl_version.restype = C.POINTER(_Version)
    v = d.lib.dnnl_version().contents
    return f"{v.major}.{v.minor}.{v.patch}"


def _require() -> _Dnnl:
    if jax.default_backend() != "cpu":
        raise TollError(f"the oneDNN convolutions run on CPU only (backend here: "
                        f"{jax.default_backend()}); choose impl 'plain' or 'auto'")
    d = _dnnl()
    if d is None:
        raise TollError(
            f"the oneDNN convolutions need the {DISTRIBUTION} package (pip install "
            f"{DISTRIBUTION}) or ${LIBRARY_ENV_VAR} set to a libdnnl.so.3 (oneDNN 3.x); "
            f"else choose impl 'fast'")
    return d


@dataclass(frozen=True)
class Geometry:
    """A regular NHWC convolution: ``n`` images ``in_hw`` × ``cin`` → ``out_hw`` × ``cout``,
    kernel ``(kh, kw, cin, cout)``."""

    n: int
    in_hw: tuple[int, int]
    cin: int
    out_hw: tuple[int, int]
    cout: int
    kernel_hw: tuple[int, int]
    strides: tuple[int, int]
    pad_lo: tuple[int, int]
    pad_hi: tuple[int, int]

    @property
    def key(self) -> str:
        return "_".join(str(v) for v in (
            self.n, *self.in_hw, self.cin, *self.out_hw, self.cout, *self.kernel_hw,
            *self.strides, *self.pad_lo, *self.pad_hi))


class _Plan:
    """The three oneDNN primitives of one geometry, created once."""

    def __init__(self, g: Geometry):
        self._d = d = _require()  # the engine the primitives belong to
        lib, eng = d.lib, d.engine
        src = d.md([g.n, g.cin, *g.in_hw], _TAG_NHWC)
        dst = d.md([g.n, g.cout, *g.out_hw], _TAG_NHWC)
        w_plain = d.md([g.cout, g.cin, *g.kernel_hw], _TAG_HWIO)
        st, dl = _Dims(*g.strides), _Dims(0, 0)
        pl, pr = _Dims(*g.pad_lo), _Dims(*g.pad_hi)

        # All three passes on oneDNN's preferred (blocked) kernel layout, reordered from and to
        # the plain HWIO kernel at each call (≤ 0.8 ms for the largest kernel). On plain
        # kernels oneDNN 3.2 picks its GEMM-based backward kernels, which measured up to 4×
        # slower (CIFAR-10 transposed 28→32 32→32 5×5, batch 64: kernel gradient 30.6 vs
        # 6.9 ms, input gradient 18.3 vs 7.5 ms); on the largest layer they were at best
        # slightly faster (MNIST 10→7 256→512: kernel gradient 47 vs 48–55 ms).
        w_any = d.md([g.cout, g.cin, *g.kernel_hw], _TAG_ANY)
        pd_fwd, pd_bd, pd_bw = _P(), _P(), _P()
        d.check(lib.dnnl_convolution_forward_primitive_desc_create(
            C.byref(pd_fwd), eng, C.c_int(_FORWARD_TRAINING), C.c_int(_CONVOLUTION_DIRECT),
            src, w_any, None, dst, st, dl, pl, pr, d.attr), f"convolution forward for {g}")
        d.check(lib.dnnl_convolution_backward_data_primitive_desc_create(
            C.byref(pd_bd), eng, C.c_int(_CONVOLUTION_DIRECT), src, w_any, dst, st, dl,
            pl, pr, pd_fwd, d.attr), f"convolution backward-data for {g}")
        d.check(lib.dnnl_convolution_backward_weights_primitive_desc_create(
            C.byref(pd_bw), eng, C.c_int(_CONVOLUTION_DIRECT), src, w_any, None, dst, st,
            dl, pl, pr, pd_fwd, d.attr), f"convolution backward-weights for {g}")
        self.implementations = {name: d.implementation(pd) for name, pd in
                                (("forward", pd_fwd), ("backward_data", pd_bd),
                                 ("backward_weights", pd_bw))}
        self._fwd, self._bd, self._bw = (d.primitive(pd) for pd in (pd_fwd, pd_bd, pd_bw))
        self._scratch = {name: d.scratchpad(pd) for name, pd in
                         (("fwd", pd_fwd), ("bd", pd_bd), ("bw", pd_bw))}
        self._w_fwd = _Layout(d, w_plain, pd_fwd, _QUERY_WEIGHTS_MD)
        self._w_bd = _Layout(d, w_plain, pd_bd, _QUERY_WEIGHTS_MD)
        self._w_bw = _Layout(d, w_plain, pd_bw, _QUERY_DIFF_WEIGHTS_MD, output=True)
        self._pds = (pd_fwd, pd_bd, pd_bw)  # kept alive with the plan
        self.src, self.dst = src, dst

    def forward(self, x: int, w: int, y: int) -> None:
        wb = self._w_fwd.to_primitive(w)
        self._d.execute(self._fwd, [(_ARG_SRC, self.src, x), (_ARG_WEIGHTS, self._w_fwd.md, wb),
                                    (_ARG_DST, self.dst, y)], self._scratch["fwd"])

    def backward_data(self, dy: int, w: int, dx: int) -> None:
        wb = self._w_bd.to_primitive(w)
        self._d.execute(self._bd, [(_ARG_DIFF_DST, self.dst, dy),
                                   (_ARG_WEIGHTS, self._w_bd.md, wb),
                                   (_ARG_DIFF_SRC, self.src, dx)], self._scratch["bd"])

    def backward_weights(self, x: int, dy: int, dw: int) -> None:
        wb = self._w_bw.buffer(dw)
        self._d.execute(self._bw, [(_ARG_SRC, self.src, x), (_ARG_DIFF_DST, self.dst, dy),
                                   (_ARG_DIFF_WEIGHTS, self._w_bw.md, wb)], self._scratch["bw"])
        self._w_bw.from_primitive(wb, dw)


class _Layout:
    """The kernel layout one primitive uses (``query``: its weights or diff-weights) and the
    reorder between it and the plain HWIO kernel, if they differ; the blocked copy lives in
    a per-thread buffer (XLA may run a plan from several threads at once)."""

    def __init__(self, d: _Dnnl, plain: _P, pd: _P, query: int, output: bool = False):
        lib = d.lib
        self._d, self._plain = d, plain
        self.md = _P(lib.dnnl_primitive_desc_query_md(pd, C.c_int(query), C.c_int(0)))
        self._reorder = None
        if not lib.dnnl_memory_desc_equal(self.md, plain):
            src, dst = (self.md, plain) if output else (plain, self.md)
            pd_reorder = _P()
            d.check(lib.dnnl_reorder_primitive_desc_create(
                C.byref(pd_reorder), src, d.engine, dst, d.engine, d.attr), "kernel reorder")
            self._pd, self._reorder = pd_reorder, d.primitive(pd_reorder)
            self._scratch = d.scratchpad(pd_reorder)
            self._floats = -(-lib.dnnl_memory_desc_get_size(self.md) // 4)
            self._thread = threading.local()

    def buffer(self, plain_ptr: int) -> int:
        """Where the primitive reads or writes the kernel: the plain one, or a blocked copy."""
        if self._reorder is None:
            return plain_ptr
        buf = getattr(self._thread, "buf", None)
        if buf is None:
            buf = self._thread.buf = np.empty(self._floats, np.float32)
        return buf.ctypes.data

    def to_primitive(self, plain_ptr: int) -> int:
        ptr = self.buffer(plain_ptr)
        if ptr != plain_ptr:
            self._d.execute(self._reorder, [(_ARG_SRC, self._plain, plain_ptr),
                                            (_ARG_DST, self.md, ptr)], self._scratch)
        return ptr

    def from_primitive(self, ptr: int, plain_ptr: int) -> None:
        if ptr != plain_ptr:
            self._d.execute(self._reorder, [(_ARG_SRC, self.md, ptr),
                                            (_ARG_DST, self._plain, plain_ptr)], self._scratch)


_plans: dict[Geometry, _Plan] = {}


def plan(g: Geometry) -> _Plan:
    """The cached primitives of ``g`` (created on first use)."""
    p = _plans.get(g)
    if p is None:
        p = _plans[g] = _Plan(g)
    return p


# Which layers run here, from per-layer measurements (forward + both gradients, batch 64, in a
# lax.scan, GEMM path vs oneDNN, ms). oneDNN wins wherever the output has some extent and the
# kernel more than one tap: MNIST 25→22 64→128 137 vs 78, transposed 22→25 169 vs 89;
# CIFAR-10 28→13 32→64 18.0 vs 9.6, transposed 28→32 5×5 81 vs 24, first layer 3→32 5.2 vs
# 2.3; it ties at 4×4 outputs (CIFAR-10 10→4 128→256: 16.9 vs 17.8). It loses where the
# convolution is one GEMM, which XLA runs faster: a 1×1 output (CIFAR-10 4→1 256→512: 3.9 vs
# 29; transposed 1→4: 1.0 vs 2.9) or a 1×1 kernel (32×32 32→32: 2.8 vs 3.2; 1×1 512→512: 0.5
# vs 2.5), and on single-channel sides (MNIST 1→64 first layer: 1.7 vs 2.0; 64→1 last: 5.2 vs
# 6.2), where its kernels, vectorised over channels, run mostly empty lanes.
MIN_OUTPUT_PIXELS = 16
MIN_KERNEL_TAPS = 2
MIN_CHANNELS = 2
# Regular (not transposed) convolutions with this many output channels stay on the GEMM path:
# its im2col GEMM does 2·cout FLOPs per gathered patch element, which hides the gather (MNIST
# 10→7 256→512: 130 vs 150 ms), while at 256 oneDNN still wins or ties (MNIST 22→10 128→256:
# 88 vs 68 ms; CIFAR-10 10→4: 14.6 vs 15.1). The transposed layers' GEMM path differs (sub-pixel
# phases, overlap-adds): there oneDNN wins at 512 too (MNIST 7→10 512→256: 151 vs 142).
CONV_GEMM_OUT_CHANNELS = 512


@contextlib.contextmanager
def every_layer() -> Iterator[None]:
    """The size rule off (within the block, at trace time): every layer for which oneDNN has
    optimised kernels runs on oneDNN, e.g. to check its numbers or time it on every layer."""
    rule = {"MIN_OUTPUT_PIXELS": 1, "MIN_KERNEL_TAPS": 1, "MIN_CHANNELS": 1,
            "CONV_GEMM_OUT_CHANNELS": 1 << 62}
    module = globals()
    saved = {name: module[name] for name in rule}
    module.update(rule)
    try:
        yield
    finally:
        module.update(saved)


def conv_supported(x_shape: Sequence[int], k_shape: Sequence[int], strides: Sequence[int],
                   pads: Sequence[tuple[int, int]]) -> bool:
    """Whether this convolution runs on oneDNN: of a shape where it gains (see
    :data:`MIN_OUTPUT_PIXELS`) and with optimised (non-reference) kernels for all three
    passes (oneDNN's reference loops are orders of magnitude slower than the GEMM path)."""
    _require()  # oneDNN was asked for: say so if it cannot run, whatever the layer
    g = _conv_geometry(x_shape, k_shape, strides, pads)
    return g.cout < CONV_GEMM_OUT_CHANNELS and _worthwhile(g) and _optimised(plan(g))


def conv_transpose_supported(x_shape: Sequence[int], k_shape: Sequence[int],
                             strides: Sequence[int]) -> bool:
    """As :func:`conv_supported`, for a transposed convolution."""
    _require()
    g = _transposed_geometry(x_shape, k_shape, strides)
    return _worthwhile(g) and _optimised(plan(g))


def _worthwhile(g: Geometry) -> bool:
    return (g.out_hw[0] * g.out_hw[1] >= MIN_OUTPUT_PIXELS
            and g.kernel_hw[0] * g.kernel_hw[1] >= MIN_KERNEL_TAPS
            and min(g.cin, g.cout) >= MIN_CHANNELS)


def _optimised(p: _Plan) -> bool:
    return not any(impl.startswith("ref") for impl in p.implementations.values())


def _lead_strides(dims, lead: tuple[int, ...], nbytes: int) -> tuple[int, ...]:
    """Byte strides of an operand's leading (vmap) axes; 0 along an axis where the operand
    is unbatched (size 1 under ``vmap_method="expand_dims"``, shared by every index)."""
    shape = (1,) * (len(lead) - len(dims)) + tuple(dims)
    strides, step = [], nbytes
    for size in reversed(shape):
        strides.append(step if size > 1 else 0)
        step *= size
    return tuple(reversed(strides))


def _looped(run, sizes_in: tuple[int, ...], sizes_out: tuple[int, ...]):
    """An FFI function that runs ``run(*in_ptrs, *out_ptrs)`` once per leading (vmap) index;
    ``sizes_*``: bytes of one unbatched operand / result. An operand that is not batched
    along a vmap axis is passed once and read at every index of that axis, not copied."""

    def fn(ins, outs):
        lead = tuple(outs[0][1][:-4])
        operands = [*ins, *outs]
        strides = [_lead_strides(dims[:-4], lead, size)
                   for (_, dims, _), size in zip(operands, (*sizes_in, *sizes_out))]
        for idx in np.ndindex(*lead):
            run(*(p + sum(i * s for i, s in zip(idx, st))
                  for (p, _, _), st in zip(operands, strides)))

    return fn


def _nbytes(shape) -> int:
    return int(np.prod(shape, dtype=np.int64)) * 4


def _target(kind: str, g: Geometry, run, in_shapes, out_shapes) -> str:
    name = f"tolljax_onednn_{kind}_{g.key}"
    _ffi.register(name, _looped(run, tuple(map(_nbytes, in_shapes)),
                                tuple(map(_nbytes, out_shapes))))
    return name


def _call(name: str, out_shape, *args) -> jnp.ndarray:
    """Target ``name`` (made by :func:`_target`) on ``args``: one float32 result. Under vmap
    the operands keep unit axes where unbatched (``expand_dims``), which :func:`_looped`
    reads in place at every index."""
    return _ffi.call(name, jax.ShapeDtypeStruct(tuple(out_shape), jnp.float32), *args,
                     vmap_method="expand_dims")


# ------------------------------------------------------------------- regular convolution


def _conv_geometry(x_shape, k_shape, strides, pads) -> Geometry:
    n, h, w, cin = x_shape
    kh, kw, _, cout = k_shape
    out = tuple((size + lo + hi - k) // s + 1
                for size, (lo, hi), k, s in zip((h, w), pads, (kh, kw), strides))
    return Geometry(n, (h, w), cin, out, cout, (kh, kw), tuple(strides),
                    tuple(p[0] for p in pads), tuple(p[1] for p in pads))


def _conv_forward(x, kernel, strides, pads):
    g = _conv_geometry(x.shape, kernel.shape, strides, pads)
    p = plan(g)
    y_shape = (g.n, *g.out_hw, g.cout)
    name = _target("conv_fwd", g, p.forward, (x.shape, kernel.shape), (y_shape,))
    return _call(name, y_shape, x, kernel)


def _conv_backward(strides, pads, res, dy):
    # Two calls, so that XLA drops the input gradient where nothing uses it (a first layer).
    x, kernel = res
    g = _conv_geometry(x.shape, kernel.shape, strides, pads)
    p = plan(g)
    bd = _target("conv_bd", g, lambda w_, dy_, dx_: p.backward_data(dy_, w_, dx_),
                 (kernel.shape, dy.shape), (x.shape,))
    bw = _target("conv_bw", g, p.backward_weights, (x.shape, dy.shape), (kernel.shape,))
    return _call(bd, x.shape, kernel, dy), _call(bw, kernel.shape, x, dy)


conv = jax.custom_vjp(_conv_forward, nondiff_argnums=(2, 3))
conv.defvjp(lambda x, kernel, strides, pads: (_conv_forward(x, kernel, strides, pads),
                                              (x, kernel)),
            _conv_backward)
conv.__doc__ = """VALID-or-zero-padded NHWC convolution, float32: ``pads`` ((lo, hi), (lo, hi)) ≥ 0."""


# ---------------------------------------------------------------- transposed convolution


def _transposed_geometry(x_shape, k_shape, strides) -> Geometry:
    """The regular convolution whose backward-data pass is the full transposed conv."""
    n, h, w, cin = x_shape
    kh, kw, _, cout = k_shape
    full = ((h - 1) * strides[0] + kh, (w - 1) * strides[1] + kw)
    return Geometry(n, full, cout, (h, w), cin, (kh, kw), tuple(strides), (0, 0), (0, 0))


def _flip_io(kernel):
    """flip(K) with in/out swapped, the regular convolution's kernel (an involution). oneDNN's
    fast backward kernels take only this (kh, kw, in, out) layout; with flip(K) as
    (kh, kw, out, in) it falls back to its reference loops."""
    return jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))


def _ct_apply(x, w, strides):
    """The forward pass on ``w = _flip_io(kernel)``, the regular convolution's kernel."""
    g = _transposed_geometry(x.shape, _flip_io_shape(w.shape), strides)
    p = plan(g)
    y_shape = (g.n, *g.in_hw, g.cin)
    name = _target("ct_fwd", g, lambda x_, w_, y_: p.backward_data(x_, w_, y_),
                   (x.shape, w.shape), (y_shape,))
    return _call(name, y_shape, x, w)


def _flip_io_shape(shape):
    kh, kw, a, b = shape
    return kh, kw, b, a


def _ct_forward(x, kernel, strides):
    return _ct_apply(x, _flip_io(kernel), strides)


def _ct_forward_with_residuals(x, kernel, strides):
    w = _flip_io(kernel)  # kept for the backward pass, which needs the same flipped copy
    return _ct_apply(x, w, strides), (x, w)


def _ct_backward(strides, res, dy):
    x, w = res
    g = _transposed_geometry(x.shape, _flip_io_shape(w.shape), strides)
    p = plan(g)
    bd = _target("ct_bd", g, p.forward, (dy.shape, w.shape), (x.shape,))
    bw = _target("ct_bw", g, lambda x_, dy_, dw_: p.backward_weights(dy_, x_, dw_),
                 (x.shape, dy.shape), (w.shape,))
    return _call(bd, x.shape, dy, w), _flip_io(_call(bw, w.shape, x, dy))


conv_transpose_full = jax.custom_vjp(_ct_forward, nondiff_argnums=(2,))
conv_transpose_full.defvjp(_ct_forward_with_residuals, _ct_backward)
conv_transpose_full.__doc__ = """The full flax-convention transposed convolution, float32:
``(n − 1)·s + k`` per axis (the caller pads or crops for its padding)."""
