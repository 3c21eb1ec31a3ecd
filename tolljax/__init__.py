"""tolljax: Toll (targeted collapse) anomaly detection in JAX/Flax (arXiv:2306.12627)."""
__version__ = "0.1.0"

from tolljax.errors import TollError  # noqa: E402
from tolljax.losses import toll_loss, toll_score  # noqa: E402
from tolljax.detector import TollDetector  # noqa: E402

__all__ = ["TollError", "TollDetector", "toll_loss", "toll_score", "__version__"]
