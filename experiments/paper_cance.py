"""Reported numbers of the CANCE paper (Liao & Brockmeier, arXiv:2502.01920), by table.

**The numbers are not available here.** The text of the paper in this workplace
(``/work/shared/papers/cance-composite-features-nce.txt``) lost every table cell and every
display formula in extraction: the tables keep their headers and row labels (e.g. Table 1
``Data | Error | LatNCE | CNCE | CANCE`` with rows MNIST, CIFAR-10, MNIST-C) but no values.
We do not fill them from memory. Every value below is therefore ``None``; the structure
(table, rows, columns, metric, protocol) is recorded so that the numbers can be typed in from
the PDF, after which :func:`paper_value` and the experiment tables pick them up unchanged.

What the text does state, and what our tables can be checked against qualitatively, is in
:data:`CLAIMS`.
"""
from __future__ import annotations

SOURCE = "Liao & Brockmeier, Anomaly Detection via Autoencoder Composite Features and NCE " \
         "(arXiv:2502.01920)"
NUMBERS_MISSING = ("table cells are missing from the paper text available offline "
                   "(/work/shared/papers/cance-composite-features-nce.txt); fill from the PDF")

VARIANT_LABELS = {"recon": "Error", "latent": "LatNCE", "cnce": "CNCE", "cance": "CANCE"}
_EMPTY_ABLATION = {v: None for v in VARIANT_LABELS}

# Table 1 (§4.1): ablation, mean AUROC (%) over the 10 unimodal classes (MNIST, CIFAR-10) and
# on MNIST-C; 5 runs each. Protocol: one class normal (its training images), whole test set.
TABLE1_ABLATION = {
    "table": "Table 1", "metric": "auroc",
    "protocol": "one class normal, full training set of that class, full test set, 5 runs, "
                "AE latent 'smaller' than Toll's (value lost), NCE noise ratio (value lost)",
    "rows": {"mnist": dict(_EMPTY_ABLATION), "cifar10": dict(_EMPTY_ABLATION),
             "mnist-c": dict(_EMPTY_ABLATION)},
}
# Table 7 (Appendix F): the same ablation per normal class, MNIST and CIFAR-10.
TABLE7_ABLATION_PER_CLASS = {
    "table": "Table 7", "metric": "auroc",
    "rows": {ds: {c: dict(_EMPTY_ABLATION) for c in range(10)} for ds in ("mnist", "cifar10")},
}
# Table 8 (Appendix F): bimodal MNIST ablation, normal classes (0,1), (0,8), (1,8).
TABLE8_ABLATION_BIMODAL = {
    "table": "Table 8", "metric": "auroc",
    "rows": {pair: dict(_EMPTY_ABLATION) for pair in ("0,1", "0,8", "1,8")},
}
# §4 "Results on Tabular Data" (F1 %, protocol of Zong et al. 2018 / Goyal et al. 2020:
# a split different from Toll's 232/77+13/77+13 Arrhythmia split used by tolljax).
TABULAR_F1 = {
    "table": "§4 tabular results", "metric": "f1",
    "protocol": "Zong et al. (2018) preparation of Abalone / Thyroid / Arrhythmia",
    "rows": {"arrhythmia": {"cance": None}, "thyroid": {"cance": None},
             "abalone": {"cance": None}},
}

CLAIMS = [
    "§4.1: CNCE achieves higher AUROC than Error in almost all cases (importance of the "
    "latent features).",
    "§4.1: CNCE consistently outperforms LatNCE.",
    "§4.1: CANCE performs slightly better than CNCE (equal or better mean on 17 of the 20 "
    "unimodal datasets and on the multimodal ones).",
    "§4 tabular: on the small Arrhythmia dataset CANCE is 'not competitive' (small n, high "
    "dimension: the AE may not learn meaningful composite features).",
]


def paper_value(dataset: str, variant: str, normal_class: int | None = None
                ) -> tuple[float | None, str]:
    """The paper's number for ``dataset``/``variant`` (per class when given) and its source.

    Returns ``(None, reason)`` when the paper has no such number or when it is missing from
    the available text (currently: always, see :data:`NUMBERS_MISSING`)."""
    if dataset == "arrhythmia":
        value = TABULAR_F1["rows"]["arrhythmia"].get(variant)
        where = TABULAR_F1["table"]
        if variant != "cance":
            return None, "the paper reports no Arrhythmia ablation"
    elif dataset in ("mnist", "cifar10"):
        if normal_class is None:
            value, where = TABLE1_ABLATION["rows"][dataset][variant], "Table 1"
        else:
            value = TABLE7_ABLATION_PER_CLASS["rows"][dataset][normal_class][variant]
            where = "Table 7"
    else:
        return None, f"the paper reports no {dataset} numbers"
    if value is None:
        return None, f"{where}: {NUMBERS_MISSING}"
    return value, where
