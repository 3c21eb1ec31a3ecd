"""Threefry on CPU as straight-line code: the same random bits, compiled faster.

JAX lowers its threefry2x32 hash (every ``jax.random`` draw) differently by backend: on
GPU/TPU as 20 unrolled rounds, on CPU as a ``fori_loop`` over 5 groups of 4 rounds, which
keeps the HLO small. In XLA:CPU every such loop is a ``while`` of its own — ~16 kernels and
13 copies for each draw site, and one more loop launched on every training step to sample
the batch. Lowering it unrolled on CPU too computes bit-identical values (the same uint32
additions, rotations and xors in the same order; tested in ``tests/test_prng.py``) and
removes those loops.

Measured on the Arrhythmia protocol (10 seeds, 2 CPU devices, 2-core Xeon): 239 → 163
compiled kernels and 3.2 → 2.9 s of compilation, identical results.

:func:`unroll_threefry_on_cpu` is applied when tolljax is imported; it uses JAX's lowering
registry (``jax._src``, not public API) and silently keeps JAX's default where that registry
has changed shape. ``TOLLJAX_ROLLED_THREEFRY=1`` keeps JAX's rolled lowering.
"""
from __future__ import annotations

import os

ENV_VAR = "TOLLJAX_ROLLED_THREEFRY"


def unroll_threefry_on_cpu() -> bool:
    """Register JAX's unrolled threefry lowering for the CPU platform; True if it applied.

    Affects programs lowered after the call (jit caches keyed on earlier lowerings keep
    theirs). Idempotent.
    """
    if os.environ.get(ENV_VAR, "").strip() not in ("", "0"):
        return False
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as threefry
        rule = threefry._threefry2x32_lowering_rule  # the GPU/TPU (unrolled) lowering
        mlir.register_lowering(threefry.threefry2x32_p, rule, platform="cpu")
    except (ImportError, AttributeError):  # a JAX whose internals moved: keep its default
        return False
    return True


UNROLLED = unroll_threefry_on_cpu()
