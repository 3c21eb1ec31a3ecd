"""PyTorch re-implementations of tolljax's models and train step (benchmark-only).

The three Appendix-B autoencoders of Toll (arXiv 2306.12627) exactly as the authors build them
in PyTorch (NCHW, PyTorch default initialisation), and one Adam step on the Toll loss
``mean_b(||x̂_b − x_b||₂ + β·||z_b||₂)`` (Euclidean norms, not squared) — the same work as one
``tolljax.train.train_step``. Used by ``benchmarks/bench_train_step.py`` as the speed baseline.

* MNIST / Fashion-MNIST (B.1): 6,824,769 parameters at z = 128 (7,087,041 at z = 256);
* CIFAR-10 / CIFAR-100 (B.2): 4,066,816 parameters at z = 64 (bias-free convolutions except
  the encoder's last 1×1 conv; a learnable per-pixel 3×32×32 output bias);
* Arrhythmia (B.3): 212,514 parameters (the model of ``benchmarks/torch_arrhythmia.py``).

The parameter counts are asserted on construction. torch is imported only by benchmarks (without
it, one line says how to install it).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))

from benchmarks._cli import require_torch  # noqa: E402

torch = require_torch("torch_models.py")
nn = torch.nn

from benchmarks.torch_arrhythmia import ArrhythmiaAE  # noqa: E402

EXPECTED_PARAMS = {("mnist", 128): 6_824_769, ("fmnist", 256): 7_087_041,
                   ("cifar10", 64): 4_066_816, ("cifar100", 64): 4_066_816,
                   ("arrhythmia", 16): 212_514}
DEFAULT_Z = {"mnist": 128, "fmnist": 256, "cifar10": 64, "cifar100": 64, "arrhythmia": 16}
# NCHW input shape of one sample
INPUT_SHAPE = {"mnist": (1, 28, 28), "fmnist": (1, 28, 28), "cifar10": (3, 32, 32),
               "cifar100": (3, 32, 32), "arrhythmia": (274,)}


def _bn_lrelu(c: int, slope: float) -> list[nn.Module]:
    return [nn.BatchNorm2d(c), nn.LeakyReLU(slope)]


class MnistAE(nn.Module):
    """Appendix B.1: 4×4 VALID convs 28→25→22→10→7→4, Linear(z); mirrored decoder; LReLU 0.2."""

    def __init__(self, z_dim: int = 128):
        super().__init__()
        s = 0.2
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 64, 4, 1), *_bn_lrelu(64, s),
            nn.Conv2d(64, 128, 4, 1), *_bn_lrelu(128, s),
            nn.Conv2d(128, 256, 4, 2), *_bn_lrelu(256, s),
            nn.Conv2d(256, 512, 4, 1), *_bn_lrelu(512, s),
            nn.Conv2d(512, 64, 4, 1),
            nn.Flatten(), nn.Linear(64 * 4 * 4, z_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(z_dim, 64 * 4 * 4), nn.Unflatten(1, (64, 4, 4)),
            nn.ConvTranspose2d(64, 512, 4, 1), *_bn_lrelu(512, s),
            nn.ConvTranspose2d(512, 256, 4, 1), *_bn_lrelu(256, s),
            nn.ConvTranspose2d(256, 128, 4, 2), *_bn_lrelu(128, s),
            nn.ConvTranspose2d(128, 64, 4, 1), *_bn_lrelu(64, s),
            nn.ConvTranspose2d(64, 1, 4, 1),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return self.decoder(z), z


class CifarAE(nn.Module):
    """Appendix B.2: 32→28→13→10→4→1 (then 1×1 convs) and back; LReLU 0.1; output bias."""

    def __init__(self, z_dim: int = 64):
        super().__init__()
        s = 0.1
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 5, 1, bias=False), *_bn_lrelu(32, s),
            nn.Conv2d(32, 64, 4, 2, bias=False), *_bn_lrelu(64, s),
            nn.Conv2d(64, 128, 4, 1, bias=False), *_bn_lrelu(128, s),
            nn.Conv2d(128, 256, 4, 2, bias=False), *_bn_lrelu(256, s),
            nn.Conv2d(256, 512, 4, 1, bias=False), *_bn_lrelu(512, s),
            nn.Conv2d(512, 512, 1, 1, bias=False), *_bn_lrelu(512, s),
            nn.Conv2d(512, z_dim, 1, 1, bias=True),
            nn.Flatten(),
        )
        self.decoder = nn.Sequential(
            nn.Unflatten(1, (z_dim, 1, 1)),
            nn.ConvTranspose2d(z_dim, 256, 4, 1, bias=False), *_bn_lrelu(256, s),
            nn.ConvTranspose2d(256, 128, 4, 2, bias=False), *_bn_lrelu(128, s),
            nn.ConvTranspose2d(128, 64, 4, 1, bias=False), *_bn_lrelu(64, s),
            nn.ConvTranspose2d(64, 32, 4, 2, bias=False), *_bn_lrelu(32, s),
            nn.ConvTranspose2d(32, 32, 5, 1, bias=False), *_bn_lrelu(32, s),
            nn.Conv2d(32, 32, 1, 1, bias=False), *_bn_lrelu(32, s),
            nn.Conv2d(32, 3, 1, 1, bias=False),
        )
        self.output_bias = nn.Parameter(torch.zeros(3, 32, 32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return self.decoder(z) + self.output_bias, z


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(dataset: str, z_dim: int | None = None) -> nn.Module:
    """The authors' model for ``dataset`` (PyTorch default init); parameter count asserted."""
    z_dim = DEFAULT_Z[dataset] if z_dim is None else int(z_dim)
    if dataset in ("mnist", "fmnist"):
        model = MnistAE(z_dim)
    elif dataset in ("cifar10", "cifar100"):
        model = CifarAE(z_dim)
    elif dataset == "arrhythmia":
        model = ArrhythmiaAE(274, z_dim)
    else:
        raise ValueError(f"unknown dataset {dataset!r}")
    expected = EXPECTED_PARAMS.get((dataset, z_dim))
    n = count_params(model)
    if expected is not None:
        assert n == expected, f"{dataset}: {n:,} parameters, expected {expected:,}"
    return model


def toll_loss(x: torch.Tensor, x_hat: torch.Tensor, z: torch.Tensor, beta: float) -> torch.Tensor:
    """``mean_b(||x̂_b − x_b||₂ + β·||z_b||₂)`` over the flattened per-sample values."""
    rec = torch.linalg.vector_norm((x_hat - x).flatten(1), dim=1)
    return (rec + beta * torch.linalg.vector_norm(z.flatten(1), dim=1)).mean()


def make_train_step(model: nn.Module, beta: float, lr: float
                    ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``step(batch) -> loss``: one Adam step in train mode (BatchNorm batch statistics)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()

    def step(batch: torch.Tensor) -> torch.Tensor:
        x_hat, z = model(batch)
        loss = toll_loss(batch, x_hat, z, beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


if __name__ == "__main__":
    for name in ("mnist", "fmnist", "cifar10", "arrhythmia"):
        m = build(name)
        x = torch.randn(2, *INPUT_SHAPE[name])
        m.eval()
        x_hat, z = m(x)
        print(f"{name}: {count_params(m):,} parameters, x_hat {tuple(x_hat.shape)}, z {tuple(z.shape)}")
