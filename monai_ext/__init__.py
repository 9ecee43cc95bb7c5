"""monai_ext: 3D context for 2D-like segmentation networks, as MONAI blocks, networks and bundles."""

__version__ = "0.1.0"

from monai_ext import data, handlers, inferers, losses, metrics, networks, transforms, utils  # noqa: E402
from monai_ext.networks import blocks, nets  # noqa: E402

__all__ = [
    "__version__",
    "blocks",
    "data",
    "handlers",
    "inferers",
    "losses",
    "metrics",
    "nets",
    "networks",
    "transforms",
    "utils",
]
