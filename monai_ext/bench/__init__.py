"""The benchmark harness: the methods beside MONAI's own networks, measured on the same machine in one run."""

from monai_ext.bench.attention import NonLocalBlock, run_attention
from monai_ext.bench.efficiency import NETWORKS, measure, run_efficiency

__all__ = ["NETWORKS", "NonLocalBlock", "measure", "run_attention", "run_efficiency"]
