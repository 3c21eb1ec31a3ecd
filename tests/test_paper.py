"""experiments/paper.py: the paper's numbers, checked against the paper's own text where this
checkout sits next to it (../shared/papers), and which number each run is shown beside."""
from __future__ import annotations

import re

import numpy as np
import pytest

from experiments.paper import (CIFAR100_AUROC, CIFAR10_AUROC, FMNIST_AUROC, MNIST_AUROC,
                               MNIST_AUROC_BETA0, MNIST_AUROC_BY_NORM, paper_value)
from tests.conftest import REPO

PAPER = REPO.parent / "shared" / "papers" / "toll-targeted-collapse-2306.12627.txt"
needs_paper = pytest.mark.skipif(not PAPER.exists(), reason=f"no paper text at {PAPER}")


def _means_in(text: str, start: str, end: str) -> list[float]:
    """The mean of every "mean ± std" entry between ``start`` and ``end`` (the text's
    LaTeX-to-text conversion writes ± as "±plus-or-minus…"); the baselines have no ±."""
    segment = text[text.index(start):]
    segment = segment[:segment.index(end)]
    return [float(v) for v in re.findall(r"(\d+\.\d)±plus", segment)]


@needs_paper
def test_table_8_per_digit_values_are_the_papers():
    text = PAPER.read_text()
    rows = np.array(_means_in(text, "Normal 1111-norm", "Average 98.4")).reshape(10, 3)
    np.testing.assert_array_equal(rows[:, 0], MNIST_AUROC_BY_NORM["1"]["per_class"])
    np.testing.assert_array_equal(rows[:, 1], MNIST_AUROC["per_class"])  # the 2-norm: Table 1
    np.testing.assert_array_equal(rows[:, 2], MNIST_AUROC_BY_NORM["inf"]["per_class"])


@needs_paper
def test_table_3_per_class_values_are_the_papers():
    text = PAPER.read_text()
    assert _means_in(text, "aquatic mammals 43.4", "Average 50.5") == CIFAR100_AUROC["per_class"]
    assert _means_in(text, "T-shirt/top 42.1", "Average 51.8") == FMNIST_AUROC["per_class"]


@pytest.mark.parametrize("table", [MNIST_AUROC, MNIST_AUROC_BETA0, MNIST_AUROC_BY_NORM["1"],
                                   MNIST_AUROC_BY_NORM["inf"], FMNIST_AUROC, CIFAR10_AUROC,
                                   CIFAR100_AUROC])
def test_each_tables_mean_is_the_mean_of_its_rows(table):
    # the paper rounds both to one decimal (CIFAR-100: 67.55 printed as 67.6)
    assert abs(np.mean(table["per_class"]) - table["mean"]) <= 0.051


@pytest.mark.parametrize("args, expected", [
    # Table 8: the 1- and ∞-norm models on MNIST at β = 1000 (were "–" per digit)
    (("mnist", 8, 1000.0, "1"), (97.1, "Table 8")),
    (("mnist", 8, 1000.0, "inf"), (95.2, "Table 8")),
    (("mnist", None, 1000.0, "inf"), (97.4, "Table 8")),
    (("mnist", 8, 1000.0, "2"), (97.3, "Table 1")),
    (("mnist", 8, 0.0, "1"), (82.9, "Table 7")),  # β = 0: no latent term, whatever its norm
    # the other datasets' tables are of the 2-norm model (were their values for any norm)
    (("fmnist", 0, 100.0, "1"), (None, None)),
    (("cifar10", None, 10.0, "inf"), (None, None)),
    (("cifar100", 3, None, "1"), (None, None)),
    (("arrhythmia", None, 10.0, "1"), (None, None)),
    # CIFAR-100 per superclass (was None: "not restated here")
    (("cifar100", 14, None, "2"), (65.4, "Table 3")),
    (("cifar100", None, None, "2"), (67.6, "Table 3")),
    (("fmnist", 6, 100.0, "2"), (84.6, "Table 3")),
    (("cifar10", 2, 10.0, "2"), (56.2, "Table 2")),
    (("arrhythmia", None, 10.0, "2"), (60.0, "Table 4")),
    (("cifar10", 2, 100.0, "2"), (None, None)),  # a β the paper did not run
])
def test_each_run_is_shown_beside_the_papers_number_for_it(args, expected):
    dataset, normal_class, beta, norm = args
    assert paper_value(dataset, normal_class, beta=beta, norm=norm) == expected
