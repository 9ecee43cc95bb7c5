"""The benchmark harness: the methods beside MONAI's own networks, measured on the same machine in one run."""

from monai_ext.bench.accuracy import run_accuracy, train_and_score
from monai_ext.bench.attention import NonLocalBlock, run_attention
from monai_ext.bench.deformable import run_deformable
from monai_ext.bench.efficiency import measure, measure_row, run_efficiency
from monai_ext.bench.registry import NETWORKS, BenchNetwork, register
from monai_ext.bench.slice_groups import run_slice_groups
from monai_ext.bench.whole_volume import run_whole_volume

__all__ = [
    "NETWORKS",
    "BenchNetwork",
    "NonLocalBlock",
    "measure",
    "measure_row",
    "register",
    "run_accuracy",
    "run_attention",
    "run_deformable",
    "run_efficiency",
    "run_slice_groups",
    "run_whole_volume",
    "train_and_score",
]
