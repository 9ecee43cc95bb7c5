"""monai_ext: 3D context for 2D-like segmentation networks, as MONAI blocks, networks and bundles."""

__version__ = "0.1.0"
