import pytest

from tolljax.configs import PAPER_HYPERPARAMETERS, get_config
from tolljax.errors import TollError

# The paper's §4.1 / Appendix B table, transcribed by hand: (batch, β, z, lr, metric).
PAPER_TABLE = {
    "mnist": (1000, 1000.0, 128, 1e-4, "auroc"),
    "fmnist": (500, 100.0, 256, 1e-4, "auroc"),
    "cifar10": (50, 10.0, 64, 1e-2, "auroc"),
    "cifar100": (100, 100.0, 64, 1e-3, "auroc"),
    "arrhythmia": (100, 10.0, 16, 1e-3, "f1"),
}


@pytest.mark.parametrize("dataset", sorted(PAPER_TABLE))
def test_each_dataset_has_the_papers_hyperparameters_and_protocol(dataset):
    batch, beta, z, lr, metric = PAPER_TABLE[dataset]
    assert get_config(dataset) == {"dataset": dataset, "steps": 2000, "eval_every": 20,
                                   "seeds": 10, "norm": "2", "batch_size": batch, "beta": beta,
                                   "z_dim": z, "lr": lr, "metric": metric}


def test_every_configured_dataset_is_in_the_papers_table():
    assert set(PAPER_HYPERPARAMETERS) == set(PAPER_TABLE)


def test_get_config_returns_a_fresh_dict():
    get_config("mnist")["beta"] = 0.0
    assert get_config("mnist")["beta"] == 1000.0 and PAPER_HYPERPARAMETERS["mnist"]["beta"] == 1000.0


def test_unknown_dataset_names_the_choices():
    with pytest.raises(TollError, match="unknown dataset 'svhn'; choose one of: arrhythmia, cifar10"):
        get_config("svhn")
    with pytest.raises(TollError, match=r"unknown dataset \['mnist'\]"):  # was a TypeError
        get_config(["mnist"])
