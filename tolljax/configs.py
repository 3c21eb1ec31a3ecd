"""The paper's hyperparameters per dataset (§4.1 and Appendix B), as plain Python data.

Shared across the normal classes of a dataset, as in the paper. ``get_config(name)`` returns
a fresh dict that callers may override (the CLI's flags do exactly that).
"""
from __future__ import annotations

from tolljax.errors import TollError

# Common to every dataset: 2000 random batches, a checkpoint every 20, 10 seeds, L2 norm.
PROTOCOL = {"steps": 2000, "eval_every": 20, "seeds": 10, "norm": "2"}

PAPER_HYPERPARAMETERS = {
    # dataset:    batch,  beta,  z,   lr,   selection/test metric
    "mnist":      {"batch_size": 1000, "beta": 1000.0, "z_dim": 128, "lr": 1e-4, "metric": "auroc"},
    "fmnist":     {"batch_size": 500, "beta": 100.0, "z_dim": 256, "lr": 1e-4, "metric": "auroc"},
    "cifar10":    {"batch_size": 50, "beta": 10.0, "z_dim": 64, "lr": 1e-2, "metric": "auroc"},
    "cifar100":   {"batch_size": 100, "beta": 100.0, "z_dim": 64, "lr": 1e-3, "metric": "auroc"},
    "arrhythmia": {"batch_size": 100, "beta": 10.0, "z_dim": 16, "lr": 1e-3, "metric": "f1"},
}


def get_config(dataset: str) -> dict:
    """The paper's full configuration for ``dataset`` (protocol + hyperparameters)."""
    if not isinstance(dataset, str) or dataset not in PAPER_HYPERPARAMETERS:  # (a list: TypeError)
        raise TollError(f"unknown dataset {dataset!r}; choose one of: "
                        f"{', '.join(sorted(PAPER_HYPERPARAMETERS))}")
    return {"dataset": dataset, **PROTOCOL, **PAPER_HYPERPARAMETERS[dataset]}
