"""CANCE ablation runner: ``python -m experiments.cance`` (or ``experiments.run --method cance``).

For each normal class and seed: train an autoencoder (CANCE's decoupled AE, or Toll's loss with
``--ae-loss toll``), compute composite features ``[z, e, c]`` of train/validation/test, and
score the test set with each variant of the paper's ablation (§4.1):

* ``recon`` (paper: *Error*): the reconstruction error ``e`` itself;
* ``latent`` (*LatNCE*): NCE density of ``z``;
* ``cnce`` (*CNCE*): NCE density of ``[z, e, c]``;
* ``cance`` (*CANCE*): CNCE trained with the augmented reconstruction features (eq. 8).

All NCE variants share the autoencoder and, per seed, the PRNG key (paired comparison).
Seeds are a ``vmap`` axis; every stage is one compiled program. Arrhythmia uses tolljax's
split (Toll's, SPEC) and the F1 rule of ``tolljax.metrics.f1_top_fraction``; MNIST uses the
paper's one-class-normal setting with AUROC. Budget flags (``--ae-steps``, ``--nce-steps``,
``--val-limit``, ``--test-limit``, ``--ae-model small``) make CPU runs affordable; a run that
uses them, or sets any other flag that changes results (``--select``, ``--ae-loss``,
``--fixed-noise``, ``--nce-hidden``, ...) to a value other than its default, is labelled *not
the paper's protocol* in ``results.md``, with the changed values (``config.budget`` in
``results.json``). What runs and where (``--dataset``, ``--classes``, ``--variants``,
``--seeds``, ``--seed-offset``, ``--data-dir``, ``--out``, ``--compile-cache``, ``--quiet``)
does not count; seeds are listed beside the table, as in ``experiments.run``. None of these
changes a number except ``--seeds``: the seeds are one vmapped axis, whose width decides the
last bits, so a seed's numbers are bit-identical between runs with the same ``--seeds``. A
class's numbers are bit-identical whichever other classes run with it (its padded training
rows change no statistic: :func:`tolljax.cance.fit_noise_stats`).

Writes ``<out>/results.json`` (config, per-variant per-seed metrics, paper numbers, library
versions, timings) and ``<out>/results.md``.
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:  # annotations only: the CLI imports JAX lazily, so --help stays fast
    import flax.linen as nn

    from tolljax import cance
    from tolljax.data import AnomalySplit

from tolljax.errors import TollError, output_dir, real_hyperparameter

# Per dataset defaults. Arrhythmia: the Toll MLP (z = 16) as CANCE's AE. MNIST: the CANCE
# budget AE (`small`, z = 16) — the Appendix-B Toll model is `--ae-model paper`.
DEFAULTS = {
    "arrhythmia": dict(ae_model="paper", z_dim=16, ae_steps=1000, decoder_steps=500,
                       ae_batch=100, ae_lr=1e-3, ae_eval_every=20, nce_steps=2000,
                       nce_batch=128, nce_eval_every=50, standardize="train", metric="f1",
                       seeds=5),
    "mnist": dict(ae_model="small", z_dim=16, ae_steps=1000, decoder_steps=500, ae_batch=128,
                  ae_lr=1e-3, ae_eval_every=100, nce_steps=2000, nce_batch=256,
                  nce_eval_every=100, standardize="none", metric="auroc", seeds=5),
}
VARIANT_ORDER = ("recon", "latent", "cnce", "cance")


# What to lower when a run does not fit in memory (experiments.run's advice names its flags).
OOM_ADVICE = ("lower --ae-batch, --nce-batch or --noise-ratio, use --val-limit/--test-limit on "
              "CPU, or on a shared GPU raise XLA_PYTHON_CLIENT_MEM_FRACTION")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.cance",
        description="CANCE (composite AE features + NCE) and its ablation: Error, LatNCE, "
                    "CNCE, CANCE. Flags left out take the per-dataset defaults.")
    p.add_argument("--dataset", default="arrhythmia", choices=sorted(DEFAULTS))
    p.add_argument("--classes", default=None, help="mnist: normal digits, e.g. 0,3,8 (default all)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds 0..N-1")
    p.add_argument("--seed-offset", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="dataset folder (arrhythmia: shipped copy)")
    p.add_argument("--out", default=None, help="output folder (default runs/cance-<dataset>)")
    p.add_argument("--variants", default=",".join(VARIANT_ORDER),
                   help="comma-separated subset of recon,latent,cnce,cance")
    # autoencoder
    p.add_argument("--ae-model", choices=("paper", "small"), default=None,
                   help="paper: tolljax's Appendix-B model; small: a small conv AE (mnist budget)")
    p.add_argument("--z-dim", type=int, default=None)
    p.add_argument("--ae-loss", choices=("cance", "toll"), default="cance",
                   help="stage-1 loss: CANCE's MSE + λ·cov (default) or Toll's ||x̂−x|| + β||z||")
    p.add_argument("--cov-weight", type=float, default=None,
                   help="λ of the covariance loss, for --ae-loss cance (default 1)")
    p.add_argument("--beta", type=float, default=None,
                   help="β of Toll's loss, for --ae-loss toll (default: Toll's value)")
    p.add_argument("--ae-steps", type=int, default=None, help="stage-1 steps")
    p.add_argument("--decoder-steps", type=int, default=None,
                   help="stage-2 steps (encoder frozen; 0 = no decoupled stage)")
    p.add_argument("--ae-batch", type=int, default=None)
    p.add_argument("--ae-lr", type=float, default=None)
    p.add_argument("--ae-eval-every", type=int, default=None)
    # NCE
    p.add_argument("--nce-steps", type=int, default=None)
    p.add_argument("--nce-batch", type=int, default=None)
    p.add_argument("--nce-lr", type=float, default=1e-3)
    p.add_argument("--noise-lr", type=float, default=1e-3)
    p.add_argument("--noise-ratio", type=int, default=4, help="ν noise samples per data sample")
    p.add_argument("--nce-hidden", default="128,128", help="widths of the estimation network")
    p.add_argument("--nce-eval-every", type=int, default=None)
    p.add_argument("--fixed-noise", action="store_true",
                   help="do not optimise the noise distribution (A = initial scale)")
    p.add_argument("--select", choices=("loss", "metric", "last"), default="loss",
                   help="checkpoint selection for AE and NCE: loss = validation loss of the "
                        "normal samples (CANCE paper, default); metric = validation "
                        "F1/AUROC (tolljax's Toll protocol); last = final step")
    # data / budget
    p.add_argument("--standardize", choices=("none", "train"), default=None,
                   help="z-score features with the normal training statistics "
                        "(default: train for arrhythmia, none for mnist)")
    p.add_argument("--val-limit", type=int, default=None,
                   help="BUDGET: stratified seeded subset of the validation set")
    p.add_argument("--test-limit", type=int, default=None,
                   help="BUDGET: stratified seeded subset of the test set (not the paper protocol)")
    p.add_argument("--subset-seed", type=int, default=None,
                   help="seed of the --val-limit/--test-limit subsets (default 0)")
    p.add_argument("--compile-cache", default=None, help="JAX persistent compilation cache folder")
    p.add_argument("--quiet", action="store_true")
    return p


def resolve_config(args: argparse.Namespace) -> dict:
    from tolljax import cance
    from experiments.run import _classes, check_seed_flags

    d = dict(DEFAULTS[args.dataset])
    over = {"ae_model": args.ae_model, "z_dim": args.z_dim, "ae_steps": args.ae_steps,
            "decoder_steps": args.decoder_steps, "ae_batch": args.ae_batch, "ae_lr": args.ae_lr,
            "ae_eval_every": args.ae_eval_every, "nce_steps": args.nce_steps,
            "nce_batch": args.nce_batch, "nce_eval_every": args.nce_eval_every,
            "standardize": args.standardize, "seeds": args.seeds}
    d.update({k: v for k, v in over.items() if v is not None})
    if args.dataset == "arrhythmia" and d["ae_model"] == "small":
        raise TollError("--ae-model small is an MNIST budget model; arrhythmia uses 'paper'")
    check_flags(args, d)
    if args.dataset == "mnist" and args.data_dir is None:
        raise TollError("--dataset mnist needs --data-dir: the folder with the MNIST IDX files")
    hidden = parse_hidden(args.nce_hidden)
    from tolljax.configs import PAPER_HYPERPARAMETERS

    beta = args.beta if args.beta is not None else PAPER_HYPERPARAMETERS[args.dataset]["beta"]
    cov_weight = 1.0 if args.cov_weight is None else args.cov_weight
    d.update(dataset=args.dataset, variants=cance.parse_variants(args.variants),
             ae_loss=args.ae_loss, cov_weight=cov_weight, beta=beta,
             nce_lr=args.nce_lr, noise_lr=args.noise_lr, noise_ratio=args.noise_ratio,
             nce_hidden=list(hidden), learn_noise=not args.fixed_noise, select=args.select,
             val_limit=args.val_limit, test_limit=args.test_limit,
             subset_seed=args.subset_seed or 0, seed_offset=args.seed_offset,
             data_dir=args.data_dir)
    d["all_classes"], d["classes"] = _classes(args.dataset, args.classes)
    # As experiments.run: seeds outside 0..2**32-1 are refused, not wrapped (key(2**32) ==
    # key(0)), before any data is loaded.
    check_seed_flags(args.seed_offset, d["seeds"])
    budget = subset_lines(d)
    if d["ae_model"] == "small":
        budget.append("small budget conv AE (not the paper's AE)")
    budget += changed_defaults(args, d)
    d["budget"] = budget
    # Validate the stage configs now, so flag errors are reported before any data is loaded.
    ae_config(d), nce_config(d)
    return d


def subset_lines(cfg: dict) -> list[str]:
    """The budget lines (``cfg["budget"]``) of ``--val-limit``/``--test-limit``."""
    return [f"{what} subset {cfg[key]}" for key, what in
            (("val_limit", "validation"), ("test_limit", "test")) if cfg[key] is not None]


# Flags (by argparse dest) that are no change of the protocol: what runs (dataset, classes,
# variants, seeds — recorded beside the label, as in experiments.run; --seeds sets the vmap
# width, hence a seed's last bits), where data and results live, and logging/caching. Every
# other flag counts as a change of the protocol.
NEUTRAL_FLAGS = frozenset({"help", "dataset", "classes", "seeds", "seed_offset", "data_dir",
                           "out", "variants", "compile_cache", "quiet"})
# Flags labelled by resolve_config in their own words ("validation subset N", ...).
BUDGET_FLAGS = frozenset({"val_limit", "test_limit"})


@functools.cache
def flag_defaults() -> dict[str, object]:
    """The parser's default of every flag, by argparse dest (``help`` left out): what
    :func:`changed_defaults` and :func:`check_flags` compare the given flags with."""
    return {a.dest: a.default for a in build_parser()._actions if a.dest != "help"}


def changed_defaults(args: argparse.Namespace, d: dict) -> list[str]:
    """``name=value`` for every result-affecting flag (all but :data:`NEUTRAL_FLAGS`) whose
    value differs from this runner's default for ``args.dataset`` (``d``: the resolved config).
    Taken from the parser, so a new flag counts unless it is declared neutral."""
    from tolljax.configs import PAPER_HYPERPARAMETERS

    # Defaults that the parser leaves to the dataset (None there) or to resolve_config.
    resolved = {**DEFAULTS[args.dataset], "cov_weight": 1.0, "subset_seed": 0,
                "beta": PAPER_HYPERPARAMETERS[args.dataset]["beta"]}
    changed = []
    for key, default in flag_defaults().items():
        if key in NEUTRAL_FLAGS or key in BUDGET_FLAGS:
            continue
        value = getattr(args, key)
        if key == "nce_hidden":
            value, default = list(parse_hidden(value)), list(parse_hidden(default))
        elif key in resolved:
            value, default = d[key], resolved[key]
        if value != default:
            changed.append(f"{key}={value}")
    return changed


# The NCE stage's flags (by argparse dest): unused when only the recon variant runs.
NCE_FLAGS = {"nce_steps": "--nce-steps", "nce_batch": "--nce-batch", "nce_lr": "--nce-lr",
             "noise_lr": "--noise-lr", "noise_ratio": "--noise-ratio",
             "nce_hidden": "--nce-hidden", "nce_eval_every": "--nce-eval-every",
             "fixed_noise": "--fixed-noise"}

# Flags that must be ≥ 1 (stage lengths, batch sizes, widths) and their config keys.
POSITIVE_FLAGS = {"--seeds": "seeds", "--z-dim": "z_dim", "--ae-steps": "ae_steps",
                  "--ae-batch": "ae_batch", "--ae-eval-every": "ae_eval_every",
                  "--nce-steps": "nce_steps", "--nce-batch": "nce_batch",
                  "--nce-eval-every": "nce_eval_every"}


def check_flags(args: argparse.Namespace, d: dict) -> None:
    """Raise :class:`TollError` naming the first bad flag (``d``: the resolved per-dataset
    values), so a bad flag fails before any data is loaded instead of inside JAX/NumPy."""
    for flag, key in POSITIVE_FLAGS.items():
        if d[key] < 1:
            raise TollError(f"{flag} must be at least 1, got {d[key]}")
    # Flags a run would not use are refused, not ignored (as everywhere in experiments/).
    given = {key for key, default in flag_defaults().items() if getattr(args, key) != default}
    if args.fixed_noise and "noise_lr" in given:
        raise TollError("--noise-lr trains the noise distribution, which --fixed-noise keeps "
                        "fixed; drop one of them")
    from tolljax.cance import parse_variants

    if set(parse_variants(args.variants)) == {"recon"}:
        nce = sorted(given & set(NCE_FLAGS))
        if nce:
            raise TollError(f"{NCE_FLAGS[nce[0]]} configures the NCE stage, which --variants "
                            "recon does not run")
    if d["decoder_steps"] < 0:
        raise TollError(f"--decoder-steps must be >= 0, got {d['decoder_steps']}")
    for steps, every in (("ae_steps", "ae_eval_every"), ("decoder_steps", "ae_eval_every"),
                         ("nce_steps", "nce_eval_every")):
        if d[steps] % d[every]:
            raise TollError(f"--{steps.replace('_', '-')} {d[steps]} must be a multiple of "
                            f"--{every.replace('_', '-')} {d[every]} (checkpoints fall on it)")
    if args.noise_ratio < 1:
        raise TollError(f"--noise-ratio must be at least 1, got {args.noise_ratio}")
    for flag, value in (("--ae-lr", d["ae_lr"]), ("--nce-lr", args.nce_lr),
                        ("--noise-lr", args.noise_lr)):
        real_hyperparameter(flag, value, positive=True)
    # Each loss weight belongs to one stage-1 loss; given with the other it would be ignored.
    if args.beta is not None:
        if args.ae_loss != "toll":
            raise TollError("--beta is the weight of Toll's loss; it needs --ae-loss toll "
                            "(the cance loss weighs its covariance term with --cov-weight)")
        real_hyperparameter("--beta", args.beta)
    if args.cov_weight is not None:
        if args.ae_loss != "cance":
            raise TollError("--cov-weight weighs the covariance term of --ae-loss cance; "
                            "--ae-loss toll weighs its latent norm with --beta")
        real_hyperparameter("--cov-weight", args.cov_weight)
    for flag, value in (("--val-limit", args.val_limit), ("--test-limit", args.test_limit)):
        if value is not None and value < 2:  # a stratified subset needs a normal and an anomaly
            raise TollError(f"{flag} must be at least 2, got {value}")
    if args.subset_seed is not None:
        if args.val_limit is None and args.test_limit is None:
            raise TollError("--subset-seed draws the --val-limit/--test-limit subsets; without "
                            "either of them it would change nothing")
        if args.subset_seed < 0:
            raise TollError(f"--subset-seed must be >= 0, got {args.subset_seed}")


def parse_hidden(spec: str) -> tuple[int, ...]:
    """``--nce-hidden`` as a tuple of layer widths, each ≥ 1."""
    try:
        hidden = tuple(int(h) for h in spec.split(",") if h.strip())
    except ValueError:
        raise TollError(f"--nce-hidden takes comma-separated widths, got {spec!r}") from None
    if not hidden:  # was "hidden widths must be positive integers, got ()", no flag named
        raise TollError(f"--nce-hidden needs at least one width, got {spec!r}")
    if any(h < 1 for h in hidden):
        raise TollError(f"--nce-hidden widths must be at least 1, got {spec!r}")
    return hidden


def ae_config(cfg: dict) -> cance.AEConfig:
    """The autoencoder stage's settings from the run's config."""
    from tolljax import cance

    return cance.AEConfig(steps=cfg["ae_steps"], decoder_steps=cfg["decoder_steps"],
                          batch_size=cfg["ae_batch"], lr=cfg["ae_lr"], loss=cfg["ae_loss"],
                          cov_weight=cfg["cov_weight"], beta=cfg["beta"],
                          eval_every=cfg["ae_eval_every"], select=cfg["select"],
                          metric=cfg["metric"])


def nce_config(cfg: dict) -> cance.NCEConfig:
    """The NCE stage's settings from the run's config."""
    from tolljax import cance

    return cance.NCEConfig(hidden=tuple(cfg["nce_hidden"]), noise_ratio=cfg["noise_ratio"],
                           steps=cfg["nce_steps"], batch_size=cfg["nce_batch"], lr=cfg["nce_lr"],
                           noise_lr=cfg["noise_lr"], learn_noise=cfg["learn_noise"],
                           eval_every=cfg["nce_eval_every"], select=cfg["select"],
                           metric=cfg["metric"])


# --------------------------------------------------------------------------------------------
# Budget model for MNIST (labelled as such wherever it is used)
# --------------------------------------------------------------------------------------------


def small_mnist_autoencoder(z_dim: int = 16) -> nn.Module:
    """A small conv AE for CPU budget runs (not the paper's): encoder Conv(32,3,s2)-BN-LReLU-
    Conv(64,3,s2)-BN-LReLU-Flatten-Dense(z); decoder Dense(7·7·64)-BN-LReLU-Up2-Conv(32,3)-BN-
    LReLU-Up2-Conv(1,3), 3×3 convolutions with SAME padding (``tolljax.ops.Conv``: GEMMs on CPU,
    where XLA's own convolution gradients are slow, most of all inside the scanned training
    loop). Nearest-neighbour upsampling + conv avoids transposed convolutions. 147,601
    parameters at z = 16."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from tolljax.models import batch_norm
    from tolljax.ops import Conv

    class Encoder(nn.Module):
        z_dim: int

        @nn.compact
        def __call__(self, x, train):
            for c in (32, 64):
                x = Conv(c, (3, 3), strides=(2, 2), padding="SAME")(x)
                x = nn.leaky_relu(batch_norm(train, jnp.float32)(x), 0.2)
            return nn.Dense(self.z_dim)(x.reshape(x.shape[0], -1))

    class Decoder(nn.Module):
        @nn.compact
        def __call__(self, z, train):
            x = nn.Dense(7 * 7 * 64)(z)
            x = nn.leaky_relu(batch_norm(train, jnp.float32)(x), 0.2).reshape(-1, 7, 7, 64)
            x = jax.image.resize(x, (x.shape[0], 14, 14, 64), "nearest")
            x = Conv(32, (3, 3), padding="SAME")(x)
            x = nn.leaky_relu(batch_norm(train, jnp.float32)(x), 0.2)
            x = jax.image.resize(x, (x.shape[0], 28, 28, 32), "nearest")
            return Conv(1, (3, 3), padding="SAME")(x)

    class SmallMnistAutoencoder(nn.Module):
        z_dim: int = 16

        def setup(self):
            self.encoder = Encoder(self.z_dim)
            self.decoder = Decoder()

        def encode(self, x, train: bool = False):
            return self.encoder(x, train)

        def decode(self, z, train: bool = False):
            return self.decoder(z, train)

        def __call__(self, x, train: bool = False):
            z = self.encode(x, train)
            return self.decode(z, train), z

    return SmallMnistAutoencoder(z_dim)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def stratified_subset(y: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset of ``limit`` rows keeping the label proportions
    (at least one of each label); all rows when ``limit`` is None or not smaller."""
    n = y.shape[0]
    if limit is None or limit >= n:
        return np.arange(n)
    if limit < 2:
        raise TollError(f"--val-limit/--test-limit must be at least 2, got {limit}")
    rng = np.random.default_rng(seed)
    anomalous = np.flatnonzero(y == 1)
    normal = np.flatnonzero(y == 0)
    n_anom = int(round(limit * anomalous.size / n))
    n_anom = min(max(n_anom, 1), limit - 1)
    pick = np.concatenate([rng.choice(anomalous, n_anom, replace=False),
                           rng.choice(normal, limit - n_anom, replace=False)])
    return np.sort(pick)


def prepare(split: AnomalySplit, cfg: dict, n_rows: int) -> dict:
    """Device arrays: standardised (optional), train zero-padded to ``n_rows``, subsets."""
    import jax.numpy as jnp

    from tolljax.data import pad_rows

    train, val_x, test_x = split.train, split.val_x, split.test_x
    if cfg["standardize"] == "train":
        mu = train.mean(axis=0)
        sd = train.std(axis=0)
        sd = np.where(sd > 0, sd, 1.0)
        train, val_x, test_x = ((a - mu) / sd for a in (train, val_x, test_x))
    vi = stratified_subset(split.val_y, cfg["val_limit"], cfg["subset_seed"])
    ti = stratified_subset(split.test_y, cfg["test_limit"], cfg["subset_seed"] + 1)
    return {"train": jnp.asarray(pad_rows(train, n_rows)), "n_train": jnp.int32(train.shape[0]),
            "val_x": jnp.asarray(val_x[vi], jnp.float32), "val_y": jnp.asarray(split.val_y[vi]),
            "test_x": jnp.asarray(test_x[ti], jnp.float32),
            "test_y": jnp.asarray(split.test_y[ti])}


# --------------------------------------------------------------------------------------------
# Run
# --------------------------------------------------------------------------------------------


def _compile(fn, *args):
    t = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, time.perf_counter() - t


def run(cfg: dict, *, log: Callable[..., None] = print) -> dict:
    """Train and score every (class, seed, variant) of ``cfg``; failed seeds (a non-finite
    loss or non-finite test scores) get a null metric and are excluded from the means."""
    import jax
    import jax.numpy as jnp

    from tolljax import cance
    from tolljax.data import load_dataset, validate_split
    from tolljax.metrics import METRICS
    from tolljax.models import build_model
    from experiments.paper_cance import paper_value
    from experiments.run import _fmt, _nan_to_none, clear_whole_set_limits, summarize

    dataset, metric = cfg["dataset"], METRICS[cfg["metric"]]
    model = (small_mnist_autoencoder(cfg["z_dim"]) if cfg["ae_model"] == "small"
             else build_model(dataset, cfg["z_dim"]))
    # compile_s: the NCE programs; ae_s and features_s include their own compilation.
    timings = {"load_s": 0.0, "compile_s": 0.0, "ae_s": 0.0, "features_s": 0.0,
               **{f"{v}_s": 0.0 for v in cfg["variants"] if v != "recon"}}

    def load(c):
        t = time.perf_counter()
        # This runner has no tfds source option, so its errors must not suggest one.
        split = load_dataset(dataset, data_dir=cfg["data_dir"], normal_class=c, offer_tfds=False)
        validate_split(split)
        n = split.train.shape[0]
        for flag, key in (("--ae-batch", "ae_batch"), ("--nce-batch", "nce_batch")):
            if cfg[key] > n:  # each step draws a batch of distinct training rows
                raise TollError(f"{split.name}: only {n} normal training samples but {flag} "
                                f"{cfg[key]}; use {flag} <= {n}")
        timings["load_s"] += time.perf_counter() - t
        return split

    classes = cfg["classes"]
    shapes = [(s.train.shape[0], s.val_y.size, s.test_y.size) for s in map(load, classes)]
    n_rows = max(n for n, _, _ in shapes)
    limited = subset_lines(cfg)
    for note in clear_whole_set_limits(cfg, [sizes for _, *sizes in shapes]):
        log(note)  # and its budget line goes: that set is scored whole
    cleared = set(limited) - set(subset_lines(cfg))
    if cleared and not subset_lines(cfg):  # no subset left for --subset-seed to draw
        cleared |= {b for b in cfg["budget"] if b.startswith("subset_seed=")}
    cfg["budget"] = [b for b in cfg["budget"] if b not in cleared]
    seeds = list(range(cfg["seed_offset"], cfg["seed_offset"] + cfg["seeds"]))
    base = jnp.stack([jax.random.key(s) for s in seeds])
    ae_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(base)
    nce_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(base)
    ae_fn = jax.jit(jax.vmap(functools.partial(cance.fit_autoencoder, model=model,
                                               config=ae_config(cfg)), in_axes=(0, None)))
    feat_fn = jax.jit(jax.vmap(lambda v, x: cance.composite_features(model.apply, v, x),
                               in_axes=(0, None)))

    nce_fns = {v: jax.jit(jax.vmap(functools.partial(
        cance.fit_nce, config=cance.variant_nce_config(v, nce_config(cfg))),
        in_axes=(0, 0, None, 0, None, 0, None))) for v in cfg["variants"] if v != "recon"}
    compiled: dict = {}

    def call(name, fn, *args):
        if name not in compiled:
            compiled[name], secs = _compile(fn, *args)
            timings["compile_s"] += secs
        t = time.perf_counter()
        out = jax.block_until_ready(compiled[name](*args))
        return out, time.perf_counter() - t

    runs = []
    for c in classes:
        split = load(c)
        data = prepare(split, cfg, n_rows)
        log(f"[{dataset}{'' if c is None else f' class {c}'}] training {len(seeds)} autoencoders "
            f"({cfg['ae_model']} model, {cfg['ae_loss']} loss, {cfg['ae_steps']}+"
            f"{cfg['decoder_steps']} steps) ...", flush=True)
        t = time.perf_counter()
        ae = jax.block_until_ready(ae_fn(ae_keys, data))
        timings["ae_s"] += time.perf_counter() - t  # includes compilation
        feats = {}
        t = time.perf_counter()
        for part, x in (("train", data["train"]), ("val", data["val_x"]), ("test", data["test_x"])):
            feats[part] = jax.block_until_ready(feat_fn(ae["variables"], x))
        timings["features_s"] += time.perf_counter() - t
        # A seed whose autoencoder diverged is failed for every variant, as a diverged Toll
        # run in experiments.run: its features come from a non-finite (or never-selected)
        # model, so no metric is reported for it.
        ae_bad = np.asarray(ae["nonfinite"], bool)
        entry = {"normal_class": c, "n_train": int(split.train.shape[0]),
                 "n_val": int(data["val_y"].shape[0]), "n_test": int(data["test_y"].shape[0]),
                 "seeds": seeds,
                 "ae": {"best_step": np.asarray(ae["best_step"]).tolist(),
                        "best_decoder_step": np.asarray(ae["best_decoder_step"]).tolist(),
                        "best_val": np.asarray(ae["best_val"]).tolist(),
                        "nonfinite": ae_bad.tolist(),
                        "failed_seeds": [s for s, bad in zip(seeds, ae_bad) if bad],
                        "loss_curve": np.asarray(ae["loss_curve"]).round(6).tolist()},
                 "variants": {}}
        for v in cfg["variants"]:
            if v == "recon":
                scores = jax.vmap(cance.error_score)(feats["test"])
                vals = np.asarray(jax.vmap(metric, in_axes=(0, None))(scores, data["test_y"]))
                extra = {}
                test_scores = scores
                bad = ae_bad.copy()
            else:
                out, secs = call(v, nce_fns[v], nce_keys, feats["train"], data["n_train"],
                                 feats["val"], data["val_y"], feats["test"], data["test_y"])
                timings[f"{v}_s"] += secs
                vals = np.asarray(out["test_metric"])
                test_scores = out["test_scores"]
                bad = ae_bad | np.asarray(out["nonfinite"], bool)
                extra = {"best_step": np.asarray(out["best_step"]).tolist(),
                         "best_val": np.asarray(out["best_val"]).tolist(),
                         "noise_scale_mean": np.asarray(out["noise_scale"]).mean(-1).tolist(),
                         "nonfinite": np.asarray(out["nonfinite"]).tolist(),
                         "loss_curve": np.asarray(out["loss_curve"]).round(5).tolist()}
            # Non-finite scores give no meaningful ranking, whatever the metric returns.
            bad = bad | ~np.all(np.isfinite(np.asarray(test_scores)), axis=-1)
            pct = np.where(bad, np.nan, 100.0 * vals)
            if cfg["metric"] != "auroc":  # a finer-grained second read-out of the same scores
                auc = 100.0 * np.asarray(jax.vmap(METRICS["auroc"], in_axes=(0, None))(
                    test_scores, data["test_y"]))
                auc = np.where(bad, np.nan, auc)
                auc_stats = summarize(auc)
                extra.update(test_auroc=_nan_to_none(auc), test_auroc_mean=auc_stats["mean"],
                             test_auroc_std=auc_stats["std"])
            paper, source = paper_value(dataset, v, c)
            entry["variants"][v] = {"label": cance.VARIANTS[v][0], "test_metric": _nan_to_none(pct),
                                    **summarize(pct),
                                    "failed_seeds": [s for s, b in zip(seeds, bad) if b],
                                    "paper": paper, "paper_source": source, **extra}
        log("   " + "  ".join(f"{e['label']} {_fmt(e['mean'])}±{_fmt(e['std'])}"
                              for e in entry["variants"].values()), flush=True)
        runs.append(entry)
    summary = {}
    for v in cfg["variants"]:
        means = np.array([np.nan if r["variants"][v]["mean"] is None else r["variants"][v]["mean"]
                          for r in runs])
        paper, source = paper_value(dataset, v, None)
        summary[v] = {"label": cance.VARIANTS[v][0], **summarize(means),
                      **({"std": runs[0]["variants"][v]["std"]} if len(runs) == 1 else {}),
                      "std_is": "over seeds" if len(runs) == 1 else "over per-class means",
                      "paper": paper, "paper_source": source}
    return {"dataset": dataset, "metric": cfg["metric"], "metric_unit": "%", "runs": runs,
            "summary": summary, "timings": timings}


def markdown_table(cfg: dict, results: dict) -> str:
    from experiments.paper import paper_value as toll_paper
    from experiments.paper_cance import NUMBERS_MISSING, SOURCE
    from experiments.run import _fmt

    metric = {"f1": "F1", "auroc": "AUROC"}[results["metric"]]
    variants = cfg["variants"]
    labels = [results["summary"][v]["label"] for v in variants]
    lines = [f"# CANCE ablation · {cfg['dataset']} · test {metric} (%)", ""]
    if cfg["budget"]:
        lines += ["**Not the paper's protocol** (CPU budget or changed defaults): "
                  + "; ".join(cfg["budget"]), ""]
    n_seeds = len(results["runs"][0]["seeds"])
    if len(results["runs"]) == 1:
        r = results["runs"][0]
        auc = "test_auroc_mean" in r["variants"][variants[0]]
        lines += ["| variant | ours (mean ± std) | per seed | paper |"
                  + (" AUROC (same scores) |" if auc else ""),
                  "|---|---|---|---|" + ("---|" if auc else "")]
        for v in variants:
            e = r["variants"][v]
            paper = f"{e['paper']:.2f}" if e["paper"] is not None else "n/a¹"
            seeds = " ".join("FAILED" if x is None else f"{x:.1f}" for x in e["test_metric"])
            extra = (f" {_fmt(e['test_auroc_mean'])} ± {_fmt(e['test_auroc_std'])} |"
                     if auc else "")
            lines.append(f"| {e['label']} | {_fmt(e['mean'])} ± {_fmt(e['std'])} | {seeds} | "
                         f"{paper} |" + extra)
    else:
        lines += ["| normal class | " + " | ".join(labels) + " |",
                  "|---" * (len(variants) + 1) + "|"]
        for r in results["runs"]:
            lines.append(f"| {r['normal_class']} | " + " | ".join(
                f"{_fmt(r['variants'][v]['mean'])} ± {_fmt(r['variants'][v]['std'])}"
                for v in variants) + " |")
        s = results["summary"]
        lines.append("| **mean** | " + " | ".join(f"**{_fmt(s[v]['mean'])}**" for v in variants)
                     + " |")
        lines.append("| paper | " + " | ".join(
            f"{s[v]['paper']:.2f}" if s[v]["paper"] is not None else "n/a¹" for v in variants) + " |")
    lines += ["", f"{n_seeds} seeds (std over seeds"
              + ("" if len(results["runs"]) == 1 else " per class; the mean row averages classes")
              + f"); selection: {cfg['select']}; AE: {cfg['ae_model']} model, z={cfg['z_dim']}, "
              + (f"cance loss (covariance λ={cfg['cov_weight']:g})" if cfg["ae_loss"] == "cance"
                 else f"toll loss (β={cfg['beta']:g})")
              + f", {cfg['ae_steps']}+"
              f"{cfg['decoder_steps']} steps; NCE: {cfg['nce_steps']} steps, ν="
              f"{cfg['noise_ratio']}, batch {cfg['nce_batch']}, "
              f"{'learned' if cfg['learn_noise'] else 'fixed'} noise.",
              "", f"¹ {SOURCE}: {NUMBERS_MISSING}."]
    if cfg["dataset"] == "arrhythmia":
        toll, where = toll_paper("arrhythmia")
        lines.append(f"For reference, Toll on this split: {toll:.2f} (Toll paper {where}); the "
                     "CANCE paper's Arrhythmia protocol (Zong et al.) is a different split.")
    failed = failure_warnings(cfg, results)
    if failed:  # the table's means exclude these seeds; say so in the file as well
        lines += [""] + [f"- {w}" for w in failed]
    return "\n".join(lines) + "\n"


def failure_warnings(cfg: dict, results: dict) -> list[str]:
    """One line per class and variant with failed seeds (as experiments.run reports them)."""
    lines = []
    for r in results["runs"]:
        where = "" if r["normal_class"] is None else f"class {r['normal_class']}: "
        ae_failed = r["ae"]["failed_seeds"]
        if ae_failed:
            hint = "--ae-lr or --beta" if cfg["ae_loss"] == "toll" else "--ae-lr"
            lines.append(f"warning: {where}seeds {ae_failed}: the autoencoder diverged (non-finite "
                         "loss), so every variant is failed for them and excluded from the means; "
                         f"try a smaller {hint}")
        for v, e in r["variants"].items():
            nce_failed = [s for s in e["failed_seeds"] if s not in ae_failed]
            if nce_failed:
                lines.append(f"warning: {where}{e['label']}: seeds {nce_failed} diverged "
                             "(non-finite NCE loss or scores) and are excluded from the mean; try "
                             "a smaller --nce-lr or --noise-lr")
    return lines


def main(argv: list[str] | None = None) -> int:
    from experiments.run import environment, out_of_memory_exit, use_compile_cache, write_json

    start = time.perf_counter()
    args = build_parser().parse_args(argv)
    if args.compile_cache:
        use_compile_cache(args.compile_cache)
    log = (lambda *a, **k: None) if args.quiet else print
    try:
        cfg = resolve_config(args)
        out_dir = output_dir(args.out or Path("runs") / f"cance-{cfg['dataset']}")
        results = run(cfg, log=log)
    except TollError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # XLA reports device OOM as a runtime error of its own type
        return out_of_memory_exit(exc, OOM_ADVICE)
    results["timings"]["total_s"] = time.perf_counter() - start
    from experiments import paper_cance

    payload = {"config": cfg, "command": ["python", "-m", "experiments.cance",
                                          *(sys.argv[1:] if argv is None else argv)],
               **results,
               "paper": {"source": paper_cance.SOURCE, "note": paper_cance.NUMBERS_MISSING,
                         "claims": paper_cance.CLAIMS},
               "environment": environment()}
    write_json(out_dir / "results.json", payload)
    table = markdown_table(cfg, results)
    (out_dir / "results.md").write_text(table)
    print(table.rstrip())
    for line in failure_warnings(cfg, results):
        print(line)
    t = results["timings"]
    print("wall time: " + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in t.items()))
    print(f"results: {out_dir / 'results.json'}")
    empty = [s["label"] for s in results["summary"].values() if s["mean"] is None]
    if empty:  # as experiments.run: a comparison with no number at all is a failed run
        print(f"error: every run of {', '.join(empty)} failed (non-finite loss or scores); see "
              "the warnings above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
