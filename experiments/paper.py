"""The paper's reported numbers (Toll, arXiv:2306.12627), each with the table it comes from.

All values are percentages, means over 10 seeds. Used by the experiment runners to print
and record the paper's number beside ours.
"""
from __future__ import annotations

from tolljax.configs import PAPER_HYPERPARAMETERS

# Table 4: F1 (%) on Arrhythmia.
ARRHYTHMIA_F1 = {"table": "Table 4", "metric": "f1", "value": 60.00}

# Table 1: AUROC (%) per normal digit, β = 1000.
MNIST_AUROC = {"table": "Table 1", "metric": "auroc",
               "per_class": [99.8, 99.9, 96.2, 97.9, 97.8, 98.1, 99.5, 98.7, 97.3, 98.5],
               "mean": 98.4}
# Table 7: MNIST AUROC (%) without the collapse term (β = 0); β = 1000 is Table 1.
MNIST_AUROC_BETA0 = {"table": "Table 7", "metric": "auroc",
                     "per_class": [99.1, 99.9, 91.4, 93.4, 94.3, 95.1, 98.5, 96.4, 82.9, 96.2],
                     "mean": 94.7}
# Table 8: MNIST AUROC (%) per normal digit by the norm of z (β = 1000); its 2-norm column
# is Table 1.
MNIST_AUROC_BY_NORM = {
    "1": {"table": "Table 8", "metric": "auroc",
          "per_class": [99.7, 99.8, 96.4, 97.8, 97.8, 98.3, 99.5, 98.6, 97.1, 98.5],
          "mean": 98.4},
    "inf": {"table": "Table 8", "metric": "auroc",
            "per_class": [99.3, 99.7, 94.4, 97.3, 96.8, 96.9, 99.1, 97.6, 95.2, 97.3],
            "mean": 97.4},
}
# Table 3: Fashion-MNIST AUROC (%) per class.
FMNIST_AUROC = {"table": "Table 3", "metric": "auroc",
                "per_class": [91.9, 98.7, 91.3, 92.4, 91.5, 93.1, 84.6, 99.0, 90.8, 98.9],
                "mean": 93.2}
# Table 2: CIFAR-10 AUROC (%) per class.
CIFAR10_AUROC = {"table": "Table 2", "metric": "auroc",
                 "per_class": [75.0, 67.6, 56.2, 64.6, 67.7, 68.1, 74.7, 65.8, 80.0, 76.2],
                 "mean": 69.6}
# Table 3: CIFAR-100 AUROC (%) per superclass, in the coarse-label order
# (tolljax.data.CLASS_NAMES["cifar100"]: aquatic mammals, fish, ..., vehicles 2).
CIFAR100_AUROC = {"table": "Table 3", "metric": "auroc",
                  "per_class": [70.3, 66.2, 80.3, 58.2, 80.1, 61.4, 64.8, 70.5, 62.1, 79.6,
                                81.6, 62.6, 61.2, 58.6, 65.4, 56.1, 62.3, 80.9, 65.2, 63.6],
                  "mean": 67.6}


def paper_value(dataset: str, normal_class: int | None = None, *, beta: float | None = None,
                norm: str = "2") -> tuple[float | None, str | None]:
    """The paper's number for this run and its source, or ``(None, None)`` when the paper
    reports none (e.g. a β or norm the paper did not use: only MNIST at β = 1000 was run
    with the 1- and ∞-norms, Table 8; β = 0 has no latent norm, so any norm is Table 7)."""
    if dataset not in PAPER_HYPERPARAMETERS:
        return None, None
    paper_beta = PAPER_HYPERPARAMETERS[dataset]["beta"]
    if beta is not None and beta != paper_beta and not (dataset == "mnist" and beta == 0.0):
        return None, None
    if dataset == "mnist" and beta == 0.0:
        table = MNIST_AUROC_BETA0
    elif dataset == "mnist" and norm != "2":
        table = MNIST_AUROC_BY_NORM[norm]
    elif norm != "2":  # was the 2-norm's number beside a 1-/∞-norm run (Fashion-MNIST, CIFAR)
        return None, None
    elif dataset == "arrhythmia":
        return ARRHYTHMIA_F1["value"], ARRHYTHMIA_F1["table"]
    else:
        table = {"mnist": MNIST_AUROC, "fmnist": FMNIST_AUROC, "cifar10": CIFAR10_AUROC,
                 "cifar100": CIFAR100_AUROC}[dataset]
    if normal_class is None:
        return table["mean"], table["table"]
    per_class = table.get("per_class")
    return (per_class[normal_class], table["table"]) if per_class else (None, None)
