"""The benchmark harness: the methods beside MONAI's own networks, measured on the same machine in one run."""

from monai_ext.bench.accuracy import run_accuracy, train_and_score
from monai_ext.bench.attention import NonLocalBlock, run_attention
from monai_ext.bench.efficiency import measure, measure_row, run_efficiency
from monai_ext.bench.registry import NETWORKS, BenchNetwork, register

__all__ = [
    "NETWORKS",
    "BenchNetwork",
    "NonLocalBlock",
    "measure",
    "measure_row",
    "register",
    "run_accuracy",
    "run_attention",
    "run_efficiency",
    "train_and_score",
]
