import os
from pathlib import Path

# Tests exercise the multi-device code paths on CPU: two host devices, set before JAX starts.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def arrhythmia():
    from tolljax.data import load_arrhythmia

    return load_arrhythmia()


@pytest.fixture(scope="session")
def random_mnist_dir(tmp_path_factory):
    """Official-size (60,000 / 10,000) MNIST-format files of random pixels and labels, written
    once per session (the loader needs the official size for the paper's validation indices)."""
    import numpy as np
    from test_data_images import write_mnist

    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (60_000, 28, 28), dtype=np.uint8)
    test_x = rng.integers(0, 256, (10_000, 28, 28), dtype=np.uint8)
    return write_mnist(tmp_path_factory.mktemp("mnist"), train_x, rng.integers(0, 10, 60_000),
                       test_x, rng.integers(0, 10, 10_000), gz=False)


@pytest.fixture
def deny_reading(monkeypatch):
    """``deny_reading(path)``: opening ``path`` raises PermissionError, as for a file its user
    may not read. Opening is patched because chmod denies nothing to root (as CI may run)."""
    import builtins
    import errno
    import io

    locked, real_open = set(), builtins.open

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file).resolve() in locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(io, "open", guarded_open)
    return lambda path: locked.add(Path(path).resolve())
