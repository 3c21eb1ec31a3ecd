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
