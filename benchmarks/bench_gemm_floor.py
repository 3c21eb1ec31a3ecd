"""GEMM floor of a train step: its matrix products alone, XLA vs PyTorch, next to the whole steps.

Every matrix product (``dot_general``) of tolljax's train step — forward, input gradients and
kernel gradients, as the GEMM path (``tolljax.ops``, impl ``fast``) lowers the convolutions — is read from
the step's jaxpr and timed on its own, with the same operand shapes and transposes:

* XLA: the product alone in a jitted ``lax.scan`` of ``--reps`` iterations (so that buffers are
  allocated once per call, as inside the protocol), each iteration depending on the previous
  one so that XLA cannot hoist it out of the loop; a transposed operand is passed as the
  transpose of a row-major array, which XLA folds into the product exactly as in the step;
* PyTorch: ``torch.matmul(a, b, out=preallocated)`` on the same (transposed-view) operands
  (MKL / oneDNN, default threads).

Their sums are the time the step's GEMMs need at each library's speed; printed next to the
whole steps (tolljax ``scan×5`` as the protocol runs them, PyTorch's eager step, timed
alternately in the same run) they show how much of the gap between the whole steps is GEMM
speed and how much the rest (im2col gathers, overlap-adds, BatchNorm, Adam).

    python benchmarks/bench_gemm_floor.py [--models mnist cifar10] [--batch 64] [--reps 5]
        [--repeats 3] [--json OUT]

PyTorch (benchmark only): ``pip install torch==2.13.0``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from jax import lax  # noqa: E402

from benchmarks._cli import positive_int, require_torch  # noqa: E402

torch = require_torch("bench_gemm_floor.py")

from benchmarks.bench_train_step import TorchRunner  # noqa: E402
from benchmarks.jax_steps import MODELS, JaxRunner, set_impls, step_flops, timed_steps  # noqa: E402
from tolljax.models import build_model, sample_shape  # noqa: E402
from tolljax.train import create_train_state, subjaxprs, train_step  # noqa: E402


def step_gemms(dataset: str, batch_size: int) -> list[dict]:
    """The train step's matrix products: 2-D operand shapes (before any transpose), which
    operand is transposed, and how often each runs per step (scan lengths multiplied)."""
    set_impls("fast", "fast")  # the GEMM path (oneDNN, the CPU default, has no XLA GEMMs
    # for most layers); step_flops sets "plain"
    model = build_model(dataset)
    state = jax.eval_shape(lambda: create_train_state(
        model, jax.random.key(0), sample_shape(dataset), optax.adam(1e-3)))
    x = jax.ShapeDtypeStruct((batch_size, *sample_shape(dataset)), jnp.float32)
    closed = jax.make_jaxpr(lambda s, b: train_step(s, b, 1.0))(state, x)
    found: dict[tuple, dict] = {}

    def walk(jaxpr, mult):
        producer = {v: e for e in jaxpr.eqns for v in e.outvars}
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                (contract, batch) = eqn.params["dimension_numbers"]
                if batch != ((), ()) or any(v.aval.ndim != 2 for v in eqn.invars):
                    raise SystemExit(f"unsupported product in the {dataset} step: "
                                     f"{eqn.params['dimension_numbers']}")
                operands = []
                for side, var in enumerate(eqn.invars):
                    src = producer.get(var)
                    transposed = (src is not None and src.primitive.name == "transpose"
                                  and tuple(src.params["permutation"]) == (1, 0))
                    shape = tuple(var.aval.shape)
                    # contracting on the "wrong" side of an operand is also a transpose
                    flip = contract[side][0] != (1 if side == 0 else 0)
                    operands.append((shape[::-1] if transposed else shape, transposed ^ flip))
                key = tuple(operands)
                (a_shape, a_t), (b_shape, b_t) = operands
                m, k = a_shape[::-1] if a_t else a_shape
                n = b_shape[0] if b_t else b_shape[1]
                entry = found.setdefault(key, {"a": a_shape, "a_t": a_t, "b": b_shape,
                                               "b_t": b_t, "mkn": (m, k, n), "count": 0})
                entry["count"] += mult
            length = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
            for sub in subjaxprs(eqn):
                walk(sub, mult * length)

    walk(closed.jaxpr, 1)
    if not found:
        raise SystemExit(f"no matrix products in the {dataset} step: are the convolutions on "
                         f"the plain path ($TOLLJAX_CONV / $TOLLJAX_CONV_TRANSPOSE)?")
    return list(found.values())


def _xla_gemm(g: dict, reps: int):
    """A compiled scan of ``reps`` dependent products of ``g``'s shapes (see module doc)."""
    a_size, b_size = np.prod(g["a"]), np.prod(g["b"])

    def body(carry, _):
        a, b, c = carry
        # one element of the smaller operand moves with the carried scalar (an in-place
        # update): each product depends on the previous one at no measurable cost
        if a_size <= b_size:
            a = a.at[0, 0].add(1e-30 * c)
        else:
            b = b.at[0, 0].add(1e-30 * c)
        y = jnp.matmul(a.T if g["a_t"] else a, b.T if g["b_t"] else b)
        idx = (c > 1e30).astype(jnp.int32)  # a runtime index: XLA cannot slice the product
        return (a, b, c + lax.dynamic_index_in_dim(y.reshape(-1), idx, 0, False)), None

    def run(a, b):
        return lax.scan(body, (a, b, jnp.float32(0.0)), None, length=reps)[0][2]

    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal(g["a"], dtype=np.float32))
    b = jnp.asarray(rng.standard_normal(g["b"], dtype=np.float32))
    compiled = jax.jit(run).lower(a, b).compile()
    return lambda: compiled(a, b).block_until_ready()


def _torch_gemm(g: dict):
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.standard_normal(g["a"], dtype=np.float32))
    b = torch.from_numpy(rng.standard_normal(g["b"], dtype=np.float32))
    a, b = (a.T if g["a_t"] else a), (b.T if g["b_t"] else b)  # views: MKL's transpose flags
    out = torch.empty(g["mkn"][0], g["mkn"][2])
    return lambda: torch.matmul(a, b, out=out)


def _label(g: dict) -> str:
    m, k, n = g["mkn"]
    form = ("T" if g["a_t"] else "N") + ("T" if g["b_t"] else "N")
    return f"{m}×{k}·{k}×{n} {form}"


def bench_model(dataset: str, batch_size: int, reps: int, repeats: int, scan: int) -> dict:
    # whole steps first, on a fresh heap (before the products' large buffers come and go)
    batch = np.random.default_rng(0).standard_normal(
        (batch_size, *sample_shape(dataset))).astype(np.float32)
    steps = {"tolljax": JaxRunner(dataset, batch, "fast", "fast", scan=scan),
             "torch": TorchRunner(dataset, batch)}
    for r in steps.values():
        for _ in range(2):
            r.step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, r in steps.items():
            k = getattr(r, "steps_per_call", 1)
            times[name].append(1e3 * timed_steps(r.step, max(1, 5 // k), 1.0) / k)
    label = steps["tolljax"].label
    del steps
    gemms = step_gemms(dataset, batch_size)
    for g in gemms:
        g["gflop"] = 2 * np.prod(g["mkn"]) * g["count"] / 1e9
        xla, tch = _xla_gemm(g, reps), _torch_gemm(g)
        xla(), tch()  # warm-up
        g["xla_ms"], g["torch_ms"] = [], []
        for _ in range(repeats):  # alternate, so that both share the same load
            g["xla_ms"].append(1e3 * timed_steps(xla, 1, 0.2) / reps)
            g["torch_ms"].append(1e3 * timed_steps(tch, reps, 0.2))
        for side in ("xla_ms", "torch_ms"):
            g[side] = statistics.median(g[side]) * g["count"]
    return {"model": dataset, "batch": batch_size, "step_flops": step_flops(dataset, batch_size),
            "gemms": [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in gemms],
        "step_ms": {name: statistics.median(t) for name, t in times.items()},
        "step_label": label, "loadavg": os.getloadavg()}


def _print(res: dict) -> None:
    gemms = res["gemms"]
    print(f"\n{res['model']}  batch {res['batch']}: {len(gemms)} distinct products "
          f"(M×K·K×N, N/T = operand as stored / transposed)")
    print(f"  {'product':<28} {'runs':>4} {'GFLOP':>7} {'XLA ms':>8} {'torch ms':>9} "
          f"{'XLA GF/s':>9} {'torch GF/s':>10} {'ratio':>6}")
    for g in sorted(gemms, key=lambda g: -g["xla_ms"]):
        print(f"  {_label(g):<28} {g['count']:>4} {g['gflop']:7.2f} {g['xla_ms']:8.2f} "
              f"{g['torch_ms']:9.2f} {g['gflop'] / g['xla_ms'] * 1e3:9.0f} "
              f"{g['gflop'] / g['torch_ms'] * 1e3:10.0f} {g['xla_ms'] / g['torch_ms']:6.2f}")
    xla, tch = sum(g["xla_ms"] for g in gemms), sum(g["torch_ms"] for g in gemms)
    gf = sum(g["gflop"] for g in gemms)
    step = res["step_ms"]
    print(f"  {'all products':<28} {'':>4} {gf:7.2f} {xla:8.1f} {tch:9.1f} "
          f"{gf / xla * 1e3:9.0f} {gf / tch * 1e3:10.0f} {xla / tch:6.2f}")
    print(f"  cross-check: the products total {gf:.1f} GFLOP; XLA's cost analysis counts "
          f"{res['step_flops'] / 1e9:.1f} GFLOP for the whole step")
    print(f"  whole step: {res['step_label']} {step['tolljax']:.1f} ms, PyTorch "
          f"{step['torch']:.1f} ms (ratio {step['tolljax'] / step['torch']:.2f})")
    print(f"  XLA's products alone = {xla / step['torch']:.2f} × PyTorch's whole step; "
          f"the rest of tolljax's step {_rest(step['tolljax'], xla)}, of PyTorch's "
          f"{_rest(step['torch'], tch)}", flush=True)


def _rest(step_ms: float, products_ms: float) -> str:
    """The step's time beyond its products. Timed alone, small products can take longer than
    inside the step (each product's own call, load): then that is said, not a negative rest."""
    if step_ms >= products_ms:
        return f"{step_ms - products_ms:.1f} ms"
    return f"none (the products alone took {products_ms - step_ms:.1f} ms more than the step)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["mnist", "cifar10"], choices=MODELS)
    p.add_argument("--batch", type=positive_int, default=64)
    p.add_argument("--reps", type=positive_int, default=5, help="products per timed XLA call")
    p.add_argument("--repeats", type=positive_int, default=3, help="alternating timed rounds")
    p.add_argument("--scan", type=positive_int, default=5,
                   help="steps per call of the tolljax step")
    p.add_argument("--json", type=Path, default=None, help="write all measurements here")
    args = p.parse_args(argv)
    if jax.default_backend() != "cpu":
        p.error("this benchmark compares CPU GEMM libraries; run it on a CPU backend")
    print(f"jax {jax.__version__} (cpu), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {os.cpu_count()} CPUs", flush=True)
    results = [bench_model(d, args.batch, args.reps, args.repeats, args.scan)
               for d in args.models]
    for res in results:
        _print(res)
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
