"""A Python function as an XLA:CPU custom call (typed FFI), with no compiled code.

:func:`register` turns ``fn(ins, outs)`` into an FFI target: a ``ctypes`` trampoline that
reads XLA's ``XLA_FFI_CallFrame`` (``xla/ffi/api/c_api.h`` in ``jax.ffi.include_dir()``) and
hands ``fn`` each operand and result as ``(pointer, shape, dtype)``; ``fn`` writes the results
in place (here: oneDNN, which releases the GIL while it computes). Called through
``jax.ffi.ffi_call`` it works under ``jit``, ``lax.scan``, ``vmap`` and on several host
devices; a call costs ~2 µs beyond ``fn`` (``jax.pure_callback``: ~45 µs plus copies).

Why ctypes instead of a compiled extension: the package stays pure Python (no build step,
no compiler on the user's machine), and the per-call overhead is negligible next to the
millisecond-scale convolutions it runs.
"""
from __future__ import annotations

import ctypes as C
import os
import re
import sys
import threading
import traceback
from typing import Callable, Sequence

import jax
import numpy as np

_P = C.c_void_p


def _api_version() -> tuple[int, int]:
    """The FFI API version the handler declares: XLA rejects versions outside the range it
    supports, so take the one of the header shipped with this jaxlib."""
    try:
        with open(os.path.join(jax.ffi.include_dir(), "xla/ffi/api/c_api.h")) as f:
            src = f.read()
        return tuple(int(re.search(rf"#define XLA_FFI_API_{k}\s+(\d+)", src).group(1))
                     for k in ("MAJOR", "MINOR"))
    except (OSError, AttributeError):
        return (0, 1)


_API_MAJOR, _API_MINOR = _api_version()


class _Ext(C.Structure):  # XLA_FFI_Extension_Base
    _fields_ = [("struct_size", C.c_size_t), ("type", C.c_int), ("next", _P)]


class _ApiVersion(C.Structure):  # XLA_FFI_Api_Version
    _fields_ = [("struct_size", C.c_size_t), ("extension_start", _P),
                ("major_version", C.c_int), ("minor_version", C.c_int)]


class _Metadata(C.Structure):  # XLA_FFI_Metadata
    _fields_ = [("struct_size", C.c_size_t), ("api_version", _ApiVersion),
                ("traits", C.c_uint32), ("state_type_id", C.c_int64)]


class _MetadataExt(C.Structure):  # XLA_FFI_Metadata_Extension
    _fields_ = [("base", _Ext), ("metadata", C.POINTER(_Metadata))]


class _Buffer(C.Structure):  # XLA_FFI_Buffer
    _fields_ = [("struct_size", C.c_size_t), ("extension_start", _P), ("dtype", C.c_int),
                ("data", _P), ("rank", C.c_int64), ("dims", C.POINTER(C.c_int64))]


class _Args(C.Structure):  # XLA_FFI_Args and XLA_FFI_Rets (same layout)
    _fields_ = [("struct_size", C.c_size_t), ("extension_start", _P), ("size", C.c_int64),
                ("types", C.POINTER(C.c_int)), ("ptrs", C.POINTER(C.POINTER(_Buffer)))]


class _Attrs(C.Structure):  # XLA_FFI_Attrs
    _fields_ = [("struct_size", C.c_size_t), ("extension_start", _P), ("size", C.c_int64),
                ("types", _P), ("names", _P), ("attrs", _P)]


class _ErrorCreateArgs(C.Structure):  # XLA_FFI_Error_Create_Args
    _fields_ = [("struct_size", C.c_size_t), ("extension_start", _P),
                ("message", C.c_char_p), ("errc", C.c_int)]


_ErrorCreate = C.CFUNCTYPE(_P, C.POINTER(_ErrorCreateArgs))


class _Api(C.Structure):  # XLA_FFI_Api, up to the one function used
    _fields_ = [("struct_size", C.c_size_t), ("extension_start", _P),
                ("api_version", _ApiVersion), ("internal_api", _P),
                ("XLA_FFI_Error_Create", _ErrorCreate)]


class _CallFrame(C.Structure):  # XLA_FFI_CallFrame
    _fields_ = [("struct_size", C.c_size_t), ("extension_start", C.POINTER(_Ext)),
                ("api", C.POINTER(_Api)), ("ctx", _P), ("stage", C.c_int),
                ("args", _Args), ("rets", _Args), ("attrs", _Attrs), ("future", _P)]


_EXTENSION_METADATA, _STAGE_EXECUTE, _ARG_BUFFER, _ERRC_UNKNOWN = 1, 3, 1, 2
_HANDLER = C.CFUNCTYPE(_P, C.POINTER(_CallFrame))
_DTYPES = {11: np.dtype(np.float32), 12: np.dtype(np.float64), 4: np.dtype(np.int32)}

Operand = tuple[int, tuple[int, ...], np.dtype]  # (pointer, shape, dtype)

_fns: dict[str, Callable[[list[Operand], list[Operand]], None]] = {}
_keepalive: dict[str, object] = {}  # the trampolines must outlive every executable
_thread = threading.local()
_PyGILState_Ensure = C.pythonapi.PyGILState_Ensure
_PyGILState_Ensure.restype = C.c_int


def _operands(a: _Args) -> list[Operand]:
    out = []
    for i in range(a.size):
        if a.types[i] != _ARG_BUFFER:
            raise TypeError(f"unsupported FFI operand kind {a.types[i]}")
        b = a.ptrs[i][0]
        out.append((b.data or 0, tuple(b.dims[:b.rank]), _DTYPES.get(b.dtype, b.dtype)))
    return out


def _metadata(frame: _CallFrame):
    ext = frame.extension_start
    while ext:
        if ext[0].type == _EXTENSION_METADATA:
            return C.cast(ext, C.POINTER(_MetadataExt))[0]
        ext = C.cast(ext[0].next, C.POINTER(_Ext))
    return None


def _trampoline(name: str):
    def handler(frame_p):
        frame = frame_p[0]
        try:
            ext = _metadata(frame)
            if ext is not None:  # XLA's version query at registration
                md = ext.metadata[0]
                md.api_version.struct_size = C.sizeof(_ApiVersion)
                md.api_version.major_version = _API_MAJOR
                md.api_version.minor_version = _API_MINOR
                md.traits = 0
                md.state_type_id = 0
                return None
            if frame.stage != _STAGE_EXECUTE:
                return None
            if not getattr(_thread, "pinned", False):
                # ctypes would create and destroy a Python thread state on each call from
                # an XLA worker thread (~8 µs); one never-released Ensure keeps it.
                _PyGILState_Ensure()
                _thread.pinned = True
            _fns[name](_operands(frame.args), _operands(frame.rets))
            return None
        except BaseException as e:  # an escaping exception would read as success
            msg = f"{name}: {type(e).__name__}: {e}\n{traceback.format_exc()}"
            if not frame.api:
                print(msg, file=sys.stderr)
                return None
            args = _ErrorCreateArgs(C.sizeof(_ErrorCreateArgs), None,
                                    msg.encode(errors="replace"), _ERRC_UNKNOWN)
            return frame.api[0].XLA_FFI_Error_Create(C.byref(args))

    return handler


def register(name: str, fn: Callable[[list[Operand], list[Operand]], None]) -> None:
    """Make ``fn(ins, outs)`` the CPU FFI target ``name`` (again: re-binds ``fn``; XLA refuses
    a second handler under one name)."""
    _fns[name] = fn
    if name in _keepalive:
        return
    trampoline = _HANDLER(_trampoline(name))
    _keepalive[name] = trampoline
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(trampoline), platform="cpu",
                                api_version=1)


def call(name: str, results: jax.ShapeDtypeStruct | Sequence[jax.ShapeDtypeStruct],
         *args: jax.Array, vmap_method: str = "broadcast_all") -> jax.Array | list[jax.Array]:
    """Call target ``name`` on ``args`` (``jax.ffi.ffi_call``)."""
    return jax.ffi.ffi_call(name, results, vmap_method=vmap_method)(*args)


def as_array(ptr: int, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """A writable NumPy view of an XLA buffer (no copy)."""
    return np.ctypeslib.as_array(C.cast(ptr, C.POINTER(np.ctypeslib.as_ctypes_type(dtype))),
                                 tuple(shape))
