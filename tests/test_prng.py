"""The unrolled CPU threefry lowering (tolljax.prng): same bits as JAX's rolled loop."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax._src.random import threefry2x32 as threefry

from tolljax import prng


def test_unrolled_and_rolled_threefry_give_identical_bits():
    rng = np.random.default_rng(0)
    k1, k2 = (jnp.asarray(rng.integers(0, 2**32, (), dtype=np.uint32)) for _ in range(2))
    x1, x2 = (jnp.asarray(rng.integers(0, 2**32, (1000,), dtype=np.uint32)) for _ in range(2))
    rolled = jax.jit(lambda *a: threefry._threefry2x32_lowering(*a, use_rolled_loops=True))
    unrolled = jax.jit(lambda *a: threefry._threefry2x32_lowering(*a, use_rolled_loops=False))
    for a, b in zip(rolled(k1, k2, x1, x2), unrolled(k1, k2, x1, x2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_random_draws_compile_without_loops():
    assert prng.UNROLLED
    draw = jax.jit(lambda key: jax.random.bits(key, (4,), jnp.uint32))
    assert "while" not in draw.lower(jax.random.key(0)).compile().as_text()


def test_draws_equal_those_of_jax_default_lowering_in_a_fresh_process():
    code = ("import jax, numpy as np, tolljax.models; from tolljax import prng; "
            "assert prng.UNROLLED == ({unrolled}); "
            "k = jax.random.split(jax.random.key(3), 3); "
            "print(np.asarray(jax.jit(lambda k: jax.random.uniform(k[1], (7,)))(k)).tobytes().hex(), "
            "np.asarray(jax.jit(lambda k: jax.random.permutation(k[2], 50))(k)).tobytes().hex())")
    outs = []
    for rolled in ("1", ""):
        env = {**os.environ, prng.ENV_VAR: rolled}
        proc = subprocess.run([sys.executable, "-c", code.format(unrolled=not rolled)], env=env,
                              capture_output=True, text=True, check=True)
        outs.append(proc.stdout)
    assert outs[0] == outs[1] and outs[0].strip()
