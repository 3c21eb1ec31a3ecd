"""tolljax._ffi: a Python function as an XLA:CPU custom call, checked against jnp."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from tolljax import _ffi

SDS = jax.ShapeDtypeStruct


def _matmul(ins, outs):
    """outs[0] = a @ b and outs[1] = a @ b + c on the buffers themselves (no copies)."""
    (pa, sa, da), (pb, sb, db), (pc, sc, dc) = ins
    (p0, s0, d0), (p1, s1, d1) = outs
    assert da == db == dc == d0 == d1 == np.float32
    product = _ffi.as_array(p0, s0, d0)
    np.matmul(_ffi.as_array(pa, sa, da), _ffi.as_array(pb, sb, db), out=product)
    np.add(product, _ffi.as_array(pc, sc, dc), out=_ffi.as_array(p1, s1, d1))


_ffi.register("tolljax_test_matmul", _matmul)


def ffi_matmul(a, b, c):
    out = SDS(a.shape[:-1] + b.shape[-1:], jnp.float32)
    return _ffi.call("tolljax_test_matmul", (out, out), a, b, c)


def _arrays(seed, lead=()):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.standard_normal((*lead, *s)), jnp.float32)
            for s in ((5, 7), (7, 3), (5, 3))]


def test_results_match_jnp_under_jit():
    a, b, c = _arrays(0)
    p, q = jax.jit(ffi_matmul)(a, b, c)
    np.testing.assert_allclose(p, a @ b, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(q, a @ b + c, rtol=1e-6, atol=1e-6)


def test_inside_a_scan_every_step_sees_the_current_carry():
    rng = np.random.default_rng(1)
    a, b, c = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((5, 7), (7, 7), (5, 7)))
    b = 0.3 * b

    def step(matmul):
        def body(x, _):
            p, q = matmul(x, b, c)
            return q, p.sum()
        return jax.jit(lambda a: lax.scan(body, a, None, length=20))

    got = step(ffi_matmul)(a)
    want = step(lambda x, b, c: (x @ b, x @ b + c))(a)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_vmap_broadcasts_unbatched_operands():
    a, b, c = _arrays(2, lead=(4,))
    _, b1, c1 = _arrays(3)
    p, q = jax.jit(jax.vmap(ffi_matmul, in_axes=(0, None, 0)))(a, b1, c)
    np.testing.assert_allclose(p, a @ b1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(q, a @ b1 + c, rtol=1e-6, atol=1e-6)


def test_an_exception_in_the_function_is_an_error_naming_the_target():
    def fail(ins, outs):
        raise ValueError("no such geometry")

    _ffi.register("tolljax_test_fail", fail)
    x = jnp.ones((3,), jnp.float32)
    with pytest.raises(Exception, match="tolljax_test_fail: ValueError: no such geometry"):
        jax.block_until_ready(jax.jit(lambda x: _ffi.call("tolljax_test_fail", SDS((3,), jnp.float32), x))(x))
    # the process stays usable, and re-registering re-binds the function
    _ffi.register("tolljax_test_fail", lambda ins, outs: _ffi.as_array(*outs[0]).fill(7.0))
    y = jax.jit(lambda x: _ffi.call("tolljax_test_fail", SDS((3,), jnp.float32), x))(x + 1)
    np.testing.assert_array_equal(y, np.full(3, 7.0, np.float32))
